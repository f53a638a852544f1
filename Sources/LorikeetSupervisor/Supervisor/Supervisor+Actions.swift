import Glibc
import Logging
import LorikeetProto

extension Supervisor {
    /// Performs the state machine's actions, in order. Actions may report new events to
    /// the machine (a failed spawn, an opened slot); the machine is never borrowed while
    /// an action runs.
    func perform(_ actions: [SupervisorStateMachine.Action]) {
        for action in actions { self.perform(action) }
    }

    private func perform(_ action: SupervisorStateMachine.Action) {
        switch action {
        case .spawnWorker(let id, let slot):
            self.launchWorker(id, in: slot)
        case .startRestartTimer(let slot, let delayMs):
            self.startRestartTimer(slot, delayMs: delayMs)
        case .cancelRestartTimer(let slot):
            self.slotHandles[slot]?.restartTimer?.close()
            self.slotHandles[slot]?.restartTimer = nil
        case .sendSnapshot(let id):
            self.workers[id]?.send(.snapshot(TableSnapshot(table: self.table)))
        case .sendRole(let id, let role, let epoch):
            self.workers[id]?.send(.role(RoleAssignment(role: role, epoch: epoch, engineSocket: self.configuration.engineSocketPath)))
        case .startServing(let id):
            guard let worker = self.workers[id] else { return }
            worker.send(.ready(Ready(tableVersion: self.table.version)))
            let role = self.machine.workers[id]?.role ?? .follower
            self.logger.info("worker ready", metadata: ["worker.slot": "\(worker.slot)", "pid": "\(worker.pid)", "role": "\(role)"])
            self.notifySystemd()
        case .drain(let id, let listenerRetired):
            guard let worker = self.workers[id] else { return }
            self.sendDrain(worker, listenerRetired: listenerRetired)
        case .terminate(let id, let reason):
            guard let worker = self.workers[id] else { return }
            self.terminate(worker, reason: reason)
        case .forwardToLeader(let leader, let routeID, let mutation):
            self.forward(mutation, routeID: routeID, to: leader)
        case .answerMutation(let answer):
            self.deliver(answer)
        case .replyToCommit(let id, let callID, let reply):
            self.workers[id]?.send(.commitReply(reply), callID: callID)
        case .persistTable(let table, let callID):
            self.persist(table, callID: callID)
        case .openSlot(let index):
            self.openSlot(index)
        case .releaseListener(let slot):
            self.slotHandles[slot]?.releaseListener()
        case .removeSlot(let index):
            self.slotHandles.removeValue(forKey: index)?.releaseListener()
            self.logger.info("slot \(index) removed (\(self.machine.slots.count) slots)")
        case .beginStop(let mode):
            self.beginStop(mode)
        case .spawnEngine:
            self.spawnEngine()
        case .startEngineTimer(let delayMs):
            UVTimer.after(self.loop, ms: delayMs) { [unowned self] in self.startEngine() }
        case .shutdown(let id, let mode):
            guard let worker = self.workers[id] else { return }
            self.shutdown(worker, mode)
        case .startStopTimer(let delayMs):
            self.stopTimer?.close()
            let timer = UVTimer(loop: self.loop)
            self.stopTimer = timer
            let due = self.nowMs + delayMs
            timer.start(timeoutMs: delayMs) { [unowned self] in
                self.perform(self.machine.stopTimerFired(lateByMs: self.msLate(due)))
            }
        case .killEverything:
            self.killEverything(SIGKILL)
        case .terminateEngine:
            self.engine?.kill(SIGTERM)
        case .leaveLoop:
            self.leaveLoop()
        case .fatal(let code, let message):
            self.fatal(code: code, message)
        case .sendHeartbeat(let id, let seq):
            self.workers[id]?.send(.heartbeat(Heartbeat(seq: seq)))
        case .kill(let id):
            self.workers[id]?.process?.kill(SIGKILL)
        case .sendChange(let id, let change):
            self.workers[id]?.send(.change(change))
        case .startCommitTimer(let version, let delayMs):
            self.commitTimer?.close()
            let timer = UVTimer(loop: self.loop)
            self.commitTimer = timer
            let due = self.nowMs + delayMs
            timer.start(timeoutMs: delayMs) { [unowned self] in
                self.perform(self.machine.commitTimerFired(version: version, lateByMs: self.msLate(due)))
            }
        case .cancelCommitTimer:
            self.commitTimer?.close()
            self.commitTimer = nil
        case .startRollingTimer(let id, let delayMs):
            self.rollingTimer?.close()
            let timer = UVTimer(loop: self.loop)
            self.rollingTimer = timer
            let due = self.nowMs + delayMs
            timer.start(timeoutMs: delayMs) { [unowned self] in
                self.perform(self.machine.rollingTimerFired(id, lateByMs: self.msLate(due)))
            }
        case .cancelRollingTimer:
            self.rollingTimer?.close()
            self.rollingTimer = nil
        case .spawnClusterAgent:
            self.spawnClusterAgent()
        case .terminateClusterAgent:
            self.clusterAgent?.process?.kill(SIGTERM)
        case .startClusterAgentTimer(let delayMs):
            UVTimer.after(self.loop, ms: delayMs) { [unowned self] in self.startClusterAgent() }
        case .sendFence(let id, let fence):
            self.workers[id]?.send(.fence(fence))
        case .sendToClusterAgent(let envelope):
            if self.clusterAgent?.send(envelope) != true {
                // The agent is gone (its exit answers what it held) or the message is over the frame limit.
                self.logger.warning("cannot send to the cluster agent", metadata: ["call.id": "\(envelope.callID)"])
            }
        case .log(let level, let message, var metadata, let id):
            if let id, let worker = self.workers[id] { metadata["pid"] = "\(worker.pid)" }
            self.logger.log(level: level, "\(message)", metadata: metadata)
        }
    }
}
