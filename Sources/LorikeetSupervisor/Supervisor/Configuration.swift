import LorikeetProto

/// Everything `lorikeet serve` needs to run the supervisor.
public struct SupervisorConfiguration: Sendable {
    /// Path of the `lorikeet` binary to spawn for the engine and the workers.
    public var executable: String
    public var workers: Int
    public var host: String
    public var port: UInt16
    /// Where the adapter table (and the engine socket, by default) live.
    public var stateDirectory: String
    /// Arguments after `lorikeet engine` (model, limits); the supervisor adds `--socket`.
    public var engineArguments: [String]
    /// Extra arguments for every `lorikeet worker` (served names, api key, ...).
    public var workerArguments: [String]
    public var engineSocketPath: String
    /// Spawn the built-in engine (`lorikeet engine`). Off when the workers serve in front
    /// of upstream replicas (`--upstream`).
    public var spawnEngine = true
    /// The admin socket; default `<state dir>/admin.sock`.
    public var adminSocketPath: String?
    /// An admin connection whose pending partial frame is not complete this long after its
    /// first byte arrived is closed (a client that sends half a frame and stalls).
    public var adminFrameTimeoutMs: UInt64 = 10_000
    /// Admin connections open at once. At the limit a new connection closes the one idle
    /// longest (no call in flight), or is itself closed when every one is busy.
    public var maxAdminConnections = 64
    /// The audit log; default `<state dir>/audit.log`.
    public var auditLogPath: String?
    /// The environment read for `NOTIFY_SOCKET` and `WATCHDOG_USEC` (systemd).
    public var environment: [String: String] = [:]
    /// Variables set (or replaced) in every worker's environment, on top of the
    /// supervisor's own: secrets such as `LORIKEET_API_KEY` travel here, never in argv
    /// (`/proc/<pid>/cmdline` is readable by every local user; `environ` only by the owner).
    public var workerEnvironment: [String: String] = [:]
    /// Variables removed from the engine's environment (secrets the engine has no use for).
    public var engineEnvironmentRemovals: Set<String> = ["LORIKEET_API_KEY", "VLLM_API_KEY", "LORIKEET_UPSTREAM_API_KEY"]
    /// `--max-adapters`: a commit that would grow the table beyond this is refused.
    public var maxAdapters = Limits.defaultMaxAdapters
    /// Version reported by status calls.
    public var version = "0.1.0"

    public var heartbeatIntervalMs: UInt64 = 1000
    /// A worker silent this long gets SIGABRT, then SIGKILL 2 s later.
    public var heartbeatTimeoutMs: UInt64 = 15_000
    /// A worker that does not ack a committed change this fast is restarted.
    public var commitAckTimeoutMs: UInt64 = 5000
    /// Graceful drain time on SIGTERM before remaining processes are killed.
    public var drainGraceMs: UInt64 = 30_000
    /// A replacement that is not ready this fast aborts a rolling restart.
    public var rollingReadyTimeoutMs: UInt64 = 120_000
    public var initialBackoffMs: UInt64 = 100
    public var maximumBackoffMs: UInt64 = 10_000
    /// Uptime after which a process counts as stable (backoff resets).
    public var stableUptimeMs: UInt64 = 30_000
    /// A slot whose worker fails within `fastFailureMs` of starting this many times
    /// inside `crashLoopWindowMs` is paused (crash-loop breaker).
    public var crashLoopFailures = 5
    public var fastFailureMs: UInt64 = 10_000
    public var crashLoopWindowMs: UInt64 = 60_000
    /// A paused slot is tried again (one worker) after this long; when that worker fails
    /// fast too, the pause doubles, up to `crashLoopMaximumCooldownMs`.
    public var crashLoopCooldownMs: UInt64 = 60_000
    public var crashLoopMaximumCooldownMs: UInt64 = 600_000

    public init(
        executable: String, workers: Int, host: String, port: UInt16, stateDirectory: String, engineArguments: [String],
        workerArguments: [String], engineSocketPath: String? = nil
    ) {
        self.executable = executable
        self.workers = workers
        self.host = host
        self.port = port
        self.stateDirectory = stateDirectory
        self.engineArguments = engineArguments
        self.workerArguments = workerArguments
        self.engineSocketPath = engineSocketPath ?? stateDirectory + "/engine.sock"
    }
}

/// Exit codes every Lorikeet process uses.
public enum LorikeetExitCode {
    /// The process cannot start with this configuration (bad model path, bad flags, port
    /// in use, ...). Restarting will not help: the supervisor stops the whole server.
    public static let cannotBoot: Int32 = 78
    /// A worker slot tripped the crash-loop breaker, or every slot did.
    public static let crashLoop: Int32 = 75
}
