import Glibc
import Logging
import LorikeetProto

/// Progress of a rolling restart (SIGHUP): one slot at a time, each replacement ready
/// before the old process drains.
struct RollingRestart {
    var remaining: [Int]
    var currentSlot: Int?
    var timer: UVTimer?
}

extension Supervisor {
    func installSignals() {
        let handlers: [(Int32, (Supervisor) -> Void)] = [
            (SIGTERM, { $0.stop(.graceful) }),
            (SIGINT, { $0.stop(.fast) }),
            (SIGQUIT, { $0.stop(.fast) }),
            (SIGHUP, { $0.startRollingRestart() }),
            (SIGTTIN, { $0.addSlot() }),
            (SIGTTOU, { $0.removeLastSlot() }),
            (SIGUSR1, { $0.reopenAuditLog() }),
        ]
        for (number, handler) in handlers {
            let watcher = UVSignal(loop: self.loop)
            watcher.start(signal: number) { [unowned self] received in
                self.logger.notice("received signal \(received)")
                handler(self)
            }
            self.signals.append(watcher)
        }
    }

    /// Replaces every worker, one slot at a time.
    func startRollingRestart() {
        guard self.machine.isRunning else { return }
        if self.rolling != nil {
            self.logger.warning("a rolling restart is already in progress")
            return
        }
        self.logger.notice("rolling restart of \(self.slots.count) slots")
        self.rolling = RollingRestart(remaining: self.slots.filter { !$0.removing && !$0.tripped }.map(\.index))
        self.rollingStep()
    }

    /// Advances the roll: called when a worker becomes ready and when one exits.
    func rollingStep() {
        guard var rolling = self.rolling, self.machine.isRunning else { return }
        if let current = rolling.currentSlot {
            guard let slot = self.slots.first(where: { $0.index == current }) else {
                rolling.currentSlot = nil
                self.rolling = rolling
                return self.rollingStep()
            }
            // Done with this slot once the replacement serves.
            guard slot.current?.state == .ready, slot.current?.retiring == false else { return }
            rolling.timer?.close()
            rolling.timer = nil
            rolling.currentSlot = nil
            self.rolling = rolling
        }
        guard !rolling.remaining.isEmpty else {
            self.logger.notice("rolling restart complete")
            self.rolling = nil
            return
        }
        let index = rolling.remaining.removeFirst()
        guard let slot = self.slots.first(where: { $0.index == index }), slot.current != nil else {
            self.rolling = rolling
            return self.rollingStep()
        }
        rolling.currentSlot = index
        let timer = UVTimer(loop: self.loop)
        rolling.timer = timer
        self.rolling = rolling
        guard let replacement = self.spawnWorker(in: slot.index, asReplacement: true) else {
            self.abortRollingRestart("cannot spawn a replacement for slot \(index)")
            return
        }
        let id = replacement.id
        timer.start(timeoutMs: self.configuration.rollingReadyTimeoutMs) { [unowned self] in
            guard let replacement = self.workers[id], self.machine.workers[id]?.state != .ready else { return }
            self.abortRollingRestart("the replacement for slot \(index) was not ready within \(self.configuration.rollingReadyTimeoutMs) ms")
            self.machine.retire(id)
            replacement.process?.kill(SIGKILL)
        }
    }

    func abortRollingRestart(_ reason: String) {
        self.logger.error("rolling restart aborted: \(reason); the remaining workers keep running")
        self.rolling?.timer?.close()
        self.rolling = nil
    }

    func rollingWorkerExited(slot: Int, _ disposition: WorkerDisposition) {
        guard let rolling = self.rolling, rolling.currentSlot == slot else { return }
        if disposition != .retiring {
            // The replacement (or the old worker) crashed mid-roll.
            self.abortRollingRestart("worker in slot \(slot) exited during the roll")
        }
    }
}
