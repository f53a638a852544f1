import Foundation
public import Logging
import LorikeetProto
public import ServiceLifecycle
import Synchronization

/// A worker under the supervisor (`lorikeet worker --control-fd 4 --listen-fd 3`).
///
/// Boot: Hello -> the supervisor's table snapshot and role -> the engine answers -> (as
/// leader) the engine holds exactly the committed adapters -> Ready(version) -> the
/// supervisor's go -> HTTP on the inherited listener. The replica follows every committed
/// change (acked back), so the worker never serves a table older than an acknowledged
/// load/unload. Loads and unloads go to the leader logic here or are routed to the leader.
public final class SupervisedWorkerService: Service {
    public let configuration: WorkerConfiguration
    public let link: SupervisorLink
    public let engine: any EngineBackend
    public let replica: AdapterTableReplica
    public let leader: LeaderMutationService
    /// Every HTTP load/unload, the leader's own included, goes through the supervisor, which
    /// routes it to the leader logic. Routing the leader's own calls too (two socketpair
    /// hops, well under a millisecond against an engine load) gives the supervisor one place
    /// that sees every mutation and its outcome (the audit log), and a worker that still
    /// believes it leads after a promotion elsewhere cannot answer on its own.
    public let mutator: RoutedMutator
    private let leading = Atomic<Bool>(false)
    public let routes: WorkerRoutes
    public let server: WorkerServer
    /// The per-worker metrics listener, when configured.
    public let metricsServer: WorkerServer?
    private let logger: Logger
    private let state = Mutex(BootState())
    private let events: AsyncStream<BootEvent>
    private let eventSink: AsyncStream<BootEvent>.Continuation

    private struct BootState {
        var haveSnapshot = false
        var role: RoleAssignment?
        var reconcileTask: Task<Void, Never>?
        var serving = false
        var reportedReady = false
        var lastReconcileFailures: [String] = []
        /// `--lora-modules` were made part of the committed table (once per process).
        var startupModulesDone = false
    }

    private enum BootEvent {
        case snapshotAndRole
        case go
        case drain(Duration)
    }

    public init(configuration: WorkerConfiguration, controlFD: Int32, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        let link = SupervisorLink(fd: controlFD, logger: logger)
        self.link = link
        let replica = AdapterTableReplica(baseModels: configuration.servedModelNames)
        self.replica = replica
        let engine = configuration.makeEngine(table: replica, logger: logger)
        self.engine = engine
        let leader = LeaderMutationService(
            engine: engine, replica: replica, committer: SupervisorCommitter(link: link), pathPolicy: configuration.pathPolicy,
            epoch: 0, logger: logger, maxAdapters: configuration.maxAdapters)
        self.leader = leader
        let mutator = RoutedMutator(link: link, slot: configuration.workerSlot)
        self.mutator = mutator
        (self.routes, self.server, self.metricsServer) = configuration.makeHTTP(
            engine: engine, replica: replica, mutator: mutator, logger: logger)
        (self.events, self.eventSink) = AsyncStream.makeStream(of: BootEvent.self)
    }

    public func run() async throws {
        await self.link.start(
            onMessage: { [self] envelope in self.handle(envelope) },
            onLost: { [logger] reason in
                // Without the supervisor there is no table owner and no one to restart us.
                logger.critical("supervisor is gone; exiting", metadata: ["reason": "\(reason)"])
                exit(1)
            })
        self.link.send(.hello(Hello(workerID: UInt32(max(self.configuration.workerSlot, 0)), pid: getpid(), version: self.configuration.version)))
        if let upstream = self.engine as? UpstreamBackend {
            // A replica back in rotation is reconciled at once, not at the next tick.
            upstream.onReplicaRecovered { [weak self] _ in
                guard let self, self.leading.load(ordering: .acquiring) else { return }
                Task { await self.reconcileEngine() }
            }
        }
        var iterator = self.events.makeAsyncIterator()
        guard case .snapshotAndRole = await iterator.next() else { return }
        let info = try await self.waitForEngine()
        let served = self.configuration.servedModelNames.isEmpty ? [info.modelName] : self.configuration.servedModelNames
        self.replica.setBaseModels(served)
        self.routes.setMaxModelLength(info.contextLength)
        if self.leading.load(ordering: .acquiring) { await self.reconcileEngine() }
        self.state.withLock { $0.reportedReady = true }
        self.link.send(.ready(Ready(tableVersion: self.replica.version)))
        self.logger.info("prepared; waiting for the supervisor's go", metadata: ["table.version": "\(self.replica.version)"])
        while let event = await iterator.next() {
            switch event {
            case .go:
                self.state.withLock { $0.serving = true }
                let grace = self.configuration.drainGrace
                try await withGracefulShutdownHandler {
                    try await self.server.run(alongside: self.metricsServer, logger: self.logger)
                } onGracefulShutdown: {
                    self.server.beginDrain(grace: grace)
                }
                self.state.withLock { $0.reconcileTask?.cancel() }
                return
            case .drain:
                return
            case .snapshotAndRole:
                break
            }
        }
    }

    /// Stops accepting, tells the supervisor (its replacement may start accepting), then
    /// lets requests in flight finish within `grace`. `listenerRetired`: no successor
    /// inherits the listener (scale-down), so it closes at once.
    private func drain(grace: Duration, listenerRetired: Bool) {
        let serving = self.state.withLock { $0.serving }
        guard serving else {
            self.eventSink.yield(.drain(grace))
            return
        }
        self.server.beginDrain(grace: grace, handOffListener: !listenerRetired)
        Task {
            await self.server.listenerClosed()
            self.link.send(.drain(Drain(graceMs: UInt32(clamping: grace.components.seconds * 1000))))
        }
    }

    /// Handles a supervisor message on the control reader thread.
    private func handle(_ envelope: ControlEnvelope) {
        switch envelope.body {
        case .snapshot(let snapshot):
            self.replica.apply(snapshot: snapshot.table)
            let reportAgain = self.state.withLock { $0.reportedReady && !$0.serving }
            if reportAgain {
                // The supervisor found our Ready stale (a commit crossed it): report the new version.
                self.link.send(.ready(Ready(tableVersion: self.replica.version)))
            }
            self.bootProgress(snapshot: true, role: nil)
        case .change(let change):
            do {
                try self.replica.apply(change: change)
                self.link.send(.changeAck(TableChangeAck(version: change.version)))
            } catch {
                // A gap in the versions: do not ack; the supervisor restarts us with a fresh snapshot.
                self.logger.error("cannot apply table change", metadata: ["table.version": "\(change.version)", "error": "\(error)"])
            }
        case .role(let role):
            self.leader.setEpoch(role.epoch)
            let wasLeading = self.leading.load(ordering: .acquiring)
            self.leading.store(role.role == .leader, ordering: .releasing)
            self.logger.notice("role assigned", metadata: ["role": "\(role.role)", "epoch": "\(role.epoch)"])
            self.bootProgress(snapshot: false, role: role)
            if role.role == .leader && !wasLeading { self.startReconcileLoop() }
        case .heartbeat(let beat):
            self.link.send(.heartbeat(Heartbeat(seq: beat.seq, requestsServed: self.routes.stats.requestsServed, inFlight: self.routes.stats.inFlight)))
        case .load(let request):
            Task {
                let reply = await SupervisorLink.$routedCallID.withValue(envelope.callID) { await self.leader.load(request) }
                self.link.send(.mutationReply(reply), callID: envelope.callID)
            }
        case .unload(let request):
            Task {
                let reply = await SupervisorLink.$routedCallID.withValue(envelope.callID) { await self.leader.unload(request) }
                self.link.send(.mutationReply(reply), callID: envelope.callID)
            }
        case .ready:
            self.eventSink.yield(.go)
        case .drain(let drain):
            self.drain(grace: .milliseconds(Int(drain.graceMs)), listenerRetired: drain.listenerRetired)
        case .shutdown:
            self.logger.notice("shutdown requested by the supervisor")
            exit(0)
        case .hello, .changeAck, .mutationReply, .commit, .commitReply, .none:
            self.logger.warning("unexpected control message", metadata: ["call.id": "\(envelope.callID)"])
        }
    }

    private func bootProgress(snapshot: Bool, role: RoleAssignment?) {
        let complete = self.state.withLock { state -> Bool in
            let before = state.haveSnapshot && state.role != nil
            if snapshot { state.haveSnapshot = true }
            if let role { state.role = role }
            // (A newer snapshot after Ready — the supervisor's answer to a Ready that a commit
            // raced — is re-reported directly in `handle`.)
            return !before && state.haveSnapshot && state.role != nil
        }
        if complete { self.eventSink.yield(.snapshotAndRole) }
    }

    /// As leader: make the engine hold exactly the committed adapters now and every few
    /// seconds (an engine restart comes back empty; a leader that died mid-mutation may
    /// have left an uncommitted adapter behind).
    private func startReconcileLoop() {
        let task = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                guard self.leading.load(ordering: .acquiring) else { return }
                await self.reconcileEngine()
                let startupDue = self.state.withLock { state -> Bool in
                    guard state.serving, !state.startupModulesDone else { return false }
                    state.startupModulesDone = true
                    return true
                }
                if startupDue { await self.loadStartupModules() }
            }
        }
        self.state.withLock { state in
            state.reconcileTask?.cancel()
            state.reconcileTask = task
        }
    }

    /// As leader, once serving: the operator's `--lora-modules` become part of the
    /// committed table (through the same commit path as any load, so every worker serves
    /// them), unless the table already holds them at the same path. Paths are trusted (no
    /// allowed-prefix policy; `serve` tells the engine too).
    private func loadStartupModules() async {
        for module in self.configuration.loraModules {
            guard let canonical = PathPolicy.realPath(module.path) else {
                self.logger.error("--lora-modules: the path does not exist", metadata: ["adapter.name": "\(module.name.echoed())"])
                continue
            }
            if let adapter = self.replica.resolve(model: module.name)?.adapter, adapter.path == canonical { continue }
            let reply = await self.leader.load(
                LoadAdapterRequest(
                    name: module.name, path: canonical, loadInplace: true, baseModel: module.baseModelName ?? "",
                    originSlot: self.configuration.workerSlot, caller: "--lora-modules"),
                trustedPath: true)
            if reply.status.isOK {
                self.logger.info("--lora-modules adapter loaded", metadata: ["adapter.name": "\(module.name.echoed())"])
            } else {
                self.logger.error(
                    "--lora-modules adapter refused",
                    metadata: ["adapter.name": "\(module.name.echoed())", "reason": "\(reply.status.message)"])
            }
        }
    }

    private func reconcileEngine() async {
        do {
            let outcome = try await self.leader.reconcileEngine()
            self.routes.metrics.reconciled(unavailable: outcome.failed.count)
            // Adapters that keep failing to load are reported when the set changes, not every second.
            let failedChanged = self.state.withLock { state -> Bool in
                defer { state.lastReconcileFailures = outcome.failed }
                return state.lastReconcileFailures != outcome.failed
            }
            if !outcome.added.isEmpty || !outcome.removed.isEmpty || (failedChanged && !outcome.failed.isEmpty) {
                self.logger.notice(
                    "engine reconciled with the committed table",
                    metadata: ["added": "\(outcome.added)", "removed": "\(outcome.removed)", "failed": "\(outcome.failed)"])
            }
        } catch {
            self.logger.debug("engine reconciliation skipped", metadata: ["error": "\(error)"])
        }
    }

    private func waitForEngine() async throws -> ModelInfo {
        var delay = Duration.milliseconds(50)
        while true {
            do {
                return try await self.engine.modelInfo()
            } catch {
                // The engine may still be loading its model; the supervisor watches our
                // heartbeats meanwhile, so there is no deadline here.
                try await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(1))
            }
        }
    }
}
