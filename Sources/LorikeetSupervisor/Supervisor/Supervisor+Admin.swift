import Glibc
import Logging
import LorikeetProto

/// One connected admin client (`lorikeet ctl`, scripts, any protobuf client).
final class AdminConnection {
    let pipe: UVPipe
    var decoder = MessageDecoder<AdminEnvelope>(maximumFrameSize: Limits.channelFrameBytes)
    private(set) var closed = false
    /// The peer's credentials, for the audit log's `caller`.
    let caller: String
    /// Runs while a partial frame is pending (from the first byte of the frame).
    let frameTimer: UVTimer
    var frameTimerRunning = false
    /// Calls received and not answered yet (such a connection is never closed to make room).
    var callsInFlight = 0
    /// Loop time of the last read or reply.
    var lastActivityMs: UInt64
    /// Accept order (ties of `lastActivityMs`: the older connection is the idler).
    let serial: UInt64
    /// Called once, when the connection closes.
    var onClose: (() -> Void)?
    private let loop: UVLoop

    init(pipe: UVPipe, caller: String, loop: UVLoop, serial: UInt64) {
        self.pipe = pipe
        self.serial = serial
        self.caller = caller
        self.loop = loop
        self.frameTimer = UVTimer(loop: loop)
        self.lastActivityMs = loop.nowMs
    }

    func close() {
        guard !self.closed else { return }
        self.closed = true
        self.frameTimer.close()
        self.pipe.close()
        let onClose = self.onClose
        self.onClose = nil
        onClose?()
    }

    /// Sends the reply to one call. A reply whose frame would exceed
    /// `Limits.channelFrameBytes` (the client's decoder limit) is replaced by a small error
    /// of the same kind (FAILED_PRECONDITION) so the client gets an answer and the
    /// connection stays usable.
    func send(_ body: AdminEnvelope.Body, callID: UInt64) {
        guard !self.closed else { return }
        self.callsInFlight = max(self.callsInFlight - 1, 0)
        self.lastActivityMs = self.loop.nowMs
        var payload = AdminEnvelope(callID: callID, body: body).serializedBytes()
        if payload.count > Limits.channelFrameBytes {
            let status = Status(
                code: .failedPrecondition,
                message: "the reply is \(payload.count) bytes, more than the admin channel's limit of \(Limits.channelFrameBytes) bytes")
            let replacement: AdminEnvelope.Body
            if case .mutationReply = body {
                replacement = .mutationReply(AdapterMutationReply(status: status))
            } else {
                replacement = .result(CallResult(status: status))
            }
            payload = AdminEnvelope(callID: callID, body: replacement).serializedBytes()
        }
        self.pipe.write(Frame.encode(payload))
    }
}

/// The admin connections open now (for the connection limit).
final class AdminConnections {
    var open: [ObjectIdentifier: AdminConnection] = [:]
    var accepted: UInt64 = 0

    /// The connection idle the longest with no call in flight.
    var idlest: AdminConnection? {
        self.open.values.filter { $0.callsInFlight == 0 }.min { ($0.lastActivityMs, $0.serial) < ($1.lastActivityMs, $1.serial) }
    }
}

extension Supervisor {
    /// Default admin socket path: under the state directory.
    var adminSocketPath: String { self.configuration.adminSocketPath ?? self.configuration.stateDirectory + "/admin.sock" }

    func startAdminServer() throws {
        let server = try UVPipeServer(loop: self.loop, path: self.adminSocketPath, mode: 0o600)
        let connections = AdminConnections()
        try server.listen { [unowned self] pipe in self.adminConnected(pipe, connections: connections) }
        self.adminServer = server
        self.logger.info("admin socket at \(self.adminSocketPath)")
    }

    func adminConnected(_ pipe: UVPipe, connections: AdminConnections) {
        let credentials: (uid: UInt32, pid: Int32)
        do {
            credentials = try UnixSocket.peerCredentials(pipe.fileDescriptor)
        } catch {
            self.logger.warning("admin connection refused: \(error)")
            pipe.close()
            return
        }
        let uid = credentials.uid
        guard uid == 0 || uid == getuid() else {
            self.logger.warning("admin connection refused: peer uid \(uid) is neither root nor \(getuid())")
            pipe.close()
            return
        }
        let caller = "uid=\(credentials.uid) pid=\(credentials.pid)"
        // At the limit, the connection idle the longest makes room (a script's forgotten
        // connection must not lock `lorikeet ctl` out); only when every connection has a
        // call in flight is the new one refused.
        let limit = max(self.configuration.maxAdminConnections, 1)
        if connections.open.count >= limit {
            guard let idlest = connections.idlest else {
                self.logger.warning("admin connection refused (\(caller)): \(limit) admin connections open, each with a call in flight")
                pipe.close()
                return
            }
            self.logger.warning(
                "closing admin connection (\(idlest.caller)): \(limit) admin connections open; the one idle longest makes room for \(caller)"
            )
            idlest.close()
        }
        connections.accepted += 1
        let connection = AdminConnection(pipe: pipe, caller: caller, loop: self.loop, serial: connections.accepted)
        let id = ObjectIdentifier(connection)
        connections.open[id] = connection
        connection.onClose = { [unowned connections] in connections.open[id] = nil }
        let frameTimeoutMs = max(self.configuration.adminFrameTimeoutMs, 1)
        pipe.startReading(
            onData: { [unowned self] bytes in
                connection.lastActivityMs = self.nowMs
                connection.decoder.feed(bytes)
                var completedFrame = false
                while !connection.closed {
                    do {
                        guard let envelope = try connection.decoder.next() else { break }
                        completedFrame = true
                        connection.callsInFlight += 1
                        self.handleAdmin(envelope, on: connection)
                    } catch {
                        self.logger.warning("closing admin connection: \(error)")
                        connection.close()
                    }
                }
                guard !connection.closed else { return }
                // The clock runs from the first byte of the pending frame.
                if connection.decoder.bufferedByteCount == 0 {
                    connection.frameTimer.stop()
                    connection.frameTimerRunning = false
                } else if completedFrame || !connection.frameTimerRunning {
                    connection.frameTimerRunning = true
                    connection.frameTimer.start(timeoutMs: frameTimeoutMs) { [unowned self, weak connection] in
                        guard let connection, !connection.closed else { return }
                        self.logger.warning(
                            "closing admin connection: incomplete frame for \(Self.describe(ms: frameTimeoutMs)) (\(connection.caller), \(connection.decoder.bufferedByteCount) bytes pending)"
                        )
                        connection.close()
                    }
                }
            },
            onEnd: { _ in connection.close() })
    }

    /// `10 s`, or `250 ms` when not whole seconds.
    static func describe(ms: UInt64) -> String { ms % 1000 == 0 ? "\(ms / 1000) s" : "\(ms) ms" }

    func handleAdmin(_ envelope: AdminEnvelope, on connection: AdminConnection) {
        let callID = envelope.callID
        func result(_ status: Status = .ok) { connection.send(.result(CallResult(status: status)), callID: callID) }
        switch envelope.body {
        case .status:
            connection.send(.statusReply(self.statusReply()), callID: callID)
        case .listWorkers:
            connection.send(.workerList(WorkerList(workers: self.workerInfos())), callID: callID)
        case .listAdapters:
            connection.send(.adapterTable(self.table), callID: callID)
        case .load(var request):
            request.originSlot = -1
            request.caller = connection.caller
            self.route(.load(request)) { reply in connection.send(.mutationReply(reply), callID: callID) }
        case .unload(var request):
            request.originSlot = -1
            request.caller = connection.caller
            self.route(.unload(request)) { reply in connection.send(.mutationReply(reply), callID: callID) }
        case .batch(let batch):
            guard batch.items.count <= Limits.batchOperations else {
                return result(
                    Status(
                        code: .invalidArgument,
                        message: "a batch has \(batch.items.count) items; the limit is \(Limits.batchOperations)", param: "items"))
            }
            self.runBatch(batch.items[...], results: [], caller: connection.caller) { results in
                connection.send(.batchReply(BatchReply(results: results)), callID: callID)
            }
        case .rollingRestart:
            self.answerAdmin(self.machine.rollingRestartRequested(now: self.nowMs), reply: result)
        case .scale(let scale):
            self.answerAdmin(self.machine.scaleRequested(to: Int(clamping: scale.workers)), reply: result)
        case .drainWorker(let drain):
            self.answerAdmin(self.machine.drainSlotRequested(Int(clamping: drain.slot), now: self.nowMs), reply: result)
        case .stop(let stop):
            result()
            self.stop(stop.fast ? .fast : .graceful)
        case .nodes:
            self.requestNodes { reply in connection.send(.nodesReply(reply), callID: callID) }
        case .statusReply, .workerList, .adapterTable, .mutationReply, .batchReply, .result, .nodesReply, .none:
            result(Status(code: .invalidArgument, message: "not a request"))
        }
    }

    /// Answers an admin call with the machine's verdict, then performs its actions.
    func answerAdmin(_ decision: (Status, [SupervisorStateMachine.Action]), reply: (Status) -> Void) {
        reply(decision.0)
        self.perform(decision.1)
    }

    /// Batch items run one after another, each with its own result (not all-or-nothing:
    /// a refused item does not undo the ones before it).
    func runBatch(
        _ items: ArraySlice<BatchItem>, results: [AdapterMutationReply], caller: String,
        done: @escaping ([AdapterMutationReply]) -> Void
    ) {
        guard let item = items.first else { return done(results) }
        let next: (AdapterMutationReply) -> Void = { [unowned self] reply in
            self.runBatch(items.dropFirst(), results: results + [reply], caller: caller, done: done)
        }
        let index = results.count
        switch item {
        case .load(var request):
            request.originSlot = -1
            request.caller = caller
            self.route(.load(request), batchIndex: index, reply: next)
        case .unload(var request):
            request.originSlot = -1
            request.caller = caller
            self.route(.unload(request), batchIndex: index, reply: next)
        }
    }

    func statusReply() -> StatusReply {
        StatusReply(
            version: self.configuration.version, uptimeMs: self.nowMs - self.startedAtMs, epoch: self.epoch,
            tableVersion: self.table.version, engine: self.machine.engine.phase, workers: UInt32(self.slots.count),
            leaderSlot: self.leader.map { Int32($0.slot) } ?? -1,
            readyWorkers: UInt32(self.slots.filter { $0.current?.state == .ready }.count))
    }

    func workerInfos() -> [WorkerInfo] {
        self.slots.flatMap { slot in
            [slot.current, slot.replacement].compactMap { $0 }.map { worker in
                WorkerInfo(
                    slot: UInt32(slot.index), pid: worker.pid, role: worker.role,
                    phase: slot.tripped ? .crashLoop : worker.state.phase, restarts: slot.restarts, lastExit: slot.lastExit,
                    heartbeatAgeMs: self.nowMs - worker.lastHeartbeatMs, requestsServed: worker.requestsServed)
            }
                + (slot.current == nil && slot.replacement == nil
                    ? [
                        WorkerInfo(
                            slot: UInt32(slot.index), phase: slot.tripped ? .crashLoop : .restarting, restarts: slot.restarts,
                            lastExit: slot.lastExit)
                    ]
                    : [])
        }
    }
}
