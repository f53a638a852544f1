import LorikeetProto

extension SupervisorStateMachine {
    // MARK: - Admin requests that change the server

    /// Admin `rolling-restart`: refused while one runs.
    mutating func rollingRestartRequested(now: UInt64) -> (Status, [Action]) {
        guard self.rolling == nil else { return (Status(code: .failedPrecondition, message: "a rolling restart is already running"), []) }
        guard self.isRunning else { return (Status(code: .unavailable, message: "the server is shutting down"), []) }
        return (.ok, self.startRollingRestart(now: now))
    }

    /// Admin `scale`: 1 to ``maximumSlots`` workers; slots are added (opened) or the last
    /// ones drained and removed until that many remain.
    mutating func scaleRequested(to workers: Int) -> (Status, [Action]) {
        guard workers >= 1, workers <= Self.maximumSlots else {
            return (Status(code: .invalidArgument, message: "workers must be between 1 and \(Self.maximumSlots)", param: "workers"), [])
        }
        guard self.isRunning else { return (Status(code: .unavailable, message: "the server is shutting down"), []) }
        var actions: [Action] = []
        while self.wantedSlotCount < workers { actions += self.scaleUp() }
        while self.wantedSlotCount > workers, self.slots.contains(where: { $0.state != .removing }) {
            let before = self.wantedSlotCount
            actions += self.scaleDown()
            if self.wantedSlotCount == before { break }
        }
        return (.ok, actions)
    }

    /// Admin `drain-worker`: a one-slot rolling restart of `slot`.
    mutating func drainSlotRequested(_ index: Int, now: UInt64) -> (Status, [Action]) {
        guard let slot = self.slot(index), slot.state != .removing else {
            return (Status(code: .notFound, message: "no worker slot \(index)", param: "slot"), [])
        }
        guard self.rolling == nil else { return (Status(code: .failedPrecondition, message: "a rolling restart is running"), []) }
        guard self.isRunning else { return (Status(code: .unavailable, message: "the server is shutting down"), []) }
        self.rolling = RollingRestart(remaining: [slot.index])
        return (.ok, self.rollingStep(now: now))
    }
}
