import ArgumentParser
import Foundation
import Logging
import LorikeetProto
import LorikeetUpstream
import LorikeetWorker
import NIOCore
import ServiceLifecycle
import UnixSignals

/// `lorikeet worker`: the OpenAI-compatible HTTP frontend, standalone (its own leader).
struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Serve the OpenAI-compatible HTTP API in front of an engine process."
    )

    @Option(name: .customLong("engine-socket"), help: "Unix socket of the engine process (not with --upstream).")
    var engineSocket: String?

    @Option(
        name: .customLong("upstream"),
        help: "Serve in front of this vLLM / SGLang server (http://host:port; repeatable) instead of an engine socket.")
    var upstreams: [String] = []

    @Option(name: .customLong("upstream-kind"), help: "What the upstream servers are: vllm or sglang.")
    var upstreamKind: String = "vllm"

    @Option(help: "Address to bind when no --listen-fd is given.")
    var host: String = "127.0.0.1"

    @Option(help: "Port to bind when no --listen-fd is given (0 = any free port).")
    var port: Int = 8000

    @Option(name: .customLong("listen-fd"), help: "Serve on this inherited, already listening socket fd.")
    var listenFD: Int32?

    @Option(name: .customLong("served-model-name"), help: "Model name(s) clients use (default: the engine's model name).")
    var servedModelNames: [String] = []

    @Option(name: .customLong("lora-modules"), help: "Startup adapter: name=path or JSON {\"name\",\"path\",\"base_model_name\"}.")
    var loraModules: [String] = []

    @Option(name: .customLong("api-key"), help: "Require 'Authorization: Bearer KEY' on /v1/* (or LORIKEET_API_KEY / VLLM_API_KEY).")
    var apiKey: String?

    @Option(name: .customLong("api-key-file"), help: "Read the bearer token from this file (one line; should be mode 0600).")
    var apiKeyFile: String?

    @Option(
        name: .customLong("allowed-hosts"),
        help: "Extra Host names accepted on a loopback bind, comma-separated (behind a proxy; or LORIKEET_ALLOWED_HOSTS).")
    var allowedHosts: String?

    @Option(
        name: .customLong("max-adapters"), help: "Most adapters the table may hold (or LORIKEET_MAX_ADAPTERS; default 1024, at most 2048).")
    var maxAdapters: Int?

    @Option(name: .customLong("state-dir"), help: "Directory where the standalone worker persists its adapter table.")
    var stateDirectory: String?

    @Option(name: .customLong("max-body-bytes"), help: "Largest accepted request body (413 above).")
    var maxBodyBytes: Int = Limits.defaultBodyBytes

    @Option(name: .customLong("drain-grace-ms"), help: "How long requests in flight may finish after SIGTERM.")
    var drainGraceMs: Int = 30_000

    @Option(name: .customLong("control-fd"), help: "Supervised mode: the supervisor's control socketpair (set by `lorikeet serve`).")
    var controlFD: Int32?

    @Option(help: "Supervised mode: this worker's slot number.")
    var slot: Int32 = -1

    @Flag(help: "Report prompt_tokens_details.cached_tokens in usage (prefix caching), as vLLM's flag of the same name.")
    var enablePromptTokensDetails = false

    @Flag(
        help: ArgumentHelp(
            "Supervised mode, fleet: as leader, apply committed changes to the engine before acking them.", visibility: .hidden))
    var fleet = false

    @Option(
        name: .customLong("metrics-port-base"),
        help: "Also serve this worker's GET /metrics on its own port: this port plus the slot number (standalone: this port).")
    var metricsPortBase: Int?

    @Option(name: .customLong("metrics-host"), help: "Address of the metrics port (default: --host).")
    var metricsHost: String?

    @Option(name: .customLong("parent-pid"), help: "Supervised mode: exit when this process (the supervisor) is gone.")
    var parentPid: Int32?

    @Option(name: .customLong("log-format"), help: "text or json.")
    var logFormat: LogFormat = .text

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func validate() throws {
        guard self.engineSocket != nil || !self.upstreams.isEmpty else {
            throw ValidationError("give --engine-socket or at least one --upstream")
        }
        guard UpstreamKind(rawValue: self.upstreamKind) != nil else { throw ValidationError("--upstream-kind must be vllm or sglang") }
        for upstream in self.upstreams {
            do { _ = try UpstreamEndpoint(parsing: upstream) } catch { throw ValidationError("--upstream: \(error)") }
        }
        try SecurityOptions.checkBodyBytes(self.maxBodyBytes)
        if self.apiKey != nil && self.apiKeyFile != nil { throw ValidationError("give --api-key or --api-key-file, not both") }
        let environment = ProcessInfo.processInfo.environment
        _ = try SecurityOptions.maxAdapters(flag: self.maxAdapters, environment: environment)
        _ = try SecurityOptions.allowedHosts(flag: self.allowedHosts, environment: environment)
        guard (0...65535).contains(self.port) else { throw ValidationError("--port must be 0...65535") }
        if let base = self.metricsPortBase {
            guard (1...65535).contains(base + Int(max(self.slot, 0))) else {
                throw ValidationError("--metrics-port-base plus the slot must be a port (1...65535)")
            }
        }
        for module in self.loraModules {
            do { _ = try LoraModule(parsing: module) } catch { throw ValidationError(error.message) }
        }
    }

    func run() async throws {
        signal(SIGPIPE, SIG_IGN)
        ParentWatch.unblockSignals()
        ParentWatch.attach(parentPID: self.parentPid)
        let level = Logger.Level(rawValue: self.logLevel) ?? .info
        let format = self.logFormat
        LoggingSystem.bootstrap { label in
            var handler: any LogHandler =
                format == .json ? JSONLogHandler(label: label) : StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        var logger = Logger(label: "lorikeet.worker")
        logger[metadataKey: "worker.pid"] = "\(getpid())"
        if self.slot >= 0 { logger[metadataKey: "worker.slot"] = "\(self.slot)" }

        let apiKey = SecurityOptions.apiKey(flag: self.apiKey, file: self.apiKeyFile, logger: logger)
        let environment = ProcessInfo.processInfo.environment
        var configuration = WorkerConfiguration(
            engineSocket: self.engineSocket ?? "",
            listen: self.listenFD.map { .inheritedFD($0) } ?? .address(host: self.host, port: self.port),
            servedModelNames: self.servedModelNames,
            loraModules: try self.loraModules.map { text throws(Status) in try LoraModule(parsing: text) },
            apiKey: apiKey, stateDirectory: self.stateDirectory, maxBodyBytes: self.maxBodyBytes,
            drainGrace: .milliseconds(self.drainGraceMs), workerSlot: self.slot, version: LorikeetVersion.string)
        // A key from the flag or the file wins; else LORIKEET_API_KEY / VLLM_API_KEY (how
        // `lorikeet serve` hands it over: in the environment, never in argv).
        configuration.applyEnvironment(environment)
        configuration.allowedHosts = try SecurityOptions.allowedHosts(flag: self.allowedHosts, environment: environment)
        configuration.maxAdapters = try SecurityOptions.maxAdapters(flag: self.maxAdapters, environment: environment)
        configuration.fleet = self.fleet
        configuration.enablePromptTokensDetails = self.enablePromptTokensDetails
        if let base = self.metricsPortBase {
            configuration.metricsListen = .address(host: self.metricsHost ?? self.host, port: base + Int(max(self.slot, 0)))
        }
        // In front of vLLM / SGLang replicas (LorikeetUpstream) instead of the engine socket.
        var engine: WorkerEngineFactory?
        if !self.upstreams.isEmpty {
            engine = UpstreamBackend.workerEngine(
                UpstreamConfiguration(
                    endpoints: try self.upstreams.map { text throws(UpstreamURLError) in try UpstreamEndpoint(parsing: text) },
                    kind: UpstreamKind(rawValue: self.upstreamKind) ?? .vllm,
                    apiKey: environment["LORIKEET_UPSTREAM_API_KEY"].flatMap { $0.isEmpty ? nil : $0 }))
        }
        for ignored in configuration.pathPolicy.ignoredPrefixes {
            logger.warning("allowed LoRA path prefix does not exist or is not absolute; ignored", metadata: ["prefix": "\(ignored)"])
        }

        if let controlFD = self.controlFD {
            let worker = SupervisedWorkerService(configuration: configuration, controlFD: controlFD, logger: logger, engine: engine)
            let group = ServiceGroup(
                configuration: .init(
                    services: [.init(service: worker, successTerminationBehavior: .gracefullyShutdownGroup)],
                    gracefulShutdownSignals: [.sigterm], logger: logger))
            do {
                try await group.run()
            } catch is SupervisedWorkerError {
                // Logged by the worker; the supervisor restarts the slot.
                throw ExitCode.failure
            }
            return
        }
        let worker = WorkerService(configuration: configuration, logger: logger, engine: engine) { address in
            // The line scripts and tests wait for.
            let shown = address.map { "\($0)" } ?? "inherited fd"
            FileHandle.standardError.write(Data("lorikeet worker ready on \(shown) port \(address?.port ?? -1)\n".utf8))
        }
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: worker, successTerminationBehavior: .gracefullyShutdownGroup)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        try await group.run()
    }
}

enum LogFormat: String, ExpressibleByArgument, Sendable {
    case text
    case json
}
