import Glibc
package import Logging
package import LorikeetProto

/// Why the supervisor stopped, as a process exit code and a message.
package struct SupervisorExit: Sendable {
    /// The exit code `lorikeet serve` ends with.
    package let code: LorikeetExitCode
    /// Why, for humans (printed on stderr unless the code is `.ok`).
    package let message: String
}

/// The libuv supervisor: spawns the engine and the workers, restarts them, names the
/// leader (fenced by an epoch), and owns the committed adapter table.
///
/// The decisions about slots, the crash-loop breaker, leadership, engine restarts, the
/// commit fan-out and rolling restarts are `SupervisorStateMachine`'s: this class turns
/// libuv callbacks into its events and performs the actions it returns
/// (`Supervisor+Actions.swift`).
///
/// Single-threaded: everything runs on the libuv loop of the calling thread.
package final class Supervisor {
    let configuration: SupervisorConfiguration
    let logger: Logger
    let loop = UVLoop()
    let store: StateStore
    var machine: SupervisorStateMachine
    /// The processes of the live workers, by the state machine's id.
    var workers: [WorkerID: WorkerProcess] = [:]
    /// Listening sockets and restart timers, by slot index.
    var slotHandles: [Int: SlotHandles] = [:]
    var engine: UVProcess?
    /// Fleet mode: the cluster agent, while it runs.
    var clusterAgent: ClusterAgentProcess?
    /// Fleet mode: `ctl nodes` replies waiting for the agent, by call id.
    var nodesReplies: [UInt64: (ClusterNodesReply) -> Void] = [:]
    /// Reply callbacks of admin loads/unloads (and batch items) by token
    /// (`MutationOrigin.admin`); each is called once, by the `answerMutation` action.
    var adminReplies: [UInt64: (AdapterMutationReply) -> Void] = [:]
    var nextAdminToken: UInt64 = 1
    var exitResult: SupervisorExit?
    var commitTimer: UVTimer?
    /// When the heartbeat timer last fired (loop time): a tick much later than one interval
    /// after it means the supervisor was paused (`SupervisorStateMachine.stallToleranceMs`).
    var lastHeartbeatTickMs: UInt64 = 0
    var rollingTimer: UVTimer?
    var signals: [UVSignal] = []
    var heartbeatTimer: UVTimer?
    var watchdogTimer: UVTimer?
    var adminServer: UVPipeServer?
    var stopTimer: UVTimer?
    let startedAtMs: UInt64
    /// `<state-dir>/metrics` (`MetricsDirectory`), nil when it could not be made.
    let metricsDirectory: String?
    /// `<state-dir>/audit.log`: one JSON line per adapter change, failures included.
    let audit: AuditLog
    /// `sd_notify` when started by systemd (`NOTIFY_SOCKET`).
    let notifier: SystemdNotifier?
    var announcedReady = false

    /// Port actually bound (useful with port 0).
    package private(set) var boundPort: UInt16 = 0

    /// Checks and opens the state directory: created 0700 when missing; a symlink, a
    /// directory of another uid or one writable by group/others is refused
    /// (`StateStoreError.untrustedDirectory`); so is a table file that is empty,
    /// truncated, foreign, of another format version, with a bad checksum or too large
    /// (`.corrupt`). Callers exit with `LorikeetExitCode.cannotBoot` on any of these.
    ///
    /// Sets the process umask to 077 for the supervisor's whole life (umask is
    /// process-wide; the children inherit it): every file and socket it or its children
    /// create is private from creation, with no chmod afterwards.
    package init(configuration: SupervisorConfiguration, logger: Logger) throws {
        umask(0o077)
        self.configuration = configuration
        self.logger = logger
        self.store = try StateStore(directory: configuration.stateDirectory)
        let (stored, format) = try self.store.loadWithFormat()
        // Fleet mode: etcd holds the table; the node starts empty and converges to it.
        let table = configuration.cluster == nil ? stored : AdapterTable()
        if format == .legacy {
            logger.notice(
                "the adapter table file has the legacy format (no header); it is rewritten in format \(TableFile.formatVersion) on the next change",
                metadata: ["path": "\(self.store.path)", "table.version": "\(table.version)", "adapters": "\(table.adapters.count)"])
        }
        if table.adapters.count > configuration.maxAdapters {
            logger.warning(
                "the committed table holds more adapters than --max-adapters; loads are refused until it shrinks",
                metadata: ["adapters": "\(table.adapters.count)", "max_adapters": "\(configuration.maxAdapters)"])
        }
        self.metricsDirectory = MetricsDirectory.prepare(stateDirectory: configuration.stateDirectory, logger: logger)
        self.audit = try AuditLog(path: configuration.auditLogPath ?? configuration.stateDirectory + "/audit.log")
        self.notifier = SystemdNotifier(environment: configuration.environment, logger: logger)
        self.machine = SupervisorStateMachine(configuration: .init(configuration), table: table, fleet: configuration.cluster != nil)
        self.startedAtMs = self.loop.nowMs
    }

    /// Runs until the server stops; returns the exit code and reason.
    package func run() throws -> SupervisorExit {
        signal(SIGPIPE, SIG_IGN)
        self.logger.info(
            "starting supervisor",
            metadata: [
                "workers": "\(self.configuration.workers)", "state.dir": "\(self.configuration.stateDirectory)",
                "table.version": "\(self.table.version)", "adapters": "\(self.table.adapters.count)",
            ])
        var port = self.configuration.port
        for index in 0..<self.configuration.workers {
            let fd = try SupervisorSockets.listener(host: self.configuration.host, port: port)
            if port == 0 { port = SupervisorSockets.boundPort(fd) }
            self.slotHandles[index] = SlotHandles(index: index, listenerFD: fd)
            self.machine.registerSlot(index)
        }
        self.boundPort = port
        self.logger.info("listening on \(self.configuration.host):\(port) with \(self.configuration.workers) worker slots")
        self.installSignals()
        try self.startAdminServer()
        if self.configuration.spawnEngine {
            self.startEngine()
        } else {
            self.machine.useUpstreamEngine()
        }
        if self.configuration.cluster != nil {
            // Fleet mode: the workers start once the agent reports the node caught up.
            self.startClusterAgent()
        } else {
            for slot in self.machine.slots { self.spawnWorker(in: slot.index) }
        }
        let heartbeat = UVTimer(loop: self.loop)
        self.loop.updateTime()  // spawning took time: the first tick is not late
        self.lastHeartbeatTickMs = self.nowMs
        heartbeat.start(timeoutMs: self.configuration.heartbeatIntervalMs, repeatMs: self.configuration.heartbeatIntervalMs) {
            [unowned self] in self.heartbeatTick()
        }
        self.heartbeatTimer = heartbeat
        if let notifier = self.notifier {
            notifier.status("starting \(self.machine.slots.count) workers")
            if notifier.watchdogIntervalMs > 0 {
                let watchdog = UVTimer(loop: self.loop)
                watchdog.start(timeoutMs: notifier.watchdogIntervalMs, repeatMs: notifier.watchdogIntervalMs) { [unowned self] in
                    // The loop turning is what the watchdog checks; a stuck loop stops these.
                    if self.machine.isRunning { self.notifier?.send(["WATCHDOG=1"], droppable: true) }
                }
                self.watchdogTimer = watchdog
            }
        }
        self.loop.run()
        self.loop.closeAll()
        for handles in self.slotHandles.values { handles.releaseListener() }
        return self.exitResult ?? SupervisorExit(code: .ok, message: "stopped")
    }

    var nowMs: UInt64 { self.loop.nowMs }

    /// How long after `due` (loop time) it is now; 0 before. A timer this late means the
    /// supervisor did not run meanwhile (`SupervisorStateMachine.stallToleranceMs`).
    func msLate(_ due: UInt64) -> UInt64 { self.nowMs > due ? self.nowMs - due : 0 }

    /// The committed adapter table (the state machine's).
    var table: AdapterTable { self.machine.table }

    /// Every live worker's process, slot by slot (current, then replacement).
    var allWorkers: [WorkerProcess] {
        self.machine.allWorkers.compactMap { self.workers[$0] }
    }

    /// The leader's process, if there is a leader.
    var leader: WorkerProcess? { self.machine.leader.flatMap { self.workers[$0] } }

    /// The current leader epoch.
    var epoch: UInt64 { self.machine.epoch }

    /// The engine's state as `status` reports it.
    var engineState: String { self.machine.engine.phase.name }

    /// Slots with their processes, in order (for status replies and rolling restarts).
    var slots: [WorkerSlot] {
        self.machine.slots.map { slot in
            WorkerSlot(
                index: slot.index, state: slot.state, current: slot.current.flatMap(self.view),
                replacement: slot.replacement.flatMap(self.view), restarts: slot.restarts, lastExit: slot.lastExit)
        }
    }

    func view(_ id: WorkerID) -> WorkerView? {
        guard let worker = self.machine.workers[id], let process = self.workers[id] else { return nil }
        return WorkerView(
            id: id, slot: worker.slot, pid: process.pid, state: worker.state, role: worker.role, disposition: worker.disposition,
            lastHeartbeatMs: worker.lastHeartbeatMs, requestsServed: process.requestsServed)
    }

    /// The worker said Hello (it has a role and a snapshot).
    func hasHello(_ worker: WorkerProcess) -> Bool { self.machine.workers[worker.id]?.hasHello ?? false }

    // MARK: - Engine

    func startEngine() {
        self.perform(self.machine.startEngine(now: self.nowMs))
    }

    func spawnEngine() {
        let arguments =
            [self.configuration.executable, "engine"] + self.configuration.engineArguments
            + ["--socket", self.configuration.engineSocketPath, "--parent-pid", "\(getpid())"]
        do {
            let environment = ChildEnvironment.make(removing: self.configuration.engineEnvironmentRemovals)
            self.engine = try UVProcess.spawn(loop: self.loop, arguments: arguments, environment: environment) { [unowned self] exit in
                self.engine = nil
                self.perform(self.machine.engineExited(exit, now: self.nowMs))
            }
            self.machine.engineSpawned()
            self.logger.info("engine started", metadata: ["pid": "\(self.engine?.pid ?? 0)"])
        } catch {
            self.fatal(code: .cannotBoot, "cannot start the engine: \(error)")
        }
    }

    // MARK: - Workers

    /// Starts a worker in slot `index` if the state machine allows it; returns its process.
    @discardableResult
    func spawnWorker(in index: Int, asReplacement: Bool = false) -> WorkerProcess? {
        let actions = self.machine.spawn(inSlot: index, asReplacement: asReplacement, now: self.nowMs)
        self.perform(actions)
        for case .spawnWorker(let id, _) in actions { return self.workers[id] }
        return nil
    }

    /// Spawns the process for `id` in slot `index` (the `spawnWorker` action).
    func launchWorker(_ id: WorkerID, in index: Int) {
        guard let listenerFD = self.slotHandles[index]?.listenerFD else {
            return self.perform(self.machine.spawnFailed(id, now: self.nowMs))
        }
        let pair: (Int32, Int32)
        do {
            pair = try SupervisorSockets.controlPair()
        } catch {
            self.logger.error("cannot create a control channel: \(error)")
            return self.perform(self.machine.spawnFailed(id, now: self.nowMs))
        }
        let worker = WorkerProcess(id: id, slot: index)
        let arguments =
            [
                self.configuration.executable, "worker", "--listen-fd", "3", "--control-fd", "4", "--slot", "\(index)",
                "--engine-socket", self.configuration.engineSocketPath, "--parent-pid", "\(getpid())",
            ]
            + self.configuration.workerArguments
        do {
            var settings = self.configuration.workerEnvironment
            if let metrics = self.metricsDirectory { settings[MetricsDirectory.environmentName] = metrics }
            let environment = ChildEnvironment.make(setting: settings)
            worker.process = try UVProcess.spawn(
                loop: self.loop, arguments: arguments, environment: environment, extraFDs: [listenerFD, pair.1]
            ) {
                [unowned self, unowned worker] exit in self.workerExited(worker, exit)
            }
        } catch {
            close(pair.0)
            close(pair.1)
            self.logger.error("cannot spawn worker for slot \(index): \(error)")
            return self.perform(self.machine.spawnFailed(id, now: self.nowMs))
        }
        close(pair.1)
        self.workers[id] = worker
        do {
            let pipe = try UVPipe(loop: self.loop, fd: pair.0)
            worker.control = pipe
            pipe.startReading(
                onData: { [unowned self, unowned worker] bytes in self.controlBytes(bytes, from: worker) },
                onEnd: { [unowned self, unowned worker] error in self.controlClosed(worker, error) })
        } catch {
            close(pair.0)
            self.perform(self.machine.controlClosed(id, reason: "cannot open its control channel: \(error)"))
            worker.process?.kill(SIGKILL)
        }
        self.logger.info("worker started", metadata: ["worker.slot": "\(index)", "pid": "\(worker.pid)"])
    }

    func workerExited(_ worker: WorkerProcess, _ exit: ProcessExit) {
        worker.process = nil
        worker.killTimer?.close()
        worker.killTimer = nil
        worker.control?.close()
        worker.control = nil
        self.perform(self.machine.childExited(worker.id, exit, now: self.nowMs))
        self.workers[worker.id] = nil
    }

    /// Starts (or restarts) slot `index`'s restart timer.
    func startRestartTimer(_ index: Int, delayMs: UInt64) {
        guard let handles = self.slotHandles[index] else { return }
        handles.restartTimer?.close()
        let timer = UVTimer(loop: self.loop)
        handles.restartTimer = timer
        timer.start(timeoutMs: delayMs) { [unowned self, unowned handles, unowned timer] in
            timer.close()
            if handles.restartTimer === timer { handles.restartTimer = nil }
            self.perform(self.machine.restartTimerFired(slot: index, now: self.nowMs))
        }
    }

    /// SIGABRT now (its backtrace in the log shows where it hung), SIGKILL if it is still
    /// there in 2 s, together with the processes it started (the runtime's backtracer,
    /// still running then, would be left behind).
    func terminate(_ worker: WorkerProcess, reason: String) {
        guard worker.killTimer == nil, let process = worker.process else { return }
        self.logger.error("killing worker: \(reason)", metadata: ["worker.slot": "\(worker.slot)", "pid": "\(worker.pid)"])
        process.kill(SIGABRT)
        let timer = UVTimer(loop: self.loop)
        worker.killTimer = timer
        timer.start(timeoutMs: 2000) { [weak worker] in
            guard let process = worker?.process else { return }
            for child in ProcessTable.children(of: process.pid) { kill(child, SIGKILL) }
            process.kill(SIGKILL)
        }
    }

    func heartbeatTick() {
        let due = self.lastHeartbeatTickMs + self.configuration.heartbeatIntervalMs
        self.lastHeartbeatTickMs = self.nowMs
        self.perform(self.machine.heartbeatTimerFired(now: self.nowMs, lateByMs: self.msLate(due)))
        self.notifySystemd()
    }

    /// systemd: `READY=1` the first time every slot serves, then `STATUS=` on changes.
    func notifySystemd() {
        // What waited for systemd goes out first, while stopping too (STOPPING=1 may be among it).
        self.notifier?.flush()
        guard let notifier = self.notifier, self.machine.isRunning else { return }
        let active = self.slots.filter { !$0.removing }
        let ready = active.filter { $0.current?.state == .ready }.count
        let leader = self.leader.map { "leader slot \($0.slot)" } ?? "no leader"
        let summary =
            "\(ready)/\(active.count) workers ready, \(leader), epoch \(self.epoch), table version \(self.table.version), "
            + "\(self.table.adapters.count) adapters, engine \(self.engineState)"
        if !self.announcedReady && ready == active.count && ready > 0 {
            self.announcedReady = true
            notifier.send(["READY=1", "STATUS=" + summary, "MAINPID=\(getpid())"])
            self.logger.info("notified systemd: ready")
        }
        notifier.status(summary)
    }

    // MARK: - Stopping

    typealias StopMode = SupervisorStateMachine.StopMode

    func fatal(code: LorikeetExitCode, _ message: String) {
        self.logger.critical("\(message)")
        if self.exitResult == nil { self.exitResult = SupervisorExit(code: code, message: message) }
        self.stop(.fast)
    }

    func stop(_ mode: StopMode) {
        self.perform(self.machine.stop(mode))
    }

    /// The `beginStop` action: tell systemd, log.
    func beginStop(_ mode: StopMode) {
        self.notifier?.send(["STOPPING=1", "STATUS=stopping (\(mode == .fast ? "fast" : "graceful drain"))"])
        switch mode {
        case .graceful: self.logger.info("draining workers (grace \(self.configuration.drainGraceMs) ms)")
        case .fast: self.logger.info("stopping fast")
        }
    }

    /// The `shutdown` action for one worker.
    func shutdown(_ worker: WorkerProcess, _ mode: StopMode) {
        switch mode {
        case .graceful:
            worker.send(.drain(Drain(graceMs: UInt32(clamping: self.configuration.drainGraceMs))))
        case .fast:
            worker.send(.shutdown(Shutdown(fast: true)))
            worker.process?.kill(SIGTERM)
        }
    }

    func killEverything(_ signal: Int32) {
        for worker in self.allWorkers { worker.process?.kill(signal) }
        self.engine?.kill(signal)
        self.clusterAgent?.process?.kill(signal)
    }

    /// The `leaveLoop` action: every process is gone.
    func leaveLoop() {
        self.heartbeatTimer?.close()
        self.watchdogTimer?.close()
        self.stopTimer?.close()
        self.adminServer?.close()
        UnixSocket.unlinkOwnSocket(path: self.adminSocketPath)
        for signal in self.signals { signal.close() }
        for handles in self.slotHandles.values { handles.restartTimer?.close() }
        self.logger.info("all processes stopped")
        self.loop.stop()
    }

    // MARK: - Scaling

    func addSlot() {
        self.perform(self.machine.scaleUp())
    }

    /// The `openSlot` action: a listener for a new slot on the server's port.
    func openSlot(_ index: Int) {
        do {
            let fd = try SupervisorSockets.listener(host: self.configuration.host, port: self.boundPort)
            self.slotHandles[index] = SlotHandles(index: index, listenerFD: fd)
            self.perform(self.machine.slotOpened(index, now: self.nowMs))
        } catch {
            self.machine.slotOpenFailed(index)
            self.logger.error("cannot add a worker slot: \(error)")
        }
    }

    func removeLastSlot() {
        self.perform(self.machine.scaleDown())
    }

    /// Sends Drain to `worker` and arms its kill timer (the `drain` action).
    func sendDrain(_ worker: WorkerProcess, listenerRetired: Bool) {
        worker.send(
            .drain(Drain(graceMs: UInt32(clamping: self.configuration.drainGraceMs), listenerRetired: listenerRetired)))
        worker.killTimer?.close()
        self.armDrainKill(worker, delayMs: self.configuration.drainGraceMs + 1000, waitedAfterStall: false)
    }

    /// SIGKILL for a draining worker still there after `delayMs`; a timer the supervisor
    /// ran late (it was paused) gives the worker its whole grace once more, once.
    private func armDrainKill(_ worker: WorkerProcess, delayMs: UInt64, waitedAfterStall: Bool) {
        let timer = UVTimer(loop: self.loop)
        worker.killTimer = timer
        let due = self.nowMs + delayMs
        timer.start(timeoutMs: delayMs) { [weak self, weak worker] in
            guard let self, let worker, worker.process != nil else { return }
            var waited = waitedAfterStall
            let late = self.msLate(due)
            if SupervisorStateMachine.waitsAgain(lateByMs: late, alreadyWaited: &waited) {
                self.perform([SupervisorStateMachine.stallLog(late, "the draining worker gets another \(delayMs) ms")])
                worker.killTimer?.close()
                self.armDrainKill(worker, delayMs: delayMs, waitedAfterStall: waited)
                return
            }
            worker.process?.kill(SIGKILL)
        }
    }
}
