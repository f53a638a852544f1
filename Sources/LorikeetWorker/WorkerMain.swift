import Foundation
package import Logging
import LorikeetJSON
package import LorikeetProto
package import NIOCore
import ServiceLifecycle

/// A startup adapter (`--lora-modules name=path` or the JSON form
/// `{"name", "path", "base_model_name"}`, as vLLM takes them).
package struct LoraModule: Sendable, Equatable {
    package var name: String
    package var path: String
    package var baseModelName: String?

    package init(name: String, path: String, baseModelName: String? = nil) {
        self.name = name
        self.path = path
        self.baseModelName = baseModelName
    }

    /// Parses `name=path` or `{"name": ..., "path": ..., "base_model_name": ...}`.
    package init(parsing text: String) throws(Status) {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.hasPrefix("{") {
            let value: JSONValue
            do {
                value = try JSONParser.parse(Array(trimmed.utf8))
            } catch {
                throw Status(code: .invalidArgument, message: "--lora-modules: invalid JSON: \(error)")
            }
            do {
                let name = try RequestValidation.string(value, "name")
                let path = try RequestValidation.string(value, "path")
                let base = try RequestValidation.optionalString(value, "base_model_name")
                self.init(name: name, path: path, baseModelName: base)
            } catch {
                throw Status(code: .invalidArgument, message: "--lora-modules: \(error.message)")
            }
        } else {
            guard let equals = trimmed.firstIndex(of: "="), equals != trimmed.startIndex else {
                throw Status(code: .invalidArgument, message: "--lora-modules: expected name=path or JSON, got '\(text)'")
            }
            let path = String(trimmed[trimmed.index(after: equals)...])
            guard !path.isEmpty else {
                throw Status(code: .invalidArgument, message: "--lora-modules: empty path in '\(text)'")
            }
            self.init(name: String(trimmed[..<equals]), path: path)
        }
        guard !self.name.isEmpty, !self.path.isEmpty else {
            throw Status(code: .invalidArgument, message: "--lora-modules: name and path must not be empty")
        }
    }
}

/// Everything a worker process is configured with (flags of `lorikeet worker` plus the
/// environment).
package struct WorkerConfiguration: Sendable {
    package var engineSocket: String
    package var listen: HTTPListenTarget
    /// `--served-model-name` (repeatable); empty = the engine's model name.
    package var servedModelNames: [String]
    package var loraModules: [LoraModule]
    package var apiKey: String?
    /// Standalone persistence of the adapter table (`adapters.pb`); nil = in memory only.
    package var stateDirectory: String?
    package var maxBodyBytes: Int
    package var allowRuntimeLoraUpdating: Bool
    package var pathPolicy: PathPolicy
    /// How long requests in flight may run on after a drain starts.
    package var drainGrace: Duration
    /// How long startup waits for the engine to answer.
    package var engineStartupTimeout: Duration
    package var idleTimeout: Duration
    package var workerSlot: Int32
    package var version: String
    /// A second listener serving only this worker's `GET /metrics` (plus `/health` and
    /// `/version`), so every slot can be scraped on its own port (`--metrics-port-base`).
    package var metricsListen: HTTPListenTarget? = nil
    /// `--allowed-hosts`: extra `Host` names a loopback-bound server accepts (DNS
    /// rebinding defence; see `RouteConfiguration.allowedHosts`).
    package var allowedHosts: [String] = []
    /// `--max-adapters`: adapters the committed table may hold (the leader refuses more).
    package var maxAdapters: Int = Limits.defaultMaxAdapters
    /// Fleet mode (`serve --cluster-endpoints`): changes come from other nodes too, so the
    /// leader makes its engine hold a committed change before it acks it.
    package var fleet = false
    /// `LORIKEET_METRICS_DIR` (the supervisor sets it): where the worker processes' `vllm:`
    /// figures are summed (`VLLMMetrics`).
    package var metricsDirectory: String? = nil
    /// vLLM's LoRA filesystem resolver, from the environment (`LoraResolverConfiguration`).
    package var loraResolver: LoraResolverConfiguration.Setup = .off
    /// `--enable-prompt-tokens-details`: usage carries `prompt_tokens_details.cached_tokens`.
    package var enablePromptTokensDetails = false

    package init(
        engineSocket: String, listen: HTTPListenTarget, servedModelNames: [String] = [], loraModules: [LoraModule] = [],
        apiKey: String? = nil, stateDirectory: String? = nil, maxBodyBytes: Int = 8 * 1024 * 1024,
        allowRuntimeLoraUpdating: Bool = false, pathPolicy: PathPolicy = PathPolicy(allowedPrefixes: []),
        drainGrace: Duration = .seconds(30), engineStartupTimeout: Duration = .seconds(60),
        idleTimeout: Duration = .seconds(75), workerSlot: Int32 = -1, version: String = "0.0.0"
    ) {
        self.engineSocket = engineSocket
        self.listen = listen
        self.servedModelNames = servedModelNames
        self.loraModules = loraModules
        self.apiKey = apiKey
        self.stateDirectory = stateDirectory
        self.maxBodyBytes = maxBodyBytes
        self.allowRuntimeLoraUpdating = allowRuntimeLoraUpdating
        self.pathPolicy = pathPolicy
        self.drainGrace = drainGrace
        self.engineStartupTimeout = engineStartupTimeout
        self.idleTimeout = idleTimeout
        self.workerSlot = workerSlot
        self.version = version
    }

    /// Applies the environment: `LORIKEET_API_KEY` / `VLLM_API_KEY` (when no flag gave a
    /// key), runtime LoRA updating, allowed path prefixes.
    package mutating func applyEnvironment(_ environment: [String: String]) {
        if self.apiKey == nil {
            self.apiKey =
                environment["LORIKEET_API_KEY"].flatMap { $0.isEmpty ? nil : $0 }
                ?? environment["VLLM_API_KEY"].flatMap { $0.isEmpty ? nil : $0 }
        }
        self.allowRuntimeLoraUpdating =
            self.allowRuntimeLoraUpdating
            || RouteConfiguration.runtimeLoraUpdatingEnabled(environment)
        self.pathPolicy = PathPolicy.fromEnvironment(environment)
        self.metricsDirectory = environment["LORIKEET_METRICS_DIR"].flatMap { $0.hasPrefix("/") ? $0 : nil }
        self.loraResolver = LoraResolverConfiguration.fromEnvironment(
            environment, runtimeUpdating: self.allowRuntimeLoraUpdating, pathPolicy: self.pathPolicy)
    }
}

extension WorkerConfiguration {
    /// The routes and the HTTP server of a worker, standalone or supervised alike.
    func makeHTTP(
        engine: WorkerEngine, replica: AdapterTableReplica, mutator: any AdapterMutator, logger: Logger
    ) -> (WorkerRoutes, WorkerServer, metrics: WorkerServer?) {
        var configuration = RouteConfiguration(
            apiKey: self.apiKey, maxBodyBytes: self.maxBodyBytes, allowRuntimeLoraUpdating: self.allowRuntimeLoraUpdating,
            serverName: "lorikeet", version: self.version, workerSlot: self.workerSlot, allowedHosts: self.allowedHosts,
            maxAdapters: self.maxAdapters)
        configuration.metricsDirectory = self.metricsDirectory
        configuration.loraResolver = self.loraResolver
        configuration.enablePromptTokensDetails = self.enablePromptTokensDetails
        let routes = WorkerRoutes(
            generations: engine.generations, replica: replica, mutator: mutator, configuration: configuration, logger: logger)
        let server = WorkerServer(
            configuration: HTTPServerConfiguration(listen: self.listen, idleTimeout: self.idleTimeout),
            responder: routes.responder, logger: logger)
        let metrics = self.metricsListen.map { listen in
            var logger = logger
            logger[metadataKey: "http.listener"] = "metrics"
            return WorkerServer(
                configuration: HTTPServerConfiguration(listen: listen, idleTimeout: self.idleTimeout, backlog: 64, reusePort: true),
                responder: routes.metricsResponder, logger: logger)
        }
        return (routes, server, metrics)
    }

    /// The worker's engine: `factory`'s (upstream replicas), else the engine process on
    /// `engineSocket`.
    func makeEngine(_ factory: WorkerEngineFactory?, table: AdapterTableReplica, logger: Logger) -> WorkerEngine {
        if let factory { return factory(table, logger) }
        return .engineProcess(EngineClient(socketPath: self.engineSocket, logger: logger))
    }
}

/// Who owns the adapter table a worker serves.
package enum AdapterAuthority: Sendable {
    /// The worker is its own leader: `LeaderMutationService` + `LocalTableCommitter`
    /// (persisted with `--state-dir`), table restored and `--lora-modules` loaded at start.
    case standalone
    /// The supervisor owns the table: the control channel feeds the replica
    /// (`apply(snapshot:)` / `apply(change:)`), and load/unload go through the mutator the
    /// factory builds (a follower's router to the leader, or a `LeaderMutationService`
    /// with a supervisor-backed `TableCommitter`). Nothing is restored or loaded at start.
    case supervised(makeMutator: @Sendable (WorkerEngine, AdapterTableReplica) -> any AdapterMutator)
}

/// A worker as a service: connects to the engine (waiting up to
/// `engineStartupTimeout`), learns the model name, prepares the table (standalone:
/// restores the state directory into the replica and the engine, loads
/// `--lora-modules`), then serves HTTP until a graceful shutdown (SIGTERM through the
/// `ServiceGroup`, or `drain(grace:)`).
///
/// The pieces (`engine`, `replica`, `mutator`, `routes`, `server`) are visible in the package so that the
/// control channel can drive them.
package final class WorkerService: Service {
    package let configuration: WorkerConfiguration
    package let engine: WorkerEngine
    package let replica: AdapterTableReplica
    /// The standalone leader (nil when supervised).
    package let leader: LeaderMutationService?
    /// What load/unload calls go to.
    package let mutator: any AdapterMutator
    package let routes: WorkerRoutes
    package let server: WorkerServer
    /// The per-worker metrics listener, when configured.
    package let metricsServer: WorkerServer?
    private let logger: Logger
    private let onReady: @Sendable (SocketAddress?) async -> Void

    /// - Parameters:
    ///   - engine: builds the engine (upstream replicas); nil: an `EngineClient` on
    ///     `configuration.engineSocket`.
    ///   - onReady: called once, when the listener is serving with the restored table.
    package init(
        configuration: WorkerConfiguration, logger: Logger, engine: WorkerEngineFactory? = nil,
        authority: AdapterAuthority = .standalone, onReady: @escaping @Sendable (SocketAddress?) async -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.logger = logger
        self.onReady = onReady
        let replica = AdapterTableReplica(baseModels: configuration.servedModelNames)
        self.replica = replica
        let engine = configuration.makeEngine(engine, table: replica, logger: logger)
        self.engine = engine
        let mutator: any AdapterMutator
        switch authority {
        case .standalone:
            let leader = LeaderMutationService(
                adapters: engine.adapters, replica: replica,
                committer: LocalTableCommitter(replica: replica, stateDirectory: configuration.stateDirectory),
                pathPolicy: configuration.pathPolicy, epoch: 1, logger: logger, maxAdapters: configuration.maxAdapters)
            self.leader = leader
            mutator = leader
        case .supervised(let makeMutator):
            self.leader = nil
            mutator = makeMutator(engine, replica)
        }
        self.mutator = mutator
        (self.routes, self.server, self.metricsServer) = configuration.makeHTTP(
            engine: engine, replica: replica, mutator: mutator, logger: logger)
    }

    /// Runs the engine's background work (upstream pools and probes) as a child task,
    /// prepares the table, serves until drained, then stops the background work.
    package func run() async throws {
        try await withThrowingDiscardingTaskGroup { group in
            if let background = self.engine.background {
                group.addTask { try await background.run() }
            }
            try await self.serve(in: &group)
            // The HTTP server has drained: nothing uses the engine's connections any more.
            group.cancelAll()
        }
    }

    private func serve(in group: inout ThrowingDiscardingTaskGroup<any Error>) async throws {
        let status = self.engine.status
        let info = try await self.waitForEngine()
        let served = self.configuration.servedModelNames.isEmpty ? [info.modelName] : self.configuration.servedModelNames
        self.replica.setBaseModels(served)
        self.routes.setMaxModelLength(info.contextLength)
        self.routes.metrics.vllm.setMaxLoras(info.maxLoras)
        if let leader = self.leader {
            // Standalone: newest leader of this engine.
            let health = try await status.health()
            leader.setEpoch(max(health.maxEpoch + 1, 1))
            try await self.restoreTable(leader: leader)
            try await self.loadStartupModules(leader: leader)
            if case .replicas(let replicas) = self.engine.adapters {
                // Replicas restart empty: reconcile them with the table every poll, and at
                // once when one returns to rotation.
                let trigger = ReconcileTrigger()
                replicas.onReplicaRecovered { _ in trigger.wake() }
                let metrics = self.routes.metrics
                let logger = self.logger
                group.addTask {
                    await trigger.run(every: replicas.reconcileInterval) {
                        await Self.reconcileReplicas(leader: leader, metrics: metrics, logger: logger)
                    }
                }
            }
        }
        self.logger.info(
            "worker ready",
            metadata: [
                "models": "\(served.joined(separator: ","))", "adapters": "\(self.replica.snapshot().adapters.count)",
                "table.version": "\(self.replica.version)",
            ])
        let grace = self.configuration.drainGrace
        try await withGracefulShutdownHandler {
            try await self.server.run(alongside: self.metricsServer, logger: self.logger, onReady: self.onReady)
        } onGracefulShutdown: {
            self.server.beginDrain(grace: grace)
        }
    }

    /// One reconciliation of the upstream replicas with the table.
    private static func reconcileReplicas(leader: LeaderMutationService, metrics: WorkerMetrics, logger: Logger) async {
        do {
            let outcome = try await leader.reconcileEngine()
            metrics.reconciled(unavailable: outcome.failed.count)
            if !outcome.isEmpty {
                logger.notice(
                    "upstream replicas reconciled with the table",
                    metadata: ["added": "\(outcome.added)", "removed": "\(outcome.removedNames)", "failed": "\(outcome.failed)"])
            }
        } catch {
            logger.debug("upstream reconciliation skipped", metadata: ["error": "\(error)"])
        }
    }

    /// Drains the HTTP server (see `WorkerServer.drain(grace:)`).
    package func drain(grace: Duration) async { await self.server.drain(grace: grace) }

    private func waitForEngine() async throws -> ModelInfo {
        let deadline = ContinuousClock.now + self.configuration.engineStartupTimeout
        var delay = Duration.milliseconds(50)
        while true {
            do {
                return try await self.engine.status.modelInfo()
            } catch {
                if ContinuousClock.now >= deadline {
                    self.logger.error("engine did not answer at startup", metadata: ["error": "\(error)"])
                    throw error
                }
                try await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(1))
            }
        }
    }

    /// Restores the persisted table and makes the engine hold exactly its adapters.
    private func restoreTable(leader: LeaderMutationService) async throws {
        guard let directory = self.configuration.stateDirectory else { return }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        guard let table = try LocalTableCommitter.loadPersisted(directory: directory) else { return }
        self.replica.apply(snapshot: table)
        let host = self.engine.adapters.host
        let held = try await host.listAdapters()
        var lost: [AdapterRecord] = []
        for record in table.adapters {
            if held.contains(where: { $0.intID == record.intID && $0.path == record.path }) { continue }
            do {
                try await host.addAdapter(
                    AddAdapterRequest(
                        epoch: leader.epoch, name: record.name, intID: record.intID, path: record.path,
                        pinned: record.pinned, replace: held.contains { $0.intID == record.intID }))
            } catch {
                self.logger.error(
                    "persisted adapter could not be re-added; dropping it",
                    metadata: ["adapter.name": "\(record.name)", "error": "\(error)"])
                lost.append(record)
            }
        }
        if !lost.isEmpty {
            var next = self.replica.snapshot()
            next.adapters.removeAll { record in lost.contains { $0.name == record.name } }
            next.version += 1
            try LocalTableCommitter.persist(next, directory: directory)
            self.replica.apply(snapshot: next)
        }
        self.logger.info(
            "adapter table restored",
            metadata: ["table.version": "\(self.replica.version)", "adapters": "\(self.replica.snapshot().adapters.count)"])
    }

    private func loadStartupModules(leader: LeaderMutationService) async throws {
        for module in self.configuration.loraModules {
            guard let canonical = PathPolicy.realPath(module.path) else {
                throw Status(code: .invalidArgument, message: "--lora-modules \(module.name): path \(module.path) does not exist")
            }
            if let resolved = self.replica.resolve(model: module.name), let adapter = resolved.adapter,
                adapter.path == canonical
            {
                continue
            }
            let reply = await leader.load(
                LoadAdapterRequest(
                    name: module.name, path: canonical, loadInplace: true, baseModel: module.baseModelName ?? "",
                    originSlot: self.configuration.workerSlot, caller: "--lora-modules"),
                trustedPath: true)
            guard reply.status.isOK else {
                throw Status(
                    code: reply.status.code, message: "--lora-modules \(module.name): \(reply.status.message)",
                    param: reply.status.param)
            }
        }
    }
}
