import Foundation
package import Logging
import LorikeetProto
import ServiceLifecycle
import Synchronization

/// A worker under the supervisor (`lorikeet worker --control-fd 4 --listen-fd 3`).
///
/// Boot: Hello -> the supervisor's table snapshot and role -> the engine answers -> (as
/// leader) the engine holds exactly the committed adapters -> Ready(version) -> the
/// supervisor's go -> HTTP on the inherited listener. The replica follows every committed
/// change (acked back), so the worker never serves a table older than an acknowledged
/// load/unload. Loads and unloads go to the leader logic here or are routed to the leader.
package final class SupervisedWorkerService: Service {
    package let configuration: WorkerConfiguration
    package let link: SupervisorLink
    package let engine: WorkerEngine
    package let replica: AdapterTableReplica
    package let leader: LeaderMutationService
    /// Every HTTP load/unload, the leader's own included, goes through the supervisor, which
    /// routes it to the leader logic. Routing the leader's own calls too (two socketpair
    /// hops, well under a millisecond against an engine load) gives the supervisor one place
    /// that sees every mutation and its outcome (the audit log), and a worker that still
    /// believes it leads after a promotion elsewhere cannot answer on its own.
    package let mutator: RoutedMutator
    private let leading = Atomic<Bool>(false)
    package let routes: WorkerRoutes
    package let server: WorkerServer
    /// The per-worker metrics listener, when configured.
    package let metricsServer: WorkerServer?
    private let logger: Logger
    private let state = Mutex(BootState())
    private let events: AsyncStream<Event>
    private let eventSink: AsyncStream<Event>.Continuation
    private let reconcileTrigger = ReconcileTrigger()

    private struct BootState {
        var haveSnapshot = false
        var role: RoleAssignment?
        var serving = false
        var reportedReady = false
        var lastReconcileFailures: [String] = []
        /// `--lora-modules` were made part of the committed table (once per process).
        var startupModulesDone = false
    }

    /// What the control channel (and the HTTP server) tell `run()`, in order.
    private enum Event {
        /// The first snapshot and role arrived: boot may proceed.
        case snapshotAndRole
        /// The supervisor's go: serve HTTP.
        case go
        case drain(grace: Duration, listenerRetired: Bool)
        /// A load or unload the supervisor routed to this worker as leader.
        case routed(ControlEnvelope)
        /// Fleet mode, as leader: a committed change to apply to the engine, then ack.
        case leaderChange(TableChange)
        /// The supervisor asked for an immediate stop.
        case shutdown
        /// The control channel ended.
        case lost(String)
        /// The HTTP server finished draining.
        case serverStopped
    }

    /// - Parameter engine: builds the engine (upstream replicas); nil: an `EngineClient` on
    ///   `configuration.engineSocket`.
    package init(configuration: WorkerConfiguration, controlFD: Int32, logger: Logger, engine: WorkerEngineFactory? = nil) {
        self.configuration = configuration
        self.logger = logger
        let link = SupervisorLink(fd: controlFD, logger: logger)
        self.link = link
        let replica = AdapterTableReplica(baseModels: configuration.servedModelNames)
        if configuration.fleet { replica.fence.arm() }
        self.replica = replica
        let engine = configuration.makeEngine(engine, table: replica, logger: logger)
        self.engine = engine
        let leader = LeaderMutationService(
            adapters: engine.adapters, replica: replica, committer: SupervisorCommitter(link: link),
            pathPolicy: configuration.pathPolicy, epoch: 0, logger: logger, maxAdapters: configuration.maxAdapters)
        self.leader = leader
        let mutator = RoutedMutator(link: link, slot: configuration.workerSlot)
        self.mutator = mutator
        (self.routes, self.server, self.metricsServer) = configuration.makeHTTP(
            engine: engine, replica: replica, mutator: mutator, logger: logger)
        (self.events, self.eventSink) = AsyncStream.makeStream(of: Event.self)
    }

    /// Runs until the HTTP server drained, the supervisor asked to stop, or (throwing
    /// `SupervisedWorkerError.supervisorGone`) the control channel ended. Boot, the HTTP
    /// server, the reconcile loop, routed mutations and the engine's background work are
    /// child tasks. On the way out the others are cancelled, but routed mutations run to
    /// their answer (bounded by their commit and engine timeouts): a cancelled commit would
    /// answer "unchanged" for a change the supervisor may have committed.
    package func run() async throws {
        try await withThrowingDiscardingTaskGroup { mutations in
            try await withThrowingDiscardingTaskGroup { group in
                if let background = self.engine.background {
                    group.addTask { try await background.run() }
                }
                await self.link.start(
                    onMessage: { [self] envelope in self.handle(envelope) },
                    onLost: { [eventSink] reason in eventSink.yield(.lost(reason)) })
                self.link.send(
                    .hello(
                        Hello(workerID: UInt32(max(self.configuration.workerSlot, 0)), pid: getpid(), version: self.configuration.version)))
                if case .replicas(let replicas) = self.engine.adapters {
                    // A replica back in rotation is reconciled at once, not at the next tick.
                    replicas.onReplicaRecovered { [self] _ in
                        if self.isLeading { self.reconcileTrigger.wake() }
                    }
                }
                // As leader: make the engine hold exactly the committed adapters every second (an
                // engine restart comes back empty; a leader that died mid-mutation may have left
                // an uncommitted adapter behind).
                group.addTask {
                    await self.reconcileTrigger.run(every: .seconds(1)) { await self.reconcileTick() }
                }
                try await self.handleEvents(in: &group, mutations: &mutations)
                group.cancelAll()
            }
        }
    }

    private var isLeading: Bool { self.leading.load(ordering: .acquiring) }

    private func handleEvents(
        in group: inout ThrowingDiscardingTaskGroup<any Error>, mutations: inout ThrowingDiscardingTaskGroup<any Error>
    ) async throws {
        var booting = false
        for await event in self.events {
            switch event {
            case .snapshotAndRole:
                guard !booting else { continue }
                booting = true
                group.addTask {
                    do {
                        try await self.boot()
                    } catch is CancellationError {
                        // Stopped before the engine answered.
                    }
                }
            case .go:
                let start = self.state.withLock { state -> Bool in
                    defer { state.serving = true }
                    return !state.serving
                }
                guard start else { continue }
                let grace = self.configuration.drainGrace
                group.addTask {
                    try await withGracefulShutdownHandler {
                        try await self.server.run(alongside: self.metricsServer, logger: self.logger)
                    } onGracefulShutdown: {
                        self.server.beginDrain(grace: grace)
                    }
                    self.eventSink.yield(.serverStopped)
                }
            case .drain(let grace, let listenerRetired):
                guard self.state.withLock({ $0.serving }) else { return }
                // Stop accepting, tell the supervisor once the listener is closed (its
                // replacement may start accepting), then let requests in flight finish
                // within `grace`. `listenerRetired`: no successor inherits the listener
                // (scale-down), so it closes at once.
                self.server.beginDrain(grace: grace, handOffListener: !listenerRetired)
                group.addTask {
                    await self.server.listenerClosed()
                    self.link.send(.drain(Drain(graceMs: UInt32(clamping: grace.components.seconds * 1000))))
                }
            case .routed(let envelope):
                mutations.addTask { await self.serveRouted(envelope) }
            case .leaderChange(let change):
                // One at a time: the supervisor sends the next change only after every ack.
                mutations.addTask { await self.applyAsLeader(change) }
            case .shutdown:
                self.logger.notice("shutdown requested by the supervisor")
                self.stopServingNow()
                return
            case .lost(let reason):
                // Without the supervisor there is no table owner and no one to restart us.
                self.logger.critical("supervisor is gone; exiting", metadata: ["reason": "\(reason)"])
                self.stopServingNow()
                throw SupervisedWorkerError.supervisorGone(reason)
            case .serverStopped:
                return
            }
        }
        // Cancelled.
        self.stopServingNow()
    }

    /// Closes every HTTP connection now (no grace), so the server's task ends.
    private func stopServingNow() {
        if self.state.withLock({ $0.serving }) { self.server.beginDrain(grace: .zero) }
    }

    /// Hello is sent; waits for the engine, reconciles it as leader, reports Ready.
    private func boot() async throws {
        let info = try await self.waitForEngine()
        let served = self.configuration.servedModelNames.isEmpty ? [info.modelName] : self.configuration.servedModelNames
        self.replica.setBaseModels(served)
        self.routes.setMaxModelLength(info.contextLength)
        self.routes.metrics.vllm.setMaxLoras(info.maxLoras)
        if self.isLeading { await self.reconcileEngine() }
        self.state.withLock { $0.reportedReady = true }
        self.link.send(.ready(Ready(tableVersion: self.replica.version)))
        self.logger.info("prepared; waiting for the supervisor's go", metadata: ["table.version": "\(self.replica.version)"])
    }

    private func serveRouted(_ envelope: ControlEnvelope) async {
        let reply: AdapterMutationReply
        switch envelope.body {
        case .load(let request):
            let trusted = request.caller == Self.startupCaller && request.originSlot == self.configuration.workerSlot
            reply = await SupervisorLink.$routedCallID.withValue(envelope.callID) {
                await self.leader.load(request, trustedPath: trusted)
            }
        case .unload(let request):
            reply = await SupervisorLink.$routedCallID.withValue(envelope.callID) { await self.leader.unload(request) }
        default:
            return
        }
        self.link.send(.mutationReply(reply), callID: envelope.callID)
    }

    /// Handles a supervisor message (on the control channel's event loop; never blocks).
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
        case .change(let change) where self.configuration.fleet && self.isLeading:
            self.eventSink.yield(.leaderChange(change))
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
            self.leading.store(role.role == .leader, ordering: .releasing)
            self.logger.notice("role assigned", metadata: ["role": "\(role.role)", "epoch": "\(role.epoch)"])
            self.bootProgress(snapshot: false, role: role)
        case .heartbeat(let beat):
            self.link.send(
                .heartbeat(Heartbeat(seq: beat.seq, requestsServed: self.routes.stats.requestsServed, inFlight: self.routes.stats.inFlight))
            )
        case .load, .unload:
            self.eventSink.yield(.routed(envelope))
        case .ready:
            self.eventSink.yield(.go)
        case .drain(let drain):
            self.eventSink.yield(.drain(grace: .milliseconds(Int(drain.graceMs)), listenerRetired: drain.listenerRetired))
        case .shutdown:
            self.eventSink.yield(.shutdown)
        case .fence(let fence):
            self.replica.fence.update(fence)
        case .hello, .changeAck, .mutationReply, .commit, .commitReply, .none:
            self.logger.warning("unexpected control message", metadata: ["call.id": "\(envelope.callID)"])
        }
    }

    /// Fleet mode, as leader: a change committed anywhere in the fleet is applied to the
    /// replica and to the engine before it is acked, so the node's ack (and the node key
    /// the agent writes after it) means this node serves it.
    private func applyAsLeader(_ change: TableChange) async {
        let previous = self.replica.snapshot()
        do {
            try self.replica.apply(change: change)
        } catch {
            self.logger.error("cannot apply table change", metadata: ["table.version": "\(change.version)", "error": "\(error)"])
            return
        }
        if !(await self.leader.applyCommitted(change, previous: previous)) { self.reconcileTrigger.wake() }
        self.link.send(.changeAck(TableChangeAck(version: change.version)))
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

    /// One tick of the reconcile loop: as leader, reconcile; once serving, make the
    /// `--lora-modules` part of the table (once).
    private func reconcileTick() async {
        guard self.isLeading else { return }
        await self.reconcileEngine()
        let startupDue = self.state.withLock { state -> Bool in
            guard state.serving, !state.startupModulesDone else { return false }
            state.startupModulesDone = true
            return true
        }
        if startupDue { await self.loadStartupModules() }
    }

    /// As leader, once serving: the operator's `--lora-modules` become part of the
    /// committed table (through the same commit path as any load, so every worker serves
    /// them), unless the table already holds them at the same path. Paths are trusted (no
    /// allowed-prefix policy; `serve` tells the engine too).
    ///
    /// In a fleet the load goes through the supervisor like an HTTP load, which reserves a
    /// fleet-wide id first; nodes started together with the same module race, one commits
    /// it and the others find it in the fleet's table.
    private func loadStartupModules() async {
        // A fenced node refuses mutations; the first fence comes right after the node caught up.
        var waited = 0
        while self.configuration.fleet, !self.configuration.loraModules.isEmpty, self.replica.fence.problem != nil, waited < 600 {
            try? await Task.sleep(for: .milliseconds(100))
            waited += 1
        }
        for module in self.configuration.loraModules {
            guard let canonical = PathPolicy.realPath(module.path) else {
                self.logger.error("--lora-modules: the path does not exist", metadata: ["adapter.name": "\(module.name.echoed())"])
                continue
            }
            if self.holds(module.name, at: canonical) { continue }
            let request = LoadAdapterRequest(
                name: module.name, path: canonical, loadInplace: true, baseModel: module.baseModelName ?? "",
                originSlot: self.configuration.workerSlot, caller: Self.startupCaller)
            let reply =
                self.configuration.fleet
                ? await self.mutator.load(request) : await self.leader.load(request, trustedPath: true)
            if reply.status.isOK {
                self.logger.info("--lora-modules adapter loaded", metadata: ["adapter.name": "\(module.name.echoed())"])
            } else if reply.status.code == .alreadyExists || reply.status.code == .aborted,
                await self.eventuallyHolds(module.name, at: canonical)
            {
                self.logger.info(
                    "--lora-modules adapter loaded by another node", metadata: ["adapter.name": "\(module.name.echoed())"])
            } else {
                self.logger.error(
                    "--lora-modules adapter refused",
                    metadata: ["adapter.name": "\(module.name.echoed())", "reason": "\(reply.status.message)"])
            }
        }
    }

    /// The `caller` of a startup adapter's load: a routed load with it, from this worker's
    /// own slot, is the operator's and skips the allowed-prefix policy (clients cannot set
    /// `caller`; the worker does).
    static let startupCaller = "--lora-modules"

    /// Whether the table holds `name` at `path`.
    private func holds(_ name: String, at path: String) -> Bool {
        self.replica.resolve(model: name)?.adapter?.path == path
    }

    /// Whether the table holds `name` at `path` within 5 s (another node's commit of it
    /// reaches this node through the fleet's watch).
    private func eventuallyHolds(_ name: String, at path: String) async -> Bool {
        for _ in 0..<50 {
            if self.holds(name, at: path) { return true }
            try? await Task.sleep(for: .milliseconds(100))
        }
        return self.holds(name, at: path)
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
                return try await self.engine.status.modelInfo()
            } catch {
                // The engine may still be loading its model; the supervisor watches our
                // heartbeats meanwhile, so there is no deadline here.
                try await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(1))
            }
        }
    }
}

/// Why a supervised worker stopped other than on request.
package enum SupervisedWorkerError: Error, Sendable, CustomStringConvertible {
    /// The control channel ended (the supervisor died or sent garbage): without it there
    /// is no table owner and no one to restart us. `lorikeet worker` exits with status 1.
    case supervisorGone(String)

    package var description: String {
        switch self {
        case .supervisorGone(let reason): "the supervisor is gone: \(reason)"
        }
    }
}
