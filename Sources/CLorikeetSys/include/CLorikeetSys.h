#ifndef LORIKEET_CLORIKEETSYS_H
#define LORIKEET_CLORIKEETSYS_H
// Linux calls Swift's Glibc module does not expose without _GNU_SOURCE.
#include <sys/types.h>

/// accept4(fd, NULL, NULL, SOCK_CLOEXEC); -1 with errno on failure.
int lorikeet_accept_cloexec(int listener);
/// The peer's uid of a Unix socket (SO_PEERCRED); -1 with errno on failure.
int lorikeet_peer_credentials(int fd, uid_t *uid, pid_t *pid);
/// prctl(PR_SET_PDEATHSIG, signal); -1 with errno on failure.
int lorikeet_set_parent_death_signal(int signal);

#include <stdint.h>
#include <stddef.h>
/// libFuzzer's driver (present only in -sanitize=fuzzer builds of lorikeet-fuzz).
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
#endif
