import LorikeetProto

/// Everything `lorikeet serve` needs to run the supervisor.
package struct SupervisorConfiguration: Sendable {
    /// Path of the `lorikeet` binary to spawn for the engine and the workers.
    package var executable: String
    package var workers: Int
    package var host: String
    package var port: UInt16
    /// Where the adapter table (and the engine socket, by default) live.
    package var stateDirectory: String
    /// Arguments after `lorikeet engine` (model, limits); the supervisor adds `--socket`.
    package var engineArguments: [String]
    /// Extra arguments for every `lorikeet worker` (served names, api key, ...).
    package var workerArguments: [String]
    package var engineSocketPath: String
    /// Spawn the built-in engine (`lorikeet engine`). Off when the workers serve in front
    /// of upstream replicas (`--upstream`).
    package var spawnEngine = true
    /// The admin socket; default `<state dir>/admin.sock`.
    package var adminSocketPath: String?
    /// An admin connection whose pending partial frame is not complete this long after its
    /// first byte arrived is closed (a client that sends half a frame and stalls).
    package var adminFrameTimeoutMs: UInt64 = 10_000
    /// Admin connections open at once. At the limit a new connection closes the one idle
    /// longest (no call in flight), or is itself closed when every one is busy.
    package var maxAdminConnections = 64
    /// The audit log; default `<state dir>/audit.log`.
    package var auditLogPath: String?
    /// The environment read for `NOTIFY_SOCKET` and `WATCHDOG_USEC` (systemd).
    package var environment: [String: String] = [:]
    /// Variables set (or replaced) in every worker's environment, on top of the
    /// supervisor's own: secrets such as `LORIKEET_API_KEY` travel here, never in argv
    /// (`/proc/<pid>/cmdline` is readable by every local user; `environ` only by the owner).
    package var workerEnvironment: [String: String] = [:]
    /// Variables removed from the engine's environment (secrets the engine has no use for).
    package var engineEnvironmentRemovals: Set<String> = ["LORIKEET_API_KEY", "VLLM_API_KEY", "LORIKEET_UPSTREAM_API_KEY"]
    /// `--max-adapters`: a commit that would grow the table beyond this is refused.
    package var maxAdapters = Limits.defaultMaxAdapters
    /// Version reported by status calls.
    package var version = "0.1.0"
    /// Fleet mode (`--cluster-endpoints`): the cluster agent is spawned with these; nil = a
    /// single node with its state file (unchanged behaviour).
    package var cluster: ClusterSettings?
    /// Extra arguments for the cluster agent (the log format).
    package var agentArguments: [String] = []

    package var heartbeatIntervalMs: UInt64 = 1000
    /// A worker silent this long gets SIGABRT, then SIGKILL 2 s later.
    package var heartbeatTimeoutMs: UInt64 = 15_000
    /// A worker that does not ack a committed change this fast is restarted.
    package var commitAckTimeoutMs: UInt64 = 5000
    /// Graceful drain time on SIGTERM before remaining processes are killed.
    package var drainGraceMs: UInt64 = 30_000
    /// A replacement that is not ready this fast aborts a rolling restart.
    package var rollingReadyTimeoutMs: UInt64 = 120_000
    package var initialBackoffMs: UInt64 = 100
    package var maximumBackoffMs: UInt64 = 10_000
    /// Uptime after which a process counts as stable (backoff resets).
    package var stableUptimeMs: UInt64 = 30_000
    /// A slot whose worker fails within `fastFailureMs` of starting this many times
    /// inside `crashLoopWindowMs` is paused (crash-loop breaker).
    package var crashLoopFailures = 5
    package var fastFailureMs: UInt64 = 10_000
    package var crashLoopWindowMs: UInt64 = 60_000
    /// A paused slot is tried again (one worker) after this long; when that worker fails
    /// fast too, the pause doubles, up to `crashLoopMaximumCooldownMs`.
    package var crashLoopCooldownMs: UInt64 = 60_000
    package var crashLoopMaximumCooldownMs: UInt64 = 600_000

    package init(
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

/// Fleet mode's settings (`serve --cluster-*`), passed to the cluster agent.
package struct ClusterSettings: Sendable, Equatable {
    package var endpoints: [String]
    package var clusterName: String
    package var nodeName: String
    package var leaseSeconds: Int64
    /// This supervisor run's token (`NodeStatus.incarnation`): every agent it spawns writes
    /// it into the node key, so a restarted agent knows its predecessor's key from another
    /// node's that uses the same `--node-name`.
    package var incarnation: String

    package init(
        endpoints: [String], clusterName: String, nodeName: String, leaseSeconds: Int64,
        incarnation: String = NodeStatus.newIncarnation()
    ) {
        self.endpoints = endpoints
        self.clusterName = clusterName
        self.nodeName = nodeName
        self.leaseSeconds = leaseSeconds
        self.incarnation = incarnation
    }

    /// The agent's command-line arguments after `cluster-agent`.
    package var agentArguments: [String] {
        [
            "--cluster-endpoints", self.endpoints.joined(separator: ","), "--cluster-name", self.clusterName, "--node-name", self.nodeName,
            "--cluster-lease-seconds", "\(self.leaseSeconds)", "--incarnation", self.incarnation,
        ]
    }
}
