#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Every exit code a Lorikeet process ends with: `lorikeet serve` (the supervisor), the
/// `engine` and `worker` children, and `lorikeet ctl`. README ("Exit codes") and
/// ops/README.md list the same table.
///
/// The supervisor reads its children's codes: `cannotBoot` from a child stops the whole
/// server instead of restarting it (systemd: `RestartPreventExitStatus=78`). Codes 64, 75
/// and 78 follow BSD `sysexits.h` (`EX_USAGE`, `EX_TEMPFAIL`, `EX_CONFIG`).
package enum LorikeetExitCode: Int32, Sendable, CaseIterable {
    /// Success: a clean stop after SIGTERM/SIGINT, or a `ctl` request that succeeded.
    case ok = 0
    /// Failure at run time: `ctl` — the supervisor refused the request (its status is on
    /// stderr, or in the `--json` output); `engine` — accepting connections failed; any
    /// child — its parent process (the supervisor) is gone.
    case failure = 1
    /// `ctl`: the supervisor is unreachable (no socket, no answer in time, a broken reply).
    case unreachable = 3
    /// `ctl`: permission denied on the admin socket, or the supervisor closed the
    /// connection (its peer-uid check refused this user).
    case permissionDenied = 4
    /// `ctl batch`: the batch file is not a JSON array of load/unload items.
    case usage = 64
    /// `serve`: every worker slot tripped the crash-loop breaker; the server stopped.
    case crashLoop = 75
    /// Any process cannot start with this configuration (bad model path, bad flags, port in
    /// use, unsafe state directory, corrupt adapter table, ...). Restarting will not help:
    /// the supervisor stops the whole server when a child exits with it.
    case cannotBoot = 78

    /// Ends the process with this code (`exit(3)`: stdio is flushed, atexit handlers run).
    package func exit() -> Never {
        #if canImport(Glibc)
            Glibc.exit(self.rawValue)
        #else
            Darwin.exit(self.rawValue)
        #endif
    }
}
