#define _GNU_SOURCE
#include "CLorikeetSys.h"
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <dirent.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>
#if __has_include(<linux/close_range.h>)
#include <linux/close_range.h>
#endif

int lorikeet_accept_cloexec(int listener) {
    return accept4(listener, NULL, NULL, SOCK_CLOEXEC);
}

int lorikeet_peer_credentials(int fd, uid_t *uid, pid_t *pid) {
    struct ucred credentials;
    socklen_t length = sizeof(credentials);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return -1;
    *uid = credentials.uid;
    *pid = credentials.pid;
    return 0;
}

int lorikeet_set_parent_death_signal(int signal) {
    return prctl(PR_SET_PDEATHSIG, signal, 0, 0, 0);
}

int lorikeet_mark_close_on_exec_from(int lowest) {
#if defined(SYS_close_range) && defined(CLOSE_RANGE_CLOEXEC)
    // One call on Linux 5.11 and later.
    if (syscall(SYS_close_range, (unsigned int)lowest, ~0U, CLOSE_RANGE_CLOEXEC) == 0) return 0;
#endif
    // Older kernels: every open descriptor, as /proc lists them.
    DIR *directory = opendir("/proc/self/fd");
    if (directory == NULL) return -1;
    int own = dirfd(directory);
    struct dirent *entry;
    while ((entry = readdir(directory)) != NULL) {
        char *end;
        long fd = strtol(entry->d_name, &end, 10);
        if (*end != '\0' || end == entry->d_name || fd < lowest || fd == own) continue;
        int flags = fcntl((int)fd, F_GETFD);
        if (flags >= 0 && !(flags & FD_CLOEXEC)) fcntl((int)fd, F_SETFD, flags | FD_CLOEXEC);
    }
    closedir(directory);
    return 0;
}

#if defined(__x86_64__)
#include <cpuid.h>

int lorikeet_cpu_supports_x86_64_v3(void) {
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
    const unsigned int fma = 1u << 12, movbe = 1u << 22, popcnt = 1u << 23, osxsave = 1u << 27, avx = 1u << 28,
                       f16c = 1u << 29;
    const unsigned int leaf1 = fma | movbe | popcnt | osxsave | avx | f16c;
    if ((ecx & leaf1) != leaf1) return 0;
    // The OS saves XMM and YMM state (XCR0 bits 1 and 2): AVX instructions do not fault.
    unsigned int xcr0_low, xcr0_high;
    __asm__ volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
    if ((xcr0_low & 0x6) != 0x6) return 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return 0;
    const unsigned int bmi1 = 1u << 3, avx2 = 1u << 5, bmi2 = 1u << 8;
    if ((ebx & (bmi1 | avx2 | bmi2)) != (bmi1 | avx2 | bmi2)) return 0;
    if (!__get_cpuid(0x80000001, &eax, &ebx, &ecx, &edx)) return 0;
    const unsigned int lzcnt = 1u << 5;
    return (ecx & lzcnt) != 0;
}

int lorikeet_cpu_supports_avx512_vnni(void) {
    if (!lorikeet_cpu_supports_x86_64_v3()) return 0;
    unsigned int eax, ebx, ecx, edx;
    // The OS saves the opmask and all 512-bit state (XCR0 bits 5, 6 and 7).
    unsigned int xcr0_low, xcr0_high;
    __asm__ volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
    if ((xcr0_low & 0xE6) != 0xE6) return 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return 0;
    const unsigned int avx512f = 1u << 16, avx512bw = 1u << 30, avx512vl = 1u << 31;
    const unsigned int vnni = 1u << 11;
    return (ebx & (avx512f | avx512bw | avx512vl)) == (avx512f | avx512bw | avx512vl) && (ecx & vnni) != 0;
}

int lorikeet_cpu_supports_avx_vnni(void) {
    // x86-64-v3 already checked the OS saves YMM state; AVX-VNNI is leaf 7 subleaf 1, EAX bit 4.
    if (!lorikeet_cpu_supports_x86_64_v3()) return 0;
    unsigned int eax, ebx, ecx, edx;
    // Leaf 7 subleaf 0's EAX is the highest subleaf.
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || eax < 1) return 0;
    if (!__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) return 0;
    return (eax & (1u << 4)) != 0;
}
#else
int lorikeet_cpu_supports_x86_64_v3(void) { return 0; }
int lorikeet_cpu_supports_avx512_vnni(void) { return 0; }
int lorikeet_cpu_supports_avx_vnni(void) { return 0; }
#endif
