import Glibc
import Logging
package import LorikeetProto

extension Supervisor {
    // MARK: - Control channel I/O

    /// Bytes from a worker's control channel. A well-framed payload that is not a
    /// `ControlEnvelope` is dropped on its own (logged; the stream is still in step and
    /// the channel stays). A framing error (bad flag, a length over
    /// `Limits.channelFrameBytes`) leaves the stream out of step: the channel is closed and
    /// the worker killed, marked as a protocol kill, which never counts toward the
    /// crash-loop breaker. No client request can cause either: workers refuse to send a
    /// frame over the limit (`FramedConnection.send`), and every field is bounded first.
    func controlBytes(_ bytes: [UInt8], from worker: WorkerProcess) {
        worker.decoder.feed(bytes)
        while worker.control != nil {
            let envelope: ControlEnvelope?
            do {
                envelope = try worker.decoder.next()
            } catch .invalidMessage(let error) {
                self.logger.error(
                    "dropped a control frame that is not a control message: \(error)",
                    metadata: ["worker.slot": "\(worker.slot)", "pid": "\(worker.pid)"])
                continue
            } catch {
                self.logger.error(
                    "closing control channel: \(error)", metadata: ["worker.slot": "\(worker.slot)", "pid": "\(worker.pid)"])
                worker.control?.close()
                worker.control = nil
                self.perform(self.machine.protocolViolation(worker.id))
                return
            }
            guard let envelope else { return }
            self.handle(envelope, from: worker)
        }
    }

    func controlClosed(_ worker: WorkerProcess, _ error: UVError?) {
        worker.control?.close()
        worker.control = nil
        if worker.process != nil {
            self.perform(self.machine.controlClosed(worker.id, reason: "control channel closed\(error.map { " (\($0))" } ?? "")"))
        }
    }

    func handle(_ envelope: ControlEnvelope, from worker: WorkerProcess) {
        self.machine.messageReceived(from: worker.id, now: self.nowMs)
        switch envelope.body {
        case .hello(let hello):
            self.perform(self.machine.hello(worker.id, hello))
        case .ready(let ready):
            self.perform(self.machine.ready(worker.id, tableIsCurrent: ready.tableVersion == self.table.version, now: self.nowMs))
        case .heartbeat(let beat):
            worker.requestsServed = beat.requestsServed
        case .changeAck(let ack):
            self.perform(self.machine.changeAcked(by: worker.id, version: ack.version))
        case .load(let request):
            self.perform(self.machine.mutationRequested(.load(request), origin: .worker(worker.id, callID: envelope.callID)))
        case .unload(let request):
            self.perform(self.machine.mutationRequested(.unload(request), origin: .worker(worker.id, callID: envelope.callID)))
        case .mutationReply(let reply):
            self.perform(self.machine.leaderReplied(routeID: envelope.callID, reply: reply, from: worker.id))
        case .commit(let commit):
            self.perform(self.machine.commitRequested(commit, callID: envelope.callID, from: worker.id))
        case .drain:
            // The worker confirms it stopped accepting connections.
            self.perform(self.machine.stoppedAccepting(worker.id, now: self.nowMs))
        case .role, .snapshot, .change, .commitReply, .shutdown, .fence, .none:
            self.logger.warning(
                "unexpected control message from a worker", metadata: ["worker.slot": "\(worker.slot)", "call.id": "\(envelope.callID)"])
        }
    }

    // MARK: - Mutations (the state machine decides; these perform)

    /// Sends a load/unload from the admin socket (or one batch item) to the state machine;
    /// `reply` gets its answer.
    func route(_ mutation: AdapterMutation, batchIndex: Int? = nil, reply: @escaping (AdapterMutationReply) -> Void) {
        let token = self.nextAdminToken
        self.nextAdminToken += 1
        self.adminReplies[token] = reply
        self.perform(self.machine.mutationRequested(mutation, origin: .admin(token: token), batchIndex: batchIndex))
    }

    /// The `forwardToLeader` action.
    func forward(_ mutation: AdapterMutation, routeID: UInt64, to leader: WorkerID) {
        let sent: Bool
        switch mutation {
        case .load(let request): sent = self.workers[leader]?.send(.load(request), callID: routeID) ?? false
        case .unload(let request): sent = self.workers[leader]?.send(.unload(request), callID: routeID) ?? false
        }
        if !sent { self.perform(self.machine.forwardFailed(routeID: routeID)) }
    }

    /// The `answerMutation` action: the audit line, then the reply to its origin.
    func deliver(_ answer: MutationAnswer) {
        self.recordAudit(answer.mutation, batchIndex: answer.batchIndex, answer.reply)
        switch answer.origin {
        case .worker(let id, let callID):
            if let origin = self.workers[id], origin.process != nil { origin.send(.mutationReply(answer.reply), callID: callID) }
        case .admin(let token):
            self.adminReplies.removeValue(forKey: token)?(answer.reply)
        }
    }

    /// The `persistTable` action: writes the state file and reports the outcome.
    func persist(_ table: AdapterTable, callID: UInt64) {
        var failure: String?
        do {
            try self.store.save(table)
        } catch {
            failure = "\(error)"
        }
        self.perform(self.machine.tablePersisted(callID: callID, failure: failure))
    }
}

extension Supervisor {
    // MARK: - Audit

    /// Appends the outcome of one load/unload to the audit log (every routed mutation
    /// ends here exactly once: answered by the leader, settled after the leader died,
    /// failed at shutdown, or refused for want of a leader).
    func recordAudit(_ mutation: AdapterMutation, batchIndex: Int?, _ reply: AdapterMutationReply) {
        let entry = Self.auditEntry(mutation, batchIndex: batchIndex, reply, now: Int64(self.wallClockMs))
        if !self.audit.record(entry) {
            self.logger.error("cannot write the audit log", metadata: ["path": "\(self.audit.path)", "errno": "\(errno)"])
        }
    }

    /// The audit record of one mutation's outcome (pure: the fuzz target checks its size).
    package static func auditEntry(
        _ mutation: AdapterMutation, batchIndex: Int?, _ reply: AdapterMutationReply, now: Int64
    ) -> AuditEntry {
        switch mutation {
        case .load(let request):
            return AuditEntry(
                timeUnixMs: now, action: "load", name: request.name, id: reply.adapter?.intID ?? 0,
                path: reply.adapter?.path ?? request.path, slot: request.originSlot, caller: request.caller, batchIndex: batchIndex,
                status: reply.status, tableVersion: reply.tableVersion)
        case .unload(let request):
            return AuditEntry(
                timeUnixMs: now, action: "unload", name: request.name, id: reply.adapter?.intID ?? request.intID,
                path: reply.adapter?.path ?? "", slot: request.originSlot, caller: request.caller, batchIndex: batchIndex,
                status: reply.status, tableVersion: reply.tableVersion)
        }
    }

    /// SIGUSR1: reopen the audit log (after a rename-style rotation).
    func reopenAuditLog() {
        do {
            try self.audit.reopen()
            self.logger.info("audit log reopened", metadata: ["path": "\(self.audit.path)"])
        } catch {
            self.logger.error("cannot reopen the audit log: \(error)")
        }
    }

    /// Wall-clock time in Unix ms (the loop's clock is monotonic).
    var wallClockMs: UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return UInt64(now.tv_sec) * 1000 + UInt64(now.tv_nsec) / 1_000_000
    }
}
