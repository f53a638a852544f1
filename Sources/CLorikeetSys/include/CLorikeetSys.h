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
/// Marks every open descriptor numbered `lowest` or above close-on-exec (close_range, or
/// /proc/self/fd on kernels before 5.11): they stay usable here, and no program this process
/// executes inherits them. 0, or -1 with errno when /proc cannot be read.
int lorikeet_mark_close_on_exec_from(int lowest);

/// 1 when this CPU and the OS support everything x86-64-v3 code may use (AVX, AVX2, FMA,
/// F16C, BMI1, BMI2, LZCNT, MOVBE, POPCNT, and YMM state saved by the OS), else 0 (always 0
/// off x86-64). Read with CPUID and XGETBV, no runtime library.
int lorikeet_cpu_supports_x86_64_v3(void);
/// 1 when, beyond x86-64-v3, this CPU and the OS support AVX-512 F, BW, VL and VNNI (512-bit
/// state saved by the OS), else 0.
int lorikeet_cpu_supports_avx512_vnni(void);
/// 1 when, beyond x86-64-v3, this CPU supports AVX-VNNI (the VEX-encoded 256-bit `vpdpbusd`
/// of Alder Lake and later), else 0.
int lorikeet_cpu_supports_avx_vnni(void);

#include <stdint.h>
#include <stddef.h>
/// libFuzzer's driver (present only in -sanitize=fuzzer builds of lorikeet-fuzz).
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
#endif
