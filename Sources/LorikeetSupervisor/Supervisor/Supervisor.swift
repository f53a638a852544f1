import Glibc
public import Logging
import LorikeetProto

/// Why the supervisor stopped, as a process exit code and a message.
public struct SupervisorExit: Sendable {
    public let code: Int32
    public let message: String
}

/// The libuv supervisor: spawns the engine and the workers, restarts them, names the
/// leader (fenced by an epoch), and owns the committed adapter table.
///
/// Single-threaded: everything runs on the libuv loop of the calling thread.
public final class Supervisor {
    let configuration: SupervisorConfiguration
    let logger: Logger
    let loop = UVLoop()
    let store: StateStore
    var table: AdapterTable
    var slots: [WorkerSlot] = []
    var engine: UVProcess?
    var engineStartedAtMs: UInt64 = 0
    var engineRestarts: UInt32 = 0
    var engineState = "starting"
    var epoch: UInt64 = 0
    var leader: WorkerProcess?
    var generation = 0
    var nextCallID: UInt64 = 1
    var pendingRoutes: [UInt64: RoutedMutation] = [:]
    var pendingCommit: PendingCommit?
    var heartbeatSeq: UInt64 = 0
    var stopping: StopMode?
    var exitResult: SupervisorExit?
    var rolling: RollingRestart?
    var signals: [UVSignal] = []
    var heartbeatTimer: UVTimer?
    var watchdogTimer: UVTimer?
    var adminServer: UVPipeServer?
    var stopTimer: UVTimer?
    let startedAtMs: UInt64
    /// `<state-dir>/audit.log`: one JSON line per adapter change, failures included.
    let audit: AuditLog
    /// `sd_notify` when started by systemd (`NOTIFY_SOCKET`).
    let notifier: SystemdNotifier?
    var announcedReady = false

    /// Port actually bound (useful with port 0).
    public private(set) var boundPort: UInt16 = 0

    /// Checks and opens the state directory: created 0700 when missing; a symlink, a
    /// directory of another uid or one writable by group/others is refused
    /// (`StateStoreError.untrustedDirectory`); so is a table file that is empty,
    /// truncated, foreign, of another format version, with a bad checksum or too large
    /// (`.corrupt`). Callers exit with `LorikeetExitCode.cannotBoot` on any of these.
    ///
    /// Sets the process umask to 077 for the supervisor's whole life (umask is
    /// process-wide; the children inherit it): every file and socket it or its children
    /// create is private from creation, with no chmod afterwards.
    public init(configuration: SupervisorConfiguration, logger: Logger) throws {
        umask(0o077)
        self.configuration = configuration
        self.logger = logger
        self.store = try StateStore(directory: configuration.stateDirectory)
        let (table, format) = try self.store.loadWithFormat()
        self.table = table
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
        self.audit = try AuditLog(path: configuration.auditLogPath ?? configuration.stateDirectory + "/audit.log")
        self.notifier = SystemdNotifier(environment: configuration.environment, logger: logger)
        self.startedAtMs = self.loop.nowMs
    }

    /// Runs until the server stops; returns the exit code and reason.
    public func run() throws -> SupervisorExit {
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
            self.slots.append(WorkerSlot(index: index, listenerFD: fd))
        }
        self.boundPort = port
        self.logger.info("listening on \(self.configuration.host):\(port) with \(self.configuration.workers) worker slots")
        self.installSignals()
        try self.startAdminServer()
        if self.configuration.spawnEngine {
            self.startEngine()
        } else {
            self.engineState = "upstream"
        }
        for slot in self.slots { self.spawnWorker(in: slot) }
        let heartbeat = UVTimer(loop: self.loop)
        heartbeat.start(timeoutMs: self.configuration.heartbeatIntervalMs, repeatMs: self.configuration.heartbeatIntervalMs) {
            [unowned self] in self.heartbeatTick()
        }
        self.heartbeatTimer = heartbeat
        if let notifier = self.notifier {
            notifier.status("starting \(self.slots.count) workers")
            if notifier.watchdogIntervalMs > 0 {
                let watchdog = UVTimer(loop: self.loop)
                watchdog.start(timeoutMs: notifier.watchdogIntervalMs, repeatMs: notifier.watchdogIntervalMs) { [unowned self] in
                    // The loop turning is what the watchdog checks; a stuck loop stops these.
                    if self.stopping == nil { self.notifier?.send(["WATCHDOG=1"]) }
                }
                self.watchdogTimer = watchdog
            }
        }
        self.loop.run()
        self.loop.closeAll()
        for slot in self.slots { slot.releaseListener() }
        return self.exitResult ?? SupervisorExit(code: 0, message: "stopped")
    }

    var nowMs: UInt64 { self.loop.nowMs }

    var allWorkers: [WorkerProcess] {
        self.slots.flatMap { [$0.current, $0.replacement].compactMap { $0 } }
    }

    // MARK: - Engine

    func startEngine() {
        guard self.stopping == nil else { return }
        let arguments =
            [self.configuration.executable, "engine"] + self.configuration.engineArguments
            + ["--socket", self.configuration.engineSocketPath, "--parent-pid", "\(getpid())"]
        do {
            self.engineStartedAtMs = self.nowMs
            let environment = ChildEnvironment.make(removing: self.configuration.engineEnvironmentRemovals)
            self.engine = try UVProcess.spawn(loop: self.loop, arguments: arguments, environment: environment) { [unowned self] exit in
                self.engineExited(exit)
            }
            self.engineState = "running"
            self.logger.info("engine started", metadata: ["pid": "\(self.engine?.pid ?? 0)"])
        } catch {
            self.fatal(code: LorikeetExitCode.cannotBoot, "cannot start the engine: \(error)")
        }
    }

    func engineExited(_ exit: ProcessExit) {
        self.engine = nil
        self.engineState = "down"
        if self.stopping != nil {
            self.checkStopped()
            return
        }
        if exit.status == Int64(LorikeetExitCode.cannotBoot) {
            self.fatal(code: LorikeetExitCode.cannotBoot, "the engine cannot boot (\(exit)); see its message above")
            return
        }
        self.engineRestarts += 1
        let uptime = self.nowMs - self.engineStartedAtMs
        let delay = uptime > self.configuration.stableUptimeMs ? self.configuration.initialBackoffMs : self.backoff(self.engineRestarts)
        self.logger.error("engine \(exit); restarting in \(delay) ms", metadata: ["restarts": "\(self.engineRestarts)"])
        UVTimer.after(self.loop, ms: delay) { [unowned self] in self.startEngine() }
    }

    func backoff(_ attempt: UInt32) -> UInt64 {
        let shift = min(attempt, 20)
        return min(self.configuration.initialBackoffMs << UInt64(shift), self.configuration.maximumBackoffMs)
    }

    // MARK: - Workers

    @discardableResult
    func spawnWorker(in slot: WorkerSlot, asReplacement: Bool = false) -> WorkerProcess? {
        guard self.stopping == nil, !slot.tripped, !slot.removing, let listenerFD = slot.listenerFD else { return nil }
        let pair: (Int32, Int32)
        do {
            pair = try SupervisorSockets.controlPair()
        } catch {
            self.logger.error("cannot create a control channel: \(error)")
            return nil
        }
        self.generation += 1
        let worker = WorkerProcess(slot: slot.index, generation: self.generation, nowMs: self.nowMs)
        let arguments =
            [self.configuration.executable, "worker", "--listen-fd", "3", "--control-fd", "4", "--slot", "\(slot.index)",
             "--engine-socket", self.configuration.engineSocketPath, "--parent-pid", "\(getpid())"]
            + self.configuration.workerArguments
        do {
            let environment = ChildEnvironment.make(setting: self.configuration.workerEnvironment)
            worker.process = try UVProcess.spawn(
                loop: self.loop, arguments: arguments, environment: environment, extraFDs: [listenerFD, pair.1]
            ) {
                [unowned self, unowned worker] exit in self.workerExited(worker, exit)
            }
        } catch {
            close(pair.0)
            close(pair.1)
            self.logger.error("cannot spawn worker for slot \(slot.index): \(error)")
            self.scheduleRestart(slot, reason: "spawn failed")
            return nil
        }
        close(pair.1)
        do {
            let pipe = try UVPipe(loop: self.loop, fd: pair.0)
            worker.control = pipe
            pipe.startReading(
                onData: { [unowned self, unowned worker] bytes in self.controlBytes(bytes, from: worker) },
                onEnd: { [unowned self, unowned worker] error in self.controlClosed(worker, error) })
        } catch {
            close(pair.0)
            worker.process?.kill(SIGKILL)
        }
        if asReplacement { slot.replacement = worker } else { slot.current = worker }
        self.logger.info("worker started", metadata: ["worker.slot": "\(slot.index)", "pid": "\(worker.pid)"])
        return worker
    }

    func workerExited(_ worker: WorkerProcess, _ exit: ProcessExit) {
        let pid = worker.pid
        worker.process = nil
        worker.killTimer?.close()
        worker.killTimer = nil
        worker.control?.close()
        worker.control = nil
        let slot = self.slots.first { $0.index == worker.slot }
        let wasLeader = self.leader === worker
        let uptime = self.nowMs - worker.startedAtMs
        self.logger.log(
            level: worker.retiring || self.stopping != nil ? .info : .error,
            "worker \(exit)",
            metadata: ["worker.slot": "\(worker.slot)", "pid": "\(pid)", "uptime.ms": "\(uptime)"])
        if let slot {
            if slot.current === worker {
                slot.current = nil
                // A retired process exited before handing over: its replacement takes the slot.
                if let replacement = slot.replacement {
                    slot.current = replacement
                    slot.replacement = nil
                    if replacement.state == .prepared { self.startServing(replacement) }
                }
            }
            if slot.replacement === worker { slot.replacement = nil }
            slot.lastExit = exit.description
        }
        self.commitParticipantGone(worker)
        if wasLeader {
            self.leader = nil
            self.leaderGone(worker)
        }
        self.rollingWorkerExited(worker)
        if self.stopping != nil {
            self.checkStopped()
            return
        }
        guard let slot else { return }
        if slot.removing {
            if slot.current == nil && slot.replacement == nil { self.removeSlot(slot) }
            return
        }
        if worker.retiring { return }
        if exit.status == Int64(LorikeetExitCode.cannotBoot) && exit.signal == 0 {
            self.fatal(
                code: LorikeetExitCode.cannotBoot,
                "worker slot \(slot.index) cannot boot (exit code \(LorikeetExitCode.cannotBoot)); see its message above")
            return
        }
        slot.restarts += 1
        if worker.becameReady { slot.trips = 0 }
        if uptime < self.configuration.fastFailureMs {
            slot.consecutiveFastFailures += 1
            if Self.isBootFailure(worker, uptimeMs: uptime, fastFailureMs: self.configuration.fastFailureMs) {
                slot.fastFailureTimes.append(self.nowMs)
                slot.fastFailureTimes.removeAll { self.nowMs - $0 > self.configuration.crashLoopWindowMs }
                // A slot tried again after a pause that fails at boot once more pauses again at once.
                if slot.fastFailureTimes.count >= self.configuration.crashLoopFailures || slot.trips > 0 {
                    self.tripBreaker(slot, exit: exit)
                    return
                }
            } else {
                self.logger.notice(
                    "worker exit does not count toward the crash-loop breaker (\(worker.killedForProtocol ? "killed for a protocol error" : "it had been ready"))",
                    metadata: ["worker.slot": "\(worker.slot)", "pid": "\(pid)"])
            }
        } else {
            slot.trips = 0
            if uptime > self.configuration.stableUptimeMs { slot.consecutiveFastFailures = 0 }
        }
        self.scheduleRestart(slot, reason: exit.description)
    }

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
    static func isBootFailure(_ worker: WorkerProcess, uptimeMs: UInt64, fastFailureMs: UInt64) -> Bool {
        uptimeMs < fastFailureMs && !worker.becameReady && !worker.killedForProtocol
    }

    /// Opens the crash-loop breaker of `slot`: no restarts for a cool-down (doubling with
    /// each consecutive trip), then one worker is tried again. When every slot is paused
    /// nothing serves, and the server stops with `LorikeetExitCode.crashLoop`.
    func tripBreaker(_ slot: WorkerSlot, exit: ProcessExit) {
        slot.tripped = true
        slot.trips += 1
        var cooldown = self.configuration.crashLoopCooldownMs
        for _ in 1..<slot.trips where cooldown < self.configuration.crashLoopMaximumCooldownMs { cooldown *= 2 }
        cooldown = min(cooldown, self.configuration.crashLoopMaximumCooldownMs)
        let window = self.configuration.crashLoopWindowMs / 1000
        self.logger.critical(
            "worker slot \(slot.index) is crash-looping (\(slot.fastFailureTimes.count) fast failures within \(window) s; last: \(exit)); pausing the slot for \(cooldown / 1000) s"
        )
        if self.slots.allSatisfy({ $0.tripped || $0.removing }) {
            self.fatal(code: LorikeetExitCode.crashLoop, "every worker slot is crash-looping; stopping (last worker \(exit))")
            return
        }
        self.respawn(slot, afterMs: cooldown) { [unowned self, unowned slot] in
            slot.tripped = false
            slot.fastFailureTimes.removeAll()
            self.logger.notice("worker slot \(slot.index): crash-loop pause over; trying one worker")
        }
    }

    func scheduleRestart(_ slot: WorkerSlot, reason: String) {
        let delay = slot.consecutiveFastFailures == 0 ? 0 : self.backoff(UInt32(slot.consecutiveFastFailures - 1))
        self.respawn(slot, afterMs: delay)
    }

    /// Starts a worker in `slot` after `delay` ms (replacing any pending restart), running
    /// `beforeSpawn` first.
    private func respawn(_ slot: WorkerSlot, afterMs delay: UInt64, beforeSpawn: @escaping () -> Void = {}) {
        slot.restartTimer?.close()
        let timer = UVTimer(loop: self.loop)
        slot.restartTimer = timer
        timer.start(timeoutMs: delay) { [unowned self, unowned slot, unowned timer] in
            timer.close()
            if slot.restartTimer === timer { slot.restartTimer = nil }
            beforeSpawn()
            if slot.current == nil { self.spawnWorker(in: slot) }
        }
    }

    /// SIGABRT now (a core shows where it hung), SIGKILL if it is still there in 2 s.
    func terminate(_ worker: WorkerProcess, reason: String) {
        guard worker.killTimer == nil, let process = worker.process else { return }
        self.logger.error("killing worker: \(reason)", metadata: ["worker.slot": "\(worker.slot)", "pid": "\(worker.pid)"])
        process.kill(SIGABRT)
        let timer = UVTimer(loop: self.loop)
        worker.killTimer = timer
        timer.start(timeoutMs: 2000) { [weak worker] in worker?.process?.kill(SIGKILL) }
    }

    func heartbeatTick() {
        self.heartbeatSeq += 1
        for worker in self.allWorkers where worker.process != nil {
            if self.nowMs - worker.lastHeartbeatMs > self.configuration.heartbeatTimeoutMs {
                self.terminate(worker, reason: "no heartbeat for \(self.nowMs - worker.lastHeartbeatMs) ms")
                continue
            }
            if worker.hasHello { worker.send(.heartbeat(Heartbeat(seq: self.heartbeatSeq))) }
        }
        self.notifySystemd()
    }

    /// systemd: `READY=1` the first time every slot serves, then `STATUS=` on changes.
    func notifySystemd() {
        guard let notifier = self.notifier, self.stopping == nil else { return }
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

    enum StopMode { case graceful, fast }

    func fatal(code: Int32, _ message: String) {
        self.logger.critical("\(message)")
        if self.exitResult == nil { self.exitResult = SupervisorExit(code: code, message: message) }
        self.stop(.fast)
    }

    func stop(_ mode: StopMode) {
        if self.stopping == .fast { return }
        if self.stopping == .graceful && mode == .graceful {
            self.logger.warning("second SIGTERM: stopping fast")
            return self.stop(.fast)
        }
        self.stopping = mode
        self.notifier?.send(["STOPPING=1", "STATUS=stopping (\(mode == .fast ? "fast" : "graceful drain"))"])
        self.rolling = nil
        for slot in self.slots {
            slot.restartTimer?.close()
            slot.restartTimer = nil
        }
        self.failPendingMutations(Status(code: .unavailable, message: "the server is shutting down"))
        switch mode {
        case .graceful:
            self.logger.info("draining workers (grace \(self.configuration.drainGraceMs) ms)")
            for worker in self.allWorkers {
                worker.state = .draining
                worker.send(.drain(Drain(graceMs: UInt32(clamping: self.configuration.drainGraceMs))))
            }
            self.stopTimer?.close()
            let timer = UVTimer(loop: self.loop)
            self.stopTimer = timer
            timer.start(timeoutMs: self.configuration.drainGraceMs + 1000) { [unowned self] in
                self.logger.warning("grace period over; killing what is left")
                self.killEverything(SIGKILL)
            }
        case .fast:
            self.logger.info("stopping fast")
            for worker in self.allWorkers {
                worker.send(.shutdown(Shutdown(fast: true)))
                worker.process?.kill(SIGTERM)
            }
            self.stopTimer?.close()
            let timer = UVTimer(loop: self.loop)
            self.stopTimer = timer
            timer.start(timeoutMs: 2000) { [unowned self] in self.killEverything(SIGKILL) }
        }
        self.checkStopped()
    }

    func killEverything(_ signal: Int32) {
        for worker in self.allWorkers { worker.process?.kill(signal) }
        self.engine?.kill(signal)
    }

    /// Once every worker is gone, stop the engine; once it is gone too, leave the loop.
    func checkStopped() {
        guard self.stopping != nil else { return }
        if self.allWorkers.contains(where: { $0.process != nil }) { return }
        if let engine = self.engine {
            engine.kill(SIGTERM)
            return
        }
        self.heartbeatTimer?.close()
        self.watchdogTimer?.close()
        self.stopTimer?.close()
        self.adminServer?.close()
        UnixSocket.unlinkOwnSocket(path: self.adminSocketPath)
        for signal in self.signals { signal.close() }
        for slot in self.slots { slot.restartTimer?.close() }
        self.logger.info("all processes stopped")
        self.loop.stop()
    }

    // MARK: - Scaling

    func addSlot() {
        guard self.stopping == nil else { return }
        let index = (self.slots.map(\.index).max() ?? -1) + 1
        do {
            let fd = try SupervisorSockets.listener(host: self.configuration.host, port: self.boundPort)
            let slot = WorkerSlot(index: index, listenerFD: fd)
            self.slots.append(slot)
            self.logger.info("scaling up: slot \(index) added (\(self.slots.count) slots)")
            self.spawnWorker(in: slot)
        } catch {
            self.logger.error("cannot add a worker slot: \(error)")
        }
    }

    func removeLastSlot() {
        let active = self.slots.filter { !$0.removing }
        guard active.count > 1, let slot = active.last else {
            self.logger.warning("not scaling down: at least one worker must remain")
            return
        }
        slot.removing = true
        slot.restartTimer?.close()
        // No process takes this listener over: release our copy now, so the socket leaves
        // the SO_REUSEPORT group as soon as the draining worker closes its own, instead of
        // queueing connections for the whole drain only to reset them. (Connections that
        // land in its backlog meanwhile are reset unless net.ipv4.tcp_migrate_req = 1.)
        slot.releaseListener()
        self.logger.info("scaling down: draining slot \(slot.index)")
        let workers = [slot.current, slot.replacement].compactMap { $0 }
        if workers.isEmpty { self.removeSlot(slot) }
        for worker in workers { self.drain(worker, listenerRetired: true) }
    }

    func removeSlot(_ slot: WorkerSlot) {
        slot.releaseListener()
        self.slots.removeAll { $0 === slot }
        self.logger.info("slot \(slot.index) removed (\(self.slots.count) slots)")
    }

    /// Drains `worker`; `listenerRetired` when no successor inherits its slot's listener.
    func drain(_ worker: WorkerProcess, listenerRetired: Bool = false) {
        worker.retiring = true
        worker.state = .draining
        worker.send(
            .drain(Drain(graceMs: UInt32(clamping: self.configuration.drainGraceMs), listenerRetired: listenerRetired)))
        let timer = UVTimer(loop: self.loop)
        worker.killTimer?.close()
        worker.killTimer = timer
        timer.start(timeoutMs: self.configuration.drainGraceMs + 1000) { [weak worker] in worker?.process?.kill(SIGKILL) }
    }
}
