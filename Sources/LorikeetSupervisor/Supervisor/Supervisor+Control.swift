import Glibc
import Logging
package import LorikeetProto

/// A load/unload that arrived at a follower, forwarded to the leader.
struct RoutedMutation {
    /// What was asked (for the audit log: name, path, origin slot, caller).
    let mutation: Supervisor.Mutation
    /// Position in an admin batch, if any (audit field).
    let batchIndex: Int?
    let origin: WorkerProcess?
    let originCallID: UInt64
    /// Admin-socket callers get the reply through this closure instead.
    let reply: ((AdapterMutationReply) -> Void)?
    let leader: WorkerProcess
    /// Set once the leader's commit for this call is durable and applied everywhere.
    var committed: AdapterMutationReply?
}

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
            self.route(.load(request), callID: envelope.callID, origin: worker, reply: nil)
        case .unload(let request):
            self.route(.unload(request), callID: envelope.callID, origin: worker, reply: nil)
        case .mutationReply(let reply):
            self.leaderReplied(callID: envelope.callID, reply: reply, from: worker)
        case .commit(let commit):
            self.commit(commit, callID: envelope.callID, from: worker)
        case .drain:
            // The worker confirms it stopped accepting connections.
            self.perform(self.machine.stoppedAccepting(worker.id, now: self.nowMs))
        case .role, .snapshot, .change, .commitReply, .shutdown, .none:
            self.logger.warning(
                "unexpected control message from a worker", metadata: ["worker.slot": "\(worker.slot)", "call.id": "\(envelope.callID)"])
        }
    }

    // MARK: - Leadership

    /// The leader exited: settle its in-flight mutations (the state machine promotes
    /// another worker).
    func settleRoutes(of old: WorkerProcess) {
        for (callID, route) in self.pendingRoutes where route.leader === old {
            // A mutation committed before the death still succeeded; anything else did not happen.
            if let committed = route.committed, self.machine.fanOut?.callID != callID {
                self.answer(route, committed)
                self.pendingRoutes[callID] = nil
            } else if route.committed == nil && self.machine.fanOut?.callID != callID {
                self.answer(
                    route,
                    AdapterMutationReply(
                        status: Status(code: .unavailable, message: "the leader exited before committing; the adapter table is unchanged, retry")))
                self.pendingRoutes[callID] = nil
            }
        }
    }

    // MARK: - Mutations routed to the leader

    package enum Mutation {
        case load(LoadAdapterRequest)
        case unload(UnloadAdapterRequest)
    }

    /// Why `mutation` is refused before it reaches the leader, or nil: the inner re-check
    /// of the limits the HTTP edge (and the admin handler) enforce (`TextRules`,
    /// `Limits.adapterNameBytes`, `adapterPathBytes`, `baseModelNameBytes`).
    package static func problem(in mutation: Mutation) -> Status? {
        switch mutation {
        case .load(let request): request.fieldProblem
        case .unload(let request): request.fieldProblem
        }
    }

    func route(
        _ mutation: Mutation, callID: UInt64, origin: WorkerProcess?, batchIndex: Int? = nil,
        reply: ((AdapterMutationReply) -> Void)?
    ) {
        func refuse(_ status: Status) {
            let refusal = AdapterMutationReply(status: status, tableVersion: self.table.version)
            self.recordAudit(mutation, batchIndex: batchIndex, refusal)
            if let reply { reply(refusal) } else {
                origin?.send(.mutationReply(refusal), callID: callID)
            }
        }
        if let problem = Self.problem(in: mutation) {
            self.logger.warning(
                "adapter request refused: \(problem.message)", metadata: ["worker.slot": "\(origin.map { "\($0.slot)" } ?? "admin")"])
            return refuse(problem)
        }
        guard let leader = self.leader, self.hasHello(leader), leader.process != nil, self.machine.isRunning else {
            return refuse(
                Status(code: .unavailable, message: !self.machine.isRunning ? "the server is shutting down" : "no leader is available yet; retry"))
        }
        // The caller field comes from the forwarding worker or the admin peer: bounded like any echo.
        var mutation = mutation
        switch mutation {
        case .load(var request):
            request.caller = request.caller.echoed()
            mutation = .load(request)
        case .unload(var request):
            request.caller = request.caller.echoed()
            mutation = .unload(request)
        }
        let routedID = self.nextCallID
        self.nextCallID += 1
        self.pendingRoutes[routedID] = RoutedMutation(
            mutation: mutation, batchIndex: batchIndex, origin: origin, originCallID: callID, reply: reply, leader: leader)
        let sent: Bool
        switch mutation {
        case .load(let request): sent = leader.send(.load(request), callID: routedID)
        case .unload(let request): sent = leader.send(.unload(request), callID: routedID)
        }
        if !sent, let route = self.pendingRoutes.removeValue(forKey: routedID) {
            // Cannot happen with the fields bounded above; if it does, this call fails alone.
            self.answer(
                route,
                AdapterMutationReply(
                    status: Status(code: .invalidArgument, message: "the request is larger than the control channel's limit"),
                    tableVersion: self.table.version))
        }
    }

    func leaderReplied(callID: UInt64, reply: AdapterMutationReply, from worker: WorkerProcess) {
        guard let route = self.pendingRoutes.removeValue(forKey: callID), route.leader === worker else { return }
        self.answer(route, reply)
    }

    func answer(_ route: RoutedMutation, _ reply: AdapterMutationReply) {
        self.recordAudit(route.mutation, batchIndex: route.batchIndex, reply)
        if let callback = route.reply {
            callback(reply)
        } else if let origin = route.origin, origin.process != nil {
            origin.send(.mutationReply(reply), callID: route.originCallID)
        }
    }

    func failPendingMutations(_ status: Status) {
        for (_, route) in self.pendingRoutes where route.committed == nil {
            self.answer(route, AdapterMutationReply(status: status))
        }
        self.pendingRoutes = self.pendingRoutes.filter { $0.value.committed != nil }
    }

    // MARK: - Commit path

    func commit(_ request: CommitRequest, callID: UInt64, from worker: WorkerProcess) {
        func refuse(_ code: StatusCode, _ message: String) {
            self.logger.warning("commit refused: \(message)", metadata: ["worker.slot": "\(worker.slot)"])
            worker.send(.commitReply(CommitReply(status: Status(code: code, message: message), version: self.table.version)), callID: callID)
        }
        if let refusal = self.machine.commitRefusal(from: worker.id, epoch: request.epoch) {
            return refuse(refusal.code, refusal.message)
        }
        guard request.baseVersion == self.table.version else {
            return refuse(.aborted, "the change is based on table version \(request.baseVersion), current is \(self.table.version)")
        }
        let next: AdapterTable
        switch TableRules.apply(request.change, to: self.table, maxAdapters: self.configuration.maxAdapters) {
        case .failure(let status): return refuse(status.code, status.message)
        case .success(let table): next = table
        }
        // Every worker gets this table (snapshot) or this change: both must fit a frame, or
        // the change would cut workers off. Bounded by the limits above; checked all the same.
        let snapshotBytes = ControlEnvelope(callID: UInt64.max, body: .snapshot(TableSnapshot(table: next))).serializedBytes().count
        guard snapshotBytes <= Limits.channelFrameBytes, TableFile.encode(next).count <= TableFile.maximumSize else {
            return refuse(
                .failedPrecondition,
                "the adapter table would be \(snapshotBytes) bytes, more than a control frame (\(Limits.channelFrameBytes) bytes) or the state file limit (\(TableFile.maximumSize) bytes)")
        }
        do {
            try self.store.save(next)
        } catch {
            return refuse(.internal, "cannot persist the adapter table: \(error)")
        }
        self.table = next
        self.logger.info(
            "committed table version \(next.version)",
            metadata: [
                "upserts": "\(request.change.upserts.map(\.name))", "removes": "\(request.change.removes)", "epoch": "\(self.epoch)",
            ])
        let change = TableChange(
            version: next.version, upserts: request.change.upserts, removes: request.change.removes, nextIntID: next.nextIntID)
        self.perform(
            self.machine.commitDurable(callID: callID, leader: worker.id, change: change, adapter: request.change.upserts.first))
    }

    /// The `commitFinished` action: the route's answer is recorded; the leader answers its
    /// caller, or, when the leader is gone, the supervisor answers (the change happened).
    func commitFinished(callID: UInt64, version: UInt64, adapter: AdapterRecord?, replyTo target: CommitReplyTarget) {
        let reply = AdapterMutationReply(status: .ok, adapter: adapter, tableVersion: version)
        if var route = self.pendingRoutes[callID] {
            route.committed = reply
            self.pendingRoutes[callID] = route
        }
        switch target {
        case .leader(let id):
            self.workers[id]?.send(.commitReply(CommitReply(status: .ok, version: version)), callID: callID)
        case .caller:
            if let route = self.pendingRoutes.removeValue(forKey: callID) { self.answer(route, reply) }
        }
    }
}

extension Supervisor {
    // MARK: - Audit

    /// Appends the outcome of one load/unload to the audit log (every routed mutation
    /// ends here exactly once: answered by the leader, settled after the leader died,
    /// failed at shutdown, or refused for want of a leader).
    func recordAudit(_ mutation: Mutation, batchIndex: Int?, _ reply: AdapterMutationReply) {
        let entry = Self.auditEntry(mutation, batchIndex: batchIndex, reply, now: Int64(self.wallClockMs))
        if !self.audit.record(entry) {
            self.logger.error("cannot write the audit log", metadata: ["path": "\(self.audit.path)", "errno": "\(errno)"])
        }
    }

    /// The audit record of one mutation's outcome (pure: the fuzz target checks its size).
    package static func auditEntry(
        _ mutation: Mutation, batchIndex: Int?, _ reply: AdapterMutationReply, now: Int64
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
