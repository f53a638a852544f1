import Logging
import LorikeetProto

/// The supervisor's decisions about worker slots, the crash-loop breaker, leadership
/// (with epochs) and the engine's restarts, as a value type: events in, actions out.
///
/// In the style of async-http-client's `HTTPConnectionPool.StateMachine`: no I/O, no
/// timers, no clock of its own. Every event carries `now` (milliseconds on a monotonic
/// clock); every decision comes back as a list of ``Action``s for the libuv layer
/// (`Supervisor`) to perform, in order. The libuv layer turns process exits, control
/// messages, timers and signals into events, and never decides anything these rules cover.
///
/// It also owns the committed adapter table: loads and unloads routed to the leader
/// (`+Mutations.swift`), the checks of a commit, when to persist it, and its fan-out
/// (`+Commit.swift`). Still in the libuv layer: admin reads (status, lists) and systemd
/// notifications, which decide nothing.
struct SupervisorStateMachine {
    /// The numbers the rules use (from `SupervisorConfiguration`).
    struct Configuration: Sendable {
        var crashLoopFailures: Int
        var fastFailureMs: UInt64
        var crashLoopWindowMs: UInt64
        var crashLoopCooldownMs: UInt64
        var crashLoopMaximumCooldownMs: UInt64
        var initialBackoffMs: UInt64
        var maximumBackoffMs: UInt64
        var stableUptimeMs: UInt64
        var commitAckTimeoutMs: UInt64
        var rollingReadyTimeoutMs: UInt64
        var heartbeatTimeoutMs: UInt64
        var drainGraceMs: UInt64
        /// `--max-adapters`: most adapters the committed table may hold.
        var maxAdapters: Int

        init(_ configuration: SupervisorConfiguration) {
            self.crashLoopFailures = configuration.crashLoopFailures
            self.fastFailureMs = configuration.fastFailureMs
            self.crashLoopWindowMs = configuration.crashLoopWindowMs
            self.crashLoopCooldownMs = configuration.crashLoopCooldownMs
            self.crashLoopMaximumCooldownMs = configuration.crashLoopMaximumCooldownMs
            self.initialBackoffMs = configuration.initialBackoffMs
            self.maximumBackoffMs = configuration.maximumBackoffMs
            self.stableUptimeMs = configuration.stableUptimeMs
            self.commitAckTimeoutMs = configuration.commitAckTimeoutMs
            self.rollingReadyTimeoutMs = configuration.rollingReadyTimeoutMs
            self.heartbeatTimeoutMs = configuration.heartbeatTimeoutMs
            self.drainGraceMs = configuration.drainGraceMs
            self.maxAdapters = configuration.maxAdapters
        }
    }

    /// A slot's state.
    enum SlotState: Equatable, Sendable {
        /// Filled, or being refilled (a restart may be pending).
        case active
        /// The crash-loop breaker is open: no restarts until its cool-down timer fires.
        case paused
        /// Being removed (scale down): no restarts; gone once its workers exit.
        case removing
    }

    /// One worker slot: the process serving it and the counters of the breaker.
    struct Slot: Sendable {
        let index: Int
        var state: SlotState = .active
        /// The process filling the slot.
        var current: WorkerID?
        /// The replacement being prepared during a rolling restart.
        var replacement: WorkerID?
        var restarts: UInt32 = 0
        var lastExit = ""
        var consecutiveFastFailures = 0
        /// Times of the boot failures inside the breaker's window.
        var fastFailureTimes: [UInt64] = []
        /// The breaker opened this many times in a row (the cool-down doubles each time);
        /// reset by a worker that outlives the fast-failure time or becomes Ready.
        var trips = 0

        init(index: Int) { self.index = index }

        var workers: [WorkerID] { [self.current, self.replacement].compactMap { $0 } }
    }

    /// One live worker process (spawned, not yet exited).
    struct Worker: Sendable {
        let id: WorkerID
        let slot: Int
        let startedAtMs: UInt64
        var state: WorkerState = .starting
        var role: WorkerRole = .follower
        var boot: BootRecord = .unproven
        var termination: Termination = .notRequested
        var disposition: WorkerDisposition = .wanted
        var channel: ChannelState = .open
        /// When the worker last sent anything on its control channel.
        var lastHeartbeatMs: UInt64

        init(id: WorkerID, slot: Int, startedAtMs: UInt64) {
            self.id = id
            self.slot = slot
            self.startedAtMs = startedAtMs
            self.lastHeartbeatMs = startedAtMs
        }

        var hasHello: Bool { self.state != .starting }
    }

    /// Whether the supervisor is running or stopping.
    enum Lifecycle: Equatable, Sendable {
        case running
        case stopping(StopMode)
    }

    enum StopMode: Equatable, Sendable { case graceful, fast }

    /// The engine process as the supervisor sees it (`status` reports the raw value).
    enum EngineState: Sendable {
        case starting, running, down
        /// No engine process: the workers serve in front of upstream replicas.
        case upstream

        /// As the admin channel reports it.
        var phase: EnginePhase {
            switch self {
            case .starting: .starting
            case .running: .running
            case .down: .down
            case .upstream: .upstream
            }
        }
    }

    /// What the libuv layer must do, in order.
    enum Action: Sendable {
        /// Spawn a worker process for `id` (already registered in `slot`, as its current
        /// process or its replacement). On failure, report ``spawnFailed(_:now:)``.
        case spawnWorker(WorkerID, slot: Int)
        /// (Re)start the slot's restart timer; when it fires, report ``restartTimerFired(slot:now:)``.
        case startRestartTimer(slot: Int, delayMs: UInt64)
        case cancelRestartTimer(slot: Int)
        /// Send the current table snapshot.
        case sendSnapshot(WorkerID)
        case sendRole(WorkerID, WorkerRole, epoch: UInt64)
        /// The worker is now serving: send Ready with the current table version, tell systemd.
        case startServing(WorkerID)
        /// Send Drain and arm the kill timer.
        case drain(WorkerID, listenerRetired: Bool)
        /// SIGABRT now, SIGKILL in 2 s.
        case terminate(WorkerID, reason: String)
        /// Forward a load/unload to the leader under `routeID`; if the control channel
        /// refuses it, report ``forwardFailed(routeID:)``.
        case forwardToLeader(WorkerID, routeID: UInt64, AdapterMutation)
        /// Write the mutation's outcome to the audit log, then send it to its origin.
        case answerMutation(MutationAnswer)
        /// Answer a worker's commit request.
        case replyToCommit(WorkerID, callID: UInt64, CommitReply)
        /// Write `table` to the state file; report ``tablePersisted(callID:failure:)``.
        case persistTable(AdapterTable, callID: UInt64)
        /// Open a listening socket for a new slot; on success report ``slotOpened(_:now:)``.
        case openSlot(Int)
        /// Close the supervisor's copy of the slot's listening socket.
        case releaseListener(slot: Int)
        /// The slot is gone (its listener is released; log it).
        case removeSlot(Int)
        /// Begin stopping in `mode`: tell systemd, log.
        case beginStop(StopMode)
        /// Graceful: send Drain with the grace period. Fast: send Shutdown, then SIGTERM.
        case shutdown(WorkerID, StopMode)
        /// Arm the stop timer; when it fires, report ``stopTimerFired(lateByMs:)``.
        case startStopTimer(delayMs: UInt64)
        /// SIGKILL every process left (workers and engine).
        case killEverything
        /// SIGTERM the engine (every worker is gone).
        case terminateEngine
        /// Every process is gone: close the handles and leave the loop.
        case leaveLoop
        case spawnEngine
        case startEngineTimer(delayMs: UInt64)
        /// Stop the server fast with this exit code.
        case fatal(code: LorikeetExitCode, message: String)
        /// Send a heartbeat with this sequence number.
        case sendHeartbeat(WorkerID, seq: UInt64)
        /// Send SIGKILL.
        case kill(WorkerID)
        /// Send a committed change to a worker (it acks with the version).
        case sendChange(WorkerID, TableChange)
        /// (Re)start the commit fan-out timer; when it fires, report ``commitTimerFired(version:)``.
        case startCommitTimer(version: UInt64, delayMs: UInt64)
        /// The fan-out ended: close its timer.
        case cancelCommitTimer
        /// Start the rolling restart's timer for a replacement; when it fires, report
        /// ``rollingTimerFired(_:)``.
        case startRollingTimer(WorkerID, delayMs: UInt64)
        case cancelRollingTimer
        /// Fleet mode: spawn the cluster agent (`lorikeet cluster-agent`); report
        /// ``clusterAgentStarted()`` or ``clusterAgentExited(_:now:)``.
        case spawnClusterAgent
        /// Fleet mode, stopping: SIGTERM the cluster agent (it revokes its lease and exits;
        /// report ``clusterAgentExited(_:now:)``).
        case terminateClusterAgent
        /// Fleet mode: restart the cluster agent after `delayMs`.
        case startClusterAgentTimer(delayMs: UInt64)
        /// Fleet mode: tell a worker until when it may serve adapters.
        case sendFence(WorkerID, Fence)
        /// Fleet mode: send a frame to the cluster agent (dropped when it is not running).
        case sendToClusterAgent(ClusterEnvelope)
        /// Log; `worker` (if any) adds the worker's pid to the metadata.
        case log(Logger.Level, String, Logger.Metadata, worker: WorkerID?)
    }

    let configuration: Configuration
    private(set) var slots: [Slot] = []
    private(set) var workers: [WorkerID: Worker] = [:]
    private(set) var leader: WorkerID?
    /// Raised on every promotion; the engine refuses mutations from older epochs.
    private(set) var epoch: UInt64 = 0
    private(set) var lifecycle: Lifecycle = .running
    /// The stop timer was re-armed once after a stall (`stopTimerFired(lateByMs:)`).
    private var stopWaitedAfterStall = false
    /// The committed adapter table (what the state file holds).
    var table: AdapterTable
    /// Loads/unloads forwarded to the leader and not answered yet, by route id (the call
    /// id the leader sees, and the id of its commit).
    var routes: [UInt64: RoutedMutation] = [:]
    var nextRouteID: UInt64 = 1
    /// The commit being made durable, if any.
    var persisting: DurableCommit?
    /// The commit being fanned out, if any (one at a time).
    var fanOut: CommitFanOut?
    /// Fleet mode (`--cluster-endpoints`), nil otherwise: etcd (through the cluster agent)
    /// owns the committed table (`+Cluster.swift`).
    var cluster: ClusterState?
    /// The rolling restart in progress, if any (settable for the admin `drain-worker`
    /// call, which rolls one slot).
    var rolling: RollingRestart?
    private(set) var engine: EngineState = .starting
    private(set) var engineRestarts: UInt32 = 0
    private var engineStartedAtMs: UInt64 = 0
    private var generation = 0
    private var heartbeatSeq: UInt64 = 0
    /// Slots added by ``scaleUp()`` whose listener is not open yet.
    private(set) var openingSlots: Set<Int> = []

    /// A machine serving `table` (the state file's content at boot).
    init(configuration: Configuration, table: AdapterTable = AdapterTable(), fleet: Bool = false) {
        self.configuration = configuration
        self.table = table
        self.cluster = fleet ? ClusterState() : nil
    }

    var maxAdapters: Int { self.configuration.maxAdapters }

    // MARK: - Queries

    var isRunning: Bool { self.lifecycle == .running }

    /// Every live worker, slot by slot, current before replacement (the order leader
    /// candidates are considered in).
    var allWorkers: [WorkerID] { self.slots.flatMap(\.workers) }

    func slot(_ index: Int) -> Slot? { self.slots.first { $0.index == index } }

    private func position(of index: Int) -> Int? { self.slots.firstIndex { $0.index == index } }

    /// The crash-loop breaker's rule: an exit is a *boot failure*, and counts toward
    /// `--crash-loop-failures` (within `crashLoopWindowMs`), only when the worker
    /// - exited within `fastFailureMs` of being spawned,
    /// - never reported Ready (neither prepared for a rolling restart nor serving), and
    /// - was not killed by the supervisor for a protocol error (a bad control frame).
    ///
    /// A worker that served and then died — whatever a client sent it, a `kill -9`, an
    /// OOM kill — is restarted (with backoff when it keeps dying fast), but never trips
    /// the breaker: only a slot that cannot boot is paused, and only when every slot
    /// cannot boot does the server stop with `LorikeetExitCode.crashLoop`.
    static func isBootFailure(_ worker: Worker, uptimeMs: UInt64, fastFailureMs: UInt64) -> Bool {
        uptimeMs < fastFailureMs && worker.boot == .unproven && worker.termination != .protocolViolation
    }

    /// Restart delay after `attempt` consecutive fast failures: doubling from the
    /// initial backoff, capped.
    func backoff(_ attempt: UInt32) -> UInt64 {
        let shift = min(attempt, 20)
        return min(self.configuration.initialBackoffMs << UInt64(shift), self.configuration.maximumBackoffMs)
    }

    /// The cool-down of the breaker's `trips`-th consecutive opening: doubling, capped.
    func cooldown(trips: Int) -> UInt64 {
        var cooldown = self.configuration.crashLoopCooldownMs
        for _ in 1..<max(trips, 1) where cooldown < self.configuration.crashLoopMaximumCooldownMs { cooldown *= 2 }
        return min(cooldown, self.configuration.crashLoopMaximumCooldownMs)
    }

    // MARK: - Slots and spawning

    /// A slot whose listener is open (at boot): no actions.
    mutating func registerSlot(_ index: Int) {
        self.slots.append(Slot(index: index))
    }

    /// Start a worker in `slot` (its current process, or its replacement in a rolling
    /// restart), unless stopping, the slot is paused or being removed.
    mutating func spawn(inSlot index: Int, asReplacement: Bool = false, now: UInt64) -> [Action] {
        guard self.isRunning, let position = self.position(of: index), self.slots[position].state == .active else { return [] }
        self.generation += 1
        let id = WorkerID(generation: self.generation)
        self.workers[id] = Worker(id: id, slot: index, startedAtMs: now)
        if asReplacement { self.slots[position].replacement = id } else { self.slots[position].current = id }
        return [.spawnWorker(id, slot: index)]
    }

    /// The process for `id` could not be spawned: forget it and try again later.
    mutating func spawnFailed(_ id: WorkerID, now: UInt64) -> [Action] {
        guard let worker = self.workers.removeValue(forKey: id), let position = self.position(of: worker.slot) else { return [] }
        var actions: [Action] = []
        if self.slots[position].current == id { self.slots[position].current = nil }
        if self.slots[position].replacement == id {
            self.slots[position].replacement = nil
            if self.rolling?.currentSlot == worker.slot {
                actions += self.abortRollingRestart("cannot spawn a replacement for slot \(worker.slot)")
            }
        }
        return actions + self.scheduleRestart(position)
    }

    /// A slot's restart timer fired: end a crash-loop pause, then refill the slot.
    mutating func restartTimerFired(slot index: Int, now: UInt64) -> [Action] {
        guard let position = self.position(of: index) else { return [] }
        var actions: [Action] = []
        if self.slots[position].state == .paused {
            self.slots[position].state = .active
            self.slots[position].fastFailureTimes.removeAll()
            actions.append(.log(.notice, "worker slot \(index): crash-loop pause over; trying one worker", [:], worker: nil))
        }
        if self.slots[position].current == nil { actions += self.spawn(inSlot: index, now: now) }
        return actions
    }

    /// Most worker slots (SIGTTIN beyond it is logged and ignored; `scale` refuses it).
    static let maximumSlots = 256

    /// Slots that are not being removed, those being opened included.
    var wantedSlotCount: Int { self.slots.filter { $0.state != .removing }.count + self.openingSlots.count }

    /// SIGTTIN (or a scale request): add one slot, up to ``maximumSlots``.
    mutating func scaleUp() -> [Action] {
        guard self.isRunning else { return [] }
        guard self.wantedSlotCount < Self.maximumSlots else {
            return [.log(.warning, "not scaling up: \(Self.maximumSlots) worker slots is the limit", [:], worker: nil)]
        }
        let index = max(self.slots.map(\.index).max() ?? -1, self.openingSlots.max() ?? -1) + 1
        self.openingSlots.insert(index)
        return [.openSlot(index)]
    }

    /// The listener for slot `index` could not be opened: the slot is not added.
    mutating func slotOpenFailed(_ index: Int) {
        self.openingSlots.remove(index)
    }

    /// The listener of a slot added by ``scaleUp()`` is open.
    mutating func slotOpened(_ index: Int, now: UInt64) -> [Action] {
        self.openingSlots.remove(index)
        self.registerSlot(index)
        let log = Action.log(.info, "scaling up: slot \(index) added (\(self.slots.count) slots)", [:], worker: nil)
        return [log] + self.spawn(inSlot: index, now: now)
    }

    /// SIGTTOU (or a scale request): drain and remove the last slot; at least one stays.
    mutating func scaleDown() -> [Action] {
        guard let position = self.slots.lastIndex(where: { $0.state != .removing }),
            self.slots.filter({ $0.state != .removing }).count > 1
        else {
            return [.log(.warning, "not scaling down: at least one worker must remain", [:], worker: nil)]
        }
        let index = self.slots[position].index
        self.slots[position].state = .removing
        // No process takes this listener over: release our copy now, so the socket leaves
        // the SO_REUSEPORT group as soon as the draining worker closes its own.
        var actions: [Action] = [
            .cancelRestartTimer(slot: index), .releaseListener(slot: index),
            .log(.info, "scaling down: draining slot \(index)", [:], worker: nil),
        ]
        let workers = self.slots[position].workers
        if workers.isEmpty {
            self.slots.remove(at: position)
            actions.append(.removeSlot(index))
        }
        for worker in workers { actions += self.drain(worker, listenerRetired: true) }
        return actions
    }

    // MARK: - Worker lifecycle

    /// Any control message from the worker (it is alive).
    mutating func messageReceived(from id: WorkerID, now: UInt64) {
        self.workers[id]?.lastHeartbeatMs = now
    }

    /// A timer that fires this much later than it was due means the supervisor itself did
    /// not run meanwhile (the host, VM or container was paused or starved, or the whole
    /// node got SIGSTOP). What its workers sent in that time may still be unread (libuv runs
    /// due timers before it reads sockets, and paused workers need running time too), so
    /// such a timer does not kill: a commit waits its whole timeout once more, a rolling
    /// restart's replacement gets its whole boot timeout again.
    static let stallToleranceMs: UInt64 = 1000

    /// The heartbeat timer fired (`lateByMs` after it was due): a worker silent for longer
    /// than the heartbeat timeout is terminated; every other worker that said hello gets a
    /// heartbeat. Silence counts only the time the supervisor ran: every worker's last
    /// message moves forward by how late the tick is, so a pause kills nobody, and a hung
    /// worker is still found however often the supervisor stalls.
    mutating func heartbeatTimerFired(now: UInt64, lateByMs: UInt64 = 0) -> [Action] {
        self.heartbeatSeq += 1
        var actions: [Action] = []
        if lateByMs > 0 {
            for id in self.allWorkers {
                guard let last = self.workers[id]?.lastHeartbeatMs else { continue }
                self.workers[id]?.lastHeartbeatMs = min(now, last + lateByMs)
            }
        }
        if lateByMs > Self.stallToleranceMs {
            actions.append(Self.stallLog(lateByMs, "heartbeat silence does not count that time"))
        }
        for id in self.allWorkers {
            guard let worker = self.workers[id] else { continue }
            let silence = now - min(worker.lastHeartbeatMs, now)
            if silence > self.configuration.heartbeatTimeoutMs {
                actions.append(.terminate(id, reason: "no heartbeat for \(silence) ms"))
            } else if worker.hasHello {
                actions.append(.sendHeartbeat(id, seq: self.heartbeatSeq))
            }
        }
        return actions
    }

    /// The warning a late timer gives (`stallToleranceMs`).
    static func stallLog(_ lateByMs: UInt64, _ consequence: String) -> Action {
        .log(
            .warning, "the supervisor did not run for \(lateByMs) ms (paused or starved); \(consequence)",
            ["stall.ms": "\(lateByMs)"], worker: nil)
    }

    /// The worker's first control message.
    mutating func hello(_ id: WorkerID, _ hello: Hello) -> [Action] {
        guard self.workers[id]?.state == .starting else { return [] }
        self.workers[id]?.state = .booting
        let slot = self.workers[id]?.slot ?? -1
        var actions: [Action] = [
            .log(.info, "worker hello", ["worker.slot": "\(slot)", "pid": "\(hello.pid)", "version": "\(hello.version)"], worker: nil),
            .sendSnapshot(id),
        ]
        if let fence = self.cluster?.fence { actions.append(.sendFence(id, fence)) }
        if self.leader == nil && self.isRunning {
            actions += self.promote(id)
        } else {
            self.workers[id]?.role = .follower
            actions.append(.sendRole(id, .follower, epoch: self.epoch))
        }
        return actions
    }

    /// The worker reports Ready; `tableIsCurrent` when it applied the current table
    /// version (otherwise it gets the snapshot again and reports again).
    mutating func ready(_ id: WorkerID, tableIsCurrent: Bool, now: UInt64) -> [Action] {
        guard let worker = self.workers[id], worker.state == .booting else { return [] }
        guard tableIsCurrent else { return [.sendSnapshot(id)] }
        self.workers[id]?.state = .prepared
        self.workers[id]?.boot = .booted
        if let slot = self.slot(worker.slot), slot.replacement == id, let old = slot.current {
            // Rolling restart: the old process stops accepting first; then the new one starts.
            let log = Action.log(.info, "replacement prepared; draining the old worker", ["worker.slot": "\(worker.slot)"], worker: nil)
            if self.workers[old]?.state == .draining { return [log] }
            return [log] + self.drain(old)
        }
        return self.startServing(id, now: now)
    }

    /// The draining worker confirms it stopped accepting: its replacement takes the slot.
    mutating func stoppedAccepting(_ id: WorkerID, now: UInt64) -> [Action] {
        guard let slotIndex = self.workers[id]?.slot, let position = self.position(of: slotIndex),
            self.slots[position].current == id, let replacement = self.slots[position].replacement
        else { return [] }
        self.slots[position].current = replacement
        self.slots[position].replacement = id
        return self.workers[replacement]?.state == .prepared ? self.startServing(replacement, now: now) : []
    }

    /// Drain `id`; `listenerRetired` when no successor inherits its slot's listener.
    mutating func drain(_ id: WorkerID, listenerRetired: Bool = false) -> [Action] {
        guard self.workers[id] != nil else { return [] }
        self.workers[id]?.disposition = .retiring
        self.workers[id]?.state = .draining
        return [.drain(id, listenerRetired: listenerRetired)]
    }

    /// The supervisor wants `id` gone without a drain (a rolling restart's replacement
    /// that was not ready in time): its exit is expected.
    mutating func retire(_ id: WorkerID) {
        self.workers[id]?.disposition = .retiring
    }

    /// The worker broke the control protocol (a frame that cannot be framed).
    mutating func protocolViolation(_ id: WorkerID) -> [Action] {
        guard self.workers[id] != nil else { return [] }
        self.workers[id]?.termination = .protocolViolation
        self.workers[id]?.channel = .closed
        return [.terminate(id, reason: "sent a bad control frame")]
    }

    /// The worker's control channel closed.
    mutating func controlClosed(_ id: WorkerID, reason: String) -> [Action] {
        self.workers[id]?.channel = .closed
        guard let worker = self.workers[id], worker.disposition == .wanted, self.isRunning else { return [] }
        return [.terminate(id, reason: reason)]
    }

    /// A worker process exited (libuv reaped it).
    mutating func childExited(_ id: WorkerID, _ exit: ProcessExit, now: UInt64) -> [Action] {
        guard let worker = self.workers.removeValue(forKey: id) else { return [] }
        let uptime = now - worker.startedAtMs
        var actions: [Action] = [
            .log(
                worker.disposition == .retiring || !self.isRunning ? .info : .error, "worker \(exit)",
                ["worker.slot": "\(worker.slot)", "uptime.ms": "\(uptime)"], worker: id)
        ]
        if let position = self.position(of: worker.slot) {
            if self.slots[position].current == id {
                self.slots[position].current = nil
                // A retired process exited before handing over: its replacement takes the slot.
                if let replacement = self.slots[position].replacement {
                    self.slots[position].current = replacement
                    self.slots[position].replacement = nil
                    if self.workers[replacement]?.state == .prepared { actions += self.startServing(replacement, now: now) }
                }
            }
            if self.slots[position].replacement == id { self.slots[position].replacement = nil }
            self.slots[position].lastExit = exit.description
        }
        actions += self.commitParticipantGone(id)
        if self.leader == id {
            self.leader = nil
            actions += self.settleRoutes(of: id)
            if self.isRunning { actions += self.electLeader() }
        }
        if self.rolling?.currentSlot == worker.slot && worker.disposition != .retiring {
            // The replacement (or the old worker) crashed mid-roll.
            actions += self.abortRollingRestart("worker in slot \(worker.slot) exited during the roll")
        }
        guard self.isRunning else { return actions + self.checkStopped() }
        guard let position = self.position(of: worker.slot) else { return actions }
        if self.slots[position].state == .removing {
            if self.slots[position].workers.isEmpty {
                self.slots.remove(at: position)
                actions.append(.removeSlot(worker.slot))
            }
            return actions
        }
        if worker.disposition == .retiring { return actions }
        if exit.status == Int64(LorikeetExitCode.cannotBoot.rawValue) && exit.signal == 0 {
            return actions + [
                .fatal(
                    code: .cannotBoot,
                    message:
                        "worker slot \(worker.slot) cannot boot (exit code \(LorikeetExitCode.cannotBoot.rawValue)); see its message above")
            ]
        }
        self.slots[position].restarts += 1
        if worker.boot == .booted { self.slots[position].trips = 0 }
        if uptime < self.configuration.fastFailureMs {
            self.slots[position].consecutiveFastFailures += 1
            if Self.isBootFailure(worker, uptimeMs: uptime, fastFailureMs: self.configuration.fastFailureMs) {
                self.slots[position].fastFailureTimes.append(now)
                self.slots[position].fastFailureTimes.removeAll { now - $0 > self.configuration.crashLoopWindowMs }
                // A slot tried again after a pause that fails at boot once more pauses again at once.
                if self.slots[position].fastFailureTimes.count >= self.configuration.crashLoopFailures || self.slots[position].trips > 0 {
                    return actions + self.tripBreaker(position, exit: exit)
                }
            } else {
                let why = worker.termination == .protocolViolation ? "killed for a protocol error" : "it had been ready"
                actions.append(
                    .log(
                        .notice, "worker exit does not count toward the crash-loop breaker (\(why))", ["worker.slot": "\(worker.slot)"],
                        worker: id))
            }
        } else {
            self.slots[position].trips = 0
            if uptime > self.configuration.stableUptimeMs { self.slots[position].consecutiveFastFailures = 0 }
        }
        return actions + self.scheduleRestart(position)
    }

    private mutating func startServing(_ id: WorkerID, now: UInt64) -> [Action] {
        self.workers[id]?.state = .ready
        self.workers[id]?.boot = .booted
        return [.startServing(id)] + self.rollingStep(now: now)
    }

    private func scheduleRestart(_ position: Int) -> [Action] {
        let failures = self.slots[position].consecutiveFastFailures
        let delay = failures == 0 ? 0 : self.backoff(UInt32(failures - 1))
        return [.startRestartTimer(slot: self.slots[position].index, delayMs: delay)]
    }

    /// Opens the crash-loop breaker of a slot: no restarts for a cool-down (doubling with
    /// each consecutive trip), then one worker is tried again. When every slot is paused
    /// nothing serves, and the server stops with `LorikeetExitCode.crashLoop`.
    private mutating func tripBreaker(_ position: Int, exit: ProcessExit) -> [Action] {
        self.slots[position].state = .paused
        self.slots[position].trips += 1
        let slot = self.slots[position]
        let cooldown = self.cooldown(trips: slot.trips)
        let window = self.configuration.crashLoopWindowMs / 1000
        let log = Action.log(
            .critical,
            "worker slot \(slot.index) is crash-looping (\(slot.fastFailureTimes.count) fast failures within \(window) s; last: \(exit)); pausing the slot for \(cooldown / 1000) s",
            [:], worker: nil)
        if self.slots.allSatisfy({ $0.state != .active }) {
            return [
                log,
                .fatal(code: .crashLoop, message: "every worker slot is crash-looping; stopping (last worker \(exit))"),
            ]
        }
        return [log, .startRestartTimer(slot: slot.index, delayMs: cooldown)]
    }

    // MARK: - Leadership

    /// Names `id` leader with a new epoch and tells every worker that said hello.
    private mutating func promote(_ id: WorkerID) -> [Action] {
        self.epoch += 1
        self.leader = id
        var actions: [Action] = []
        for other in self.allWorkers where self.workers[other]?.hasHello == true {
            let role: WorkerRole = other == id ? .leader : .follower
            self.workers[other]?.role = role
            actions.append(.sendRole(other, role, epoch: self.epoch))
        }
        let slot = self.workers[id]?.slot ?? -1
        actions.append(.log(.notice, "leader elected", ["worker.slot": "\(slot)", "epoch": "\(self.epoch)"], worker: id))
        return actions
    }

    /// After the leader exited: a ready worker leads, else any that said hello, else
    /// the next worker to say hello.
    private mutating func electLeader() -> [Action] {
        let candidates = self.allWorkers.compactMap { self.workers[$0] }.filter { $0.disposition == .wanted && $0.hasHello }
        if let best = candidates.first(where: { $0.state == .ready }) ?? candidates.first {
            return self.promote(best.id)
        }
        return [.log(.warning, "no worker can lead yet; the next worker to say hello becomes leader", [:], worker: nil)]
    }

    // MARK: - Engine

    /// Starting the engine process (at boot, or when its restart timer fires).
    mutating func startEngine(now: UInt64) -> [Action] {
        guard self.isRunning else { return [] }
        self.engineStartedAtMs = now
        return [.spawnEngine]
    }

    mutating func engineSpawned() { self.engine = .running }

    /// No engine process (`--upstream`).
    mutating func useUpstreamEngine() { self.engine = .upstream }

    mutating func engineExited(_ exit: ProcessExit, now: UInt64) -> [Action] {
        self.engine = .down
        guard self.isRunning else { return self.checkStopped() }
        if exit.status == Int64(LorikeetExitCode.cannotBoot.rawValue) {
            return [.fatal(code: .cannotBoot, message: "the engine cannot boot (\(exit)); see its message above")]
        }
        self.engineRestarts += 1
        let uptime = now - self.engineStartedAtMs
        let delay = uptime > self.configuration.stableUptimeMs ? self.configuration.initialBackoffMs : self.backoff(self.engineRestarts)
        return [
            .log(.error, "engine \(exit); restarting in \(delay) ms", ["restarts": "\(self.engineRestarts)"], worker: nil),
            .startEngineTimer(delayMs: delay),
        ]
    }

    // MARK: - Stopping

    /// SIGTERM (graceful; a second one stops fast), SIGINT/SIGQUIT (fast), a fatal error.
    mutating func stop(_ mode: StopMode) -> [Action] {
        switch (self.lifecycle, mode) {
        case (.stopping(.fast), _):
            return []
        case (.stopping(.graceful), .graceful):
            return [.log(.warning, "second SIGTERM: stopping fast", [:], worker: nil)] + self.stop(.fast)
        default:
            break
        }
        self.lifecycle = .stopping(mode)
        self.stopWaitedAfterStall = false
        let rollingTimer: [Action] = self.rolling == nil ? [] : [.cancelRollingTimer]
        self.rolling = nil
        if mode == .graceful {
            for id in self.allWorkers { self.workers[id]?.state = .draining }
        }
        let workers: [Action] = self.allWorkers.map { .shutdown($0, mode) }
        let grace = mode == .graceful ? self.configuration.drainGraceMs + 1000 : 2000
        let unanswered = self.failPendingMutations(Status(code: .unavailable, message: "the server is shutting down"))
        return rollingTimer + self.slots.map { .cancelRestartTimer(slot: $0.index) } + [.beginStop(mode)] + unanswered + workers
            + [.startStopTimer(delayMs: grace)] + self.checkStopped()
    }

    /// The stop timer fired (`lateByMs` after it was due): whatever is left is killed —
    /// unless the supervisor was paused meanwhile (`stallToleranceMs`): then the workers
    /// get their whole grace period once more (what they did may be unread).
    mutating func stopTimerFired(lateByMs: UInt64 = 0) -> [Action] {
        if Self.waitsAgain(lateByMs: lateByMs, alreadyWaited: &self.stopWaitedAfterStall) {
            let grace = self.lifecycle == .stopping(.graceful) ? self.configuration.drainGraceMs + 1000 : 2000
            return [Self.stallLog(lateByMs, "the stop waits another \(grace) ms"), .startStopTimer(delayMs: grace)]
        }
        let log: [Action] =
            self.lifecycle == .stopping(.graceful) ? [.log(.warning, "grace period over; killing what is left", [:], worker: nil)] : []
        return log + [.killEverything]
    }

    /// Whether a deadline timer that fired `lateByMs` late waits its whole time once more:
    /// only when the supervisor stalled past `stallToleranceMs`, and only once per deadline
    /// (`alreadyWaited`), so stalls cannot postpone it for ever.
    static func waitsAgain(lateByMs: UInt64, alreadyWaited: inout Bool) -> Bool {
        guard lateByMs > Self.stallToleranceMs, !alreadyWaited else { return false }
        alreadyWaited = true
        return true
    }

    /// While stopping: once every worker is gone, stop the engine; once it is gone too,
    /// the cluster agent (fleet mode: it gives its lease back); then leave the loop.
    func checkStopped() -> [Action] {
        guard !self.isRunning, self.workers.isEmpty else { return [] }
        if self.engine == .running { return [.terminateEngine] }
        if self.cluster?.agentUp == true { return [.terminateClusterAgent] }
        return [.leaveLoop]
    }
}

/// One worker process's identity: its spawn generation, unique for the supervisor's life.
struct WorkerID: Hashable, Sendable, CustomStringConvertible {
    let generation: Int
    var description: String { "worker#\(self.generation)" }
}

/// Lifecycle of one worker process as the supervisor sees it (`lorikeet ctl workers`
/// shows the raw value).
enum WorkerState: Sendable {
    /// Spawned; no Hello yet.
    case starting
    /// Hello received; role and snapshot sent; booting.
    case booting
    /// Applied the table and prepared to serve; waiting for the go (rolling restart).
    case prepared
    /// Serving HTTP.
    case ready
    /// Told to drain; finishing in-flight work.
    case draining

    /// As the admin channel reports it.
    var phase: WorkerPhase {
        switch self {
        case .starting: .starting
        case .booting: .booting
        case .prepared: .prepared
        case .ready: .ready
        case .draining: .draining
        }
    }
}

/// Whether a worker ever booted: only a worker that never did can fail at boot.
enum BootRecord: Sendable, Equatable {
    /// Has not reported Ready yet.
    case unproven
    /// Reported Ready (prepared or serving) at least once.
    case booted
}

/// Why the supervisor terminated a worker, when that matters to the breaker.
enum Termination: Sendable, Equatable {
    case notRequested
    /// Killed for breaking the control protocol: never a boot failure.
    case protocolViolation
}

/// Whether a worker's control channel is still open (a change can reach it).
enum ChannelState: Sendable, Equatable { case open, closed }

/// Whether the supervisor wants a worker to keep running.
enum WorkerDisposition: Sendable, Equatable {
    case wanted
    /// Draining, rolled, or scaled down: its exit is expected and the slot is not
    /// restarted for it.
    case retiring
}

/// How a child process ended.
struct ProcessExit: Equatable, Sendable, CustomStringConvertible {
    let status: Int64
    let signal: Int32

    var description: String {
        self.signal != 0 ? "killed by signal \(self.signal)" : "exited with status \(self.status)"
    }
}
