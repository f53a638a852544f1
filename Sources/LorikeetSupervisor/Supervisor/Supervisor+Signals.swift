import Glibc
import Logging
import LorikeetProto

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
        self.perform(self.machine.startRollingRestart(now: self.nowMs))
    }
}
