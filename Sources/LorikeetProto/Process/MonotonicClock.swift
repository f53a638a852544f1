#if canImport(Glibc)
    import Glibc
#endif

/// The host's `CLOCK_MONOTONIC` in milliseconds: the clock of fleet mode's `Fence`
/// (one clock for every process of a node; it keeps running while a process is stopped,
/// so a node resumed after SIGSTOP finds its fence expired at once).
package enum MonotonicClock {
    package static func nowMs() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }
}
