import Logging

/// Progress of a rolling restart (SIGHUP, or `drain-worker` for one slot): one slot at a
/// time, each replacement ready before the old process drains.
struct RollingRestart: Sendable, Equatable {
    var remaining: [Int]
    var currentSlot: Int?

    init(remaining: [Int], currentSlot: Int? = nil) {
        self.remaining = remaining
        self.currentSlot = currentSlot
    }
}

extension SupervisorStateMachine {
    // MARK: - Rolling restart

    /// SIGHUP (or the admin call): replace every worker, one slot at a time.
    mutating func startRollingRestart(now: UInt64) -> [Action] {
        guard self.isRunning else { return [] }
        if self.rolling != nil { return [.log(.warning, "a rolling restart is already in progress", [:], worker: nil)] }
        let log = Action.log(.notice, "rolling restart of \(self.slots.count) slots", [:], worker: nil)
        self.rolling = RollingRestart(remaining: self.slots.filter { $0.state == .active }.map(\.index))
        return [log] + self.rollingStep(now: now)
    }

    /// Advances the roll: when a worker starts serving, and when the roll starts.
    mutating func rollingStep(now: UInt64) -> [Action] {
        guard var rolling = self.rolling, self.isRunning else { return [] }
        var actions: [Action] = []
        if let current = rolling.currentSlot {
            guard let slot = self.slot(current) else {
                rolling.currentSlot = nil
                self.rolling = rolling
                return self.rollingStep(now: now)
            }
            // Done with this slot once the replacement serves.
            guard let serving = slot.current.flatMap({ self.workers[$0] }), serving.state == .ready, serving.disposition == .wanted else {
                return []
            }
            actions.append(.cancelRollingTimer)
            rolling.currentSlot = nil
            self.rolling = rolling
        }
        guard !rolling.remaining.isEmpty else {
            self.rolling = nil
            return actions + [.log(.notice, "rolling restart complete", [:], worker: nil)]
        }
        let index = rolling.remaining.removeFirst()
        guard let slot = self.slot(index), slot.current != nil else {
            self.rolling = rolling
            return actions + self.rollingStep(now: now)
        }
        rolling.currentSlot = index
        self.rolling = rolling
        let spawn = self.spawn(inSlot: index, asReplacement: true, now: now)
        guard case .spawnWorker(let replacement, _) = spawn.first else {
            return actions + self.abortRollingRestart("cannot spawn a replacement for slot \(index)")
        }
        return actions + [.startRollingTimer(replacement, delayMs: self.configuration.rollingReadyTimeoutMs)] + spawn
    }

    /// The replacement was not ready in time: abort the roll and kill it. A timer more than
    /// `stallToleranceMs` late (the supervisor was paused; its "ready" may be unread) waits
    /// its whole timeout again.
    mutating func rollingTimerFired(_ replacement: WorkerID, lateByMs: UInt64 = 0) -> [Action] {
        guard let worker = self.workers[replacement], worker.state != .ready else { return [] }
        if lateByMs > Self.stallToleranceMs {
            return [
                Self.stallLog(lateByMs, "waiting another \(self.configuration.rollingReadyTimeoutMs) ms for the replacement"),
                .startRollingTimer(replacement, delayMs: self.configuration.rollingReadyTimeoutMs),
            ]
        }
        let abort = self.abortRollingRestart(
            "the replacement for slot \(worker.slot) was not ready within \(self.configuration.rollingReadyTimeoutMs) ms")
        self.retire(replacement)
        return abort + [.kill(replacement)]
    }

    mutating func abortRollingRestart(_ reason: String) -> [Action] {
        self.rolling = nil
        return [
            .log(.error, "rolling restart aborted: \(reason); the remaining workers keep running", [:], worker: nil), .cancelRollingTimer,
        ]
    }
}
