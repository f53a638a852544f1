import ArgumentParser
import Foundation
import Logging
import LorikeetEngine
import LorikeetProto
import LorikeetSupervisor
import LorikeetWorker

/// `lorikeet serve`: the supervisor with the engine and N workers.
struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the supervisor: one engine and N workers sharing one adapter table.",
        discussion: """
            Signals: TERM = graceful drain (a second TERM hurries), INT/QUIT = fast stop, HUP = rolling restart,
            TTIN/TTOU = one more / one fewer worker. Exit code 78 means a process cannot boot with this configuration.
            """
    )

    @Option(help: "Number of worker processes.") var workers = 2
    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @Option(help: "Port to listen on (0 = any free port, printed at start).") var port: UInt16 = 8000
    @Option(help: "Directory for the adapter table, engine socket and logs.") var stateDir = "./lorikeet-state"
    @Option(help: "Serve each worker's own GET /metrics on port BASE + slot (scrape every slot; default: off).")
    var metricsPortBase: UInt16?
    @Option(help: "Model directory (config.json + model.safetensors) or GGUF file; default: SmolLM2-135M-Instruct.")
    var model: String?
    @Option(help: "Maximum adapters active at once in the engine; 0 turns LoRA off (every load is refused).") var maxLoras: Int?
    @Option(help: "Maximum adapters cached in the engine.") var maxCpuLoras: Int?
    @Option(help: "Maximum LoRA rank.") var maxLoraRank: Int?
    @Option(help: "Engine compute threads (default: the CPUs the engine may run on).") var threads: Int?
    @Option(
        help: ArgumentHelp(
            "Engine memory for KV caches reused by prompts that start the same way (prefix caching; default 256, 0 = off).",
            valueName: "MiB")
    ) var prefixCacheMib: Int?
    @Option(help: "Engine: prompt tokens one step reads at most while no stream decodes (default 256).") var prefillChunk: Int?
    @Option(
        help:
            "Engine: prompt tokens one step reads at most while streams decode (default 16; larger: sooner first tokens, less steady streams)."
    )
    var prefillChunkDecoding: Int?
    @Flag(help: "Report prompt_tokens_details.cached_tokens in usage (prefix caching), as vLLM's flag of the same name.")
    var enablePromptTokensDetails = false
    @Option(help: "Name the base model is served under (repeatable).") var servedModelName: [String] = []
    @Option(help: "Adapter to load at start: name=path or JSON {\"name\",\"path\",\"base_model_name\"} (repeatable).")
    var loraModules: [String] = []
    @Option(
        help: "Require this bearer token on /v1/* (or LORIKEET_API_KEY / VLLM_API_KEY). Visible in ps: prefer --api-key-file.")
    var apiKey: String?
    @Option(
        help: "Read the bearer token from this file (one line; should be mode 0600). Workers get it in their environment, never in argv.")
    var apiKeyFile: String?
    @Option(
        name: .customLong("lora-resolver-dir"),
        help: ArgumentHelp(
            "Load an adapter the first time a request names it, from DIR/<name> (vLLM's lora_filesystem_resolver; or LORIKEET_LORA_RESOLVER_DIR).",
            discussion: "Needs runtime LoRA updating; DIR must be an existing directory under the allowed adapter path prefixes.",
            valueName: "DIR"))
    var loraResolverDir: String?
    @Option(help: "Extra Host names accepted on a loopback bind, comma-separated (behind a proxy; or LORIKEET_ALLOWED_HOSTS).")
    var allowedHosts: String?
    @Option(help: "Most adapters the committed table may hold (or LORIKEET_MAX_ADAPTERS; default 1024, at most 2048).")
    var maxAdapters: Int?
    @Option(help: "Largest accepted request body in bytes (413 above; at most 12 MiB; default 8 MiB).")
    var maxBodyBytes: Int?
    @Option(help: "Log format: text or json (one JSON object per line, for every process).") var logFormat = "text"
    @Option(help: "Admin socket path (default: <state dir>/admin.sock).") var adminSocket: String?
    @Option(
        help: ArgumentHelp(
            "Extra argument passed verbatim to every worker (repeatable), e.g. --worker-arg=--max-body-bytes=1048576.", visibility: .hidden)
    )
    var workerArg: [String] = []
    @Option(help: ArgumentHelp("An admin connection whose partial frame is not complete this long (ms) is closed.", visibility: .hidden))
    var adminFrameTimeoutMs: UInt64 = 10_000
    @Option(help: "Seconds in-flight requests may run on after SIGTERM.") var drainGraceSeconds: UInt64 = 30
    @Option(help: "Exit (stopping every child) when this process is gone, e.g. the test runner or a wrapper.")
    var parentPid: Int32?
    @Option(help: "A worker silent this long (ms) gets SIGABRT, then SIGKILL.") var heartbeatTimeoutMs: UInt64 = 15_000
    @Option(help: "A slot whose worker dies within 10 s of starting this many times in 60 s is paused (crash-loop breaker).")
    var crashLoopFailures = 5
    @Option(help: "Seconds a crash-looping slot is paused before one worker is tried again (doubles per repeat, up to 10 min).")
    var crashLoopCooldownSeconds: UInt64 = 60
    @Option(
        name: .customLong("upstream"),
        help: "Serve in front of this vLLM / SGLang server (http://host:port; repeatable); no built-in engine is started.")
    var upstreams: [String] = []
    @Option(name: .customLong("upstream-kind"), help: "What the upstream servers are: vllm or sglang.") var upstreamKind = "vllm"
    @Option(
        name: .customLong("cluster-endpoints"),
        help: "Fleet mode: etcd client URLs, comma-separated (or LORIKEET_CLUSTER_ENDPOINTS); see docs/CLUSTER.md.")
    var clusterEndpoints: String?
    @Option(name: .customLong("cluster-name"), help: "Fleet mode: key prefix of the fleet (or LORIKEET_CLUSTER_NAME; default lorikeet).")
    var clusterName: String?
    @Option(name: .customLong("node-name"), help: "Fleet mode: this node's unique name (or LORIKEET_CLUSTER_NODE_NAME; default host:port).")
    var nodeName: String?
    @Option(
        name: .customLong("cluster-lease-seconds"),
        help: "Fleet mode: TTL of the node's etcd lease (or LORIKEET_CLUSTER_LEASE_SECONDS; default 10).")
    var clusterLeaseSeconds: Int64?

    /// The fleet settings from the flags and `LORIKEET_CLUSTER_*`, or nil without endpoints.
    func clusterSettings(environment: [String: String], port: UInt16) throws -> ClusterSettings? {
        guard let list = self.clusterEndpoints ?? environment["LORIKEET_CLUSTER_ENDPOINTS"], !list.isEmpty else { return nil }
        let endpoints = ClusterOptions.endpoints(list)
        guard !endpoints.isEmpty else { throw ValidationError("--cluster-endpoints: no etcd URL given") }
        let name = self.clusterName ?? environment["LORIKEET_CLUSTER_NAME"] ?? "lorikeet"
        try ClusterOptions.checkName(name, flag: "--cluster-name")
        let node = self.nodeName ?? environment["LORIKEET_CLUSTER_NODE_NAME"] ?? "\(ProcessInfo.processInfo.hostName):\(port)"
        try ClusterOptions.checkName(node, flag: "--node-name")
        let leaseText = self.clusterLeaseSeconds.map { "\($0)" } ?? environment["LORIKEET_CLUSTER_LEASE_SECONDS"] ?? "10"
        guard let lease = Int64(leaseText), (2...3600).contains(lease) else {
            throw ValidationError("--cluster-lease-seconds must be 2...3600 (got '\(leaseText.echoed())')")
        }
        return ClusterSettings(endpoints: endpoints, clusterName: name, nodeName: node, leaseSeconds: lease)
    }

    func validate() throws {
        if self.apiKey != nil && self.apiKeyFile != nil { throw ValidationError("give --api-key or --api-key-file, not both") }
        if let maxBodyBytes { try SecurityOptions.checkBodyBytes(maxBodyBytes) }
        if let maxLoras, maxLoras < 0 { throw ValidationError("--max-loras must be 0 (LoRA off) or more, got \(maxLoras)") }
        let environment = ProcessInfo.processInfo.environment
        _ = try SecurityOptions.maxAdapters(flag: self.maxAdapters, environment: environment)
        _ = try SecurityOptions.allowedHosts(flag: self.allowedHosts, environment: environment)
        guard UpstreamKind(rawValue: self.upstreamKind) != nil else { throw ValidationError("--upstream-kind must be vllm or sglang") }
        for upstream in self.upstreams {
            do { _ = try UpstreamEndpoint(parsing: upstream) } catch { throw ValidationError("--upstream: \(error)") }
        }
        if !self.upstreams.isEmpty,
            self.model != nil || self.maxLoras != nil || self.maxCpuLoras != nil || self.threads != nil || self.prefixCacheMib != nil
                || self.prefillChunk != nil || self.prefillChunkDecoding != nil
        {
            throw ValidationError(
                "--model, --max-loras, --max-cpu-loras, --threads, --prefix-cache-mib and --prefill-chunk(-decoding) configure the built-in engine; not with --upstream"
            )
        }
        for (flag, value) in [("--prefill-chunk", self.prefillChunk), ("--prefill-chunk-decoding", self.prefillChunkDecoding)] {
            if let value, !(1...EngineOptions.maxPrefillChunk).contains(value) {
                throw ValidationError("\(flag) must be between 1 and \(EngineOptions.maxPrefillChunk), got \(value)")
            }
        }
        if let mib = self.prefixCacheMib, mib < 0 || mib > 1 << 20 {
            throw ValidationError("--prefix-cache-mib must be between 0 (off) and 1048576, got \(mib)")
        }
        _ = try self.clusterSettings(environment: environment, port: self.port)
        try self.checkLoraResolver(environment: environment)
        if let base = self.metricsPortBase {
            let ports = Int(base)..<(Int(base) + self.workers)
            guard base > 0, ports.upperBound <= 65536 else {
                throw ValidationError("--metrics-port-base: ports \(ports.lowerBound)...\(ports.upperBound - 1) are not all valid")
            }
            guard !ports.contains(Int(self.port)) else {
                throw ValidationError(
                    "--metrics-port-base: the metrics ports \(ports.lowerBound)...\(ports.upperBound - 1) include --port \(self.port)")
            }
        }
    }

    func run() throws {
        LoggingBootstrap.bootstrap(format: self.logFormat)
        ParentWatch.attach(parentPID: self.parentPid)
        let logger = Logger(label: "lorikeet.supervisor")
        guard ["text", "json"].contains(self.logFormat) else { throw ValidationError("--log-format must be text or json") }
        if let reason = Limits.inconsistency() { SecurityOptions.refuse("this build's limits are inconsistent: \(reason)") }
        let environment = ProcessInfo.processInfo.environment
        let apiKey = SecurityOptions.apiKey(flag: self.apiKey, file: self.apiKeyFile, logger: logger)
        let maxAdapters = try SecurityOptions.maxAdapters(flag: self.maxAdapters, environment: environment)
        let allowedHosts = try SecurityOptions.allowedHosts(flag: self.allowedHosts, environment: environment)
        let keyed = apiKey != nil || [environment["LORIKEET_API_KEY"], environment["VLLM_API_KEY"]].contains { !($0 ?? "").isEmpty }
        if !SecurityOptions.isLoopback(self.host) && RouteConfiguration.runtimeLoraUpdatingEnabled(environment) && !keyed {
            logger.warning(
                "listening on \(self.host) (not loopback) with runtime LoRA updating on and no API key: anyone who can reach the port can load and unload adapters; set --api-key-file or bind 127.0.0.1"
            )
        }
        var engineArguments: [String] = ["--log-format", self.logFormat]
        if let model { engineArguments += ["--model", Self.absolute(model)] }
        if let maxLoras { engineArguments += ["--max-loras", "\(maxLoras)"] }
        if let maxCpuLoras { engineArguments += ["--max-cpu-loras", "\(maxCpuLoras)"] }
        if let maxLoraRank { engineArguments += ["--max-lora-rank", "\(maxLoraRank)"] }
        if let threads { engineArguments += ["--threads", "\(threads)"] }
        if let prefixCacheMib { engineArguments += ["--prefix-cache-mib", "\(prefixCacheMib)"] }
        if let prefillChunk { engineArguments += ["--prefill-chunk", "\(prefillChunk)"] }
        if let prefillChunkDecoding { engineArguments += ["--prefill-chunk-decoding", "\(prefillChunkDecoding)"] }
        var workerArguments: [String] = ["--log-format", self.logFormat]
        for name in self.servedModelName { workerArguments += ["--served-model-name", name] }
        for module in self.loraModules {
            workerArguments += ["--lora-modules", module]
            // The operator's startup adapters are allowed in the engine whether or not they
            // lie under the runtime prefixes (the engine re-checks every directory it opens).
            if let parsed = try? LoraModule(parsing: module), let directory = PathPolicy.realPath(parsed.path) {
                engineArguments += ["--trusted-adapter-dir", directory]
            }
        }
        // The API key travels in the workers' environment (LORIKEET_API_KEY), never in argv.
        workerArguments += ["--max-adapters", "\(maxAdapters)"]
        if !allowedHosts.isEmpty { workerArguments += ["--allowed-hosts", allowedHosts.joined(separator: ",")] }
        if let maxBodyBytes { workerArguments += ["--max-body-bytes", "\(maxBodyBytes)"] }
        if self.enablePromptTokensDetails { workerArguments += ["--enable-prompt-tokens-details"] }
        for upstream in self.upstreams { workerArguments += ["--upstream", upstream] }
        if !self.upstreams.isEmpty { workerArguments += ["--upstream-kind", self.upstreamKind] }
        if let base = self.metricsPortBase { workerArguments += ["--metrics-port-base", "\(base)", "--metrics-host", self.host] }
        workerArguments += self.workerArg
        guard self.workers >= 1 else { throw ValidationError("--workers must be at least 1") }
        let base = SupervisorConfiguration(
            executable: Self.ownExecutable(), workers: self.workers, host: self.host, port: self.port,
            stateDirectory: Self.absolute(self.stateDir), engineArguments: engineArguments, workerArguments: workerArguments
        )
        var configuration = base
        configuration.drainGraceMs = self.drainGraceSeconds * 1000
        configuration.heartbeatTimeoutMs = max(self.heartbeatTimeoutMs, 1000)
        configuration.crashLoopFailures = max(self.crashLoopFailures, 1)
        configuration.crashLoopCooldownMs = max(self.crashLoopCooldownSeconds, 1) * 1000
        configuration.crashLoopMaximumCooldownMs = max(configuration.crashLoopMaximumCooldownMs, configuration.crashLoopCooldownMs)
        configuration.spawnEngine = self.upstreams.isEmpty
        configuration.environment = environment
        configuration.maxAdapters = maxAdapters
        if let apiKey { configuration.workerEnvironment["LORIKEET_API_KEY"] = apiKey }
        if let loraResolverDir { configuration.workerEnvironment["LORIKEET_LORA_RESOLVER_DIR"] = Self.absolute(loraResolverDir) }
        configuration.adminSocketPath = self.adminSocket.map(Self.absolute)
        configuration.adminFrameTimeoutMs = max(self.adminFrameTimeoutMs, 100)
        configuration.cluster = try self.clusterSettings(environment: environment, port: self.port)
        if configuration.cluster != nil {
            configuration.workerArguments += ["--fleet"]
            configuration.agentArguments = ["--log-format", self.logFormat]
        }
        let supervisor: Supervisor
        do {
            supervisor = try Supervisor(configuration: configuration, logger: logger)
        } catch {
            logger.critical("cannot start: \(error)")
            throw ExitCode(LorikeetExitCode.cannotBoot)
        }
        let result: SupervisorExit
        do {
            result = try supervisor.run()
        } catch {
            logger.critical("cannot start: \(error)")
            throw ExitCode(LorikeetExitCode.cannotBoot)
        }
        if result.code != .ok {
            FileHandle.standardError.write(Data("lorikeet: \(result.message)\n".utf8))
            throw ExitCode(result.code)
        }
    }

    /// The LoRA resolver's directory (flag or environment) is checked before anything
    /// starts, as vLLM's plugin refuses to start: the workers would only log it. Without
    /// runtime updating the resolver is off, as in vLLM, and nothing is checked.
    func checkLoraResolver(environment: [String: String]) throws {
        var environment = environment
        if let loraResolverDir { environment["LORIKEET_LORA_RESOLVER_DIR"] = Self.absolute(loraResolverDir) }
        guard RouteConfiguration.runtimeLoraUpdatingEnabled(environment) else { return }
        let setup = LoraResolverConfiguration.fromEnvironment(
            environment, runtimeUpdating: true, pathPolicy: PathPolicy.fromEnvironment(environment))
        if case .refused(let reason) = setup {
            throw ValidationError("\(self.loraResolverDir == nil ? "LoRA resolver" : "--lora-resolver-dir"): \(reason)")
        }
    }

    static func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    }

    /// The running binary (workers and the engine are the same executable).
    static func ownExecutable() -> String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }
}

/// Process-wide logging setup for every subcommand: text, or one JSON object per line
/// (`--log-format json`) on stderr.
enum LoggingBootstrap {
    static func bootstrap(format: String) {
        LoggingSystem.bootstrap { label in
            var handler: any LogHandler =
                format == "json" ? JSONLogHandler(label: label) : StreamLogHandler.standardError(label: label)
            handler.logLevel = .info
            return handler
        }
    }
}
