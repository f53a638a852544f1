import Glibc
import Logging
import LorikeetProto

/// One connected admin client (`lorikeet ctl`, scripts, any protobuf client).
final class AdminConnection {
    let pipe: UVPipe
    var decoder = MessageDecoder<AdminEnvelope>(maximumFrameSize: Limits.channelFrameBytes)
    var closed = false
    /// The peer's credentials, for the audit log's `caller`.
    let caller: String

    init(pipe: UVPipe, caller: String) {
        self.pipe = pipe
        self.caller = caller
    }

    /// Sends one reply. A reply whose frame would exceed `Limits.channelFrameBytes` (the
    /// client's decoder limit) is replaced by a small error of the same kind
    /// (FAILED_PRECONDITION) so the client gets an answer and the connection stays usable.
    func send(_ body: AdminEnvelope.Body, callID: UInt64) {
        guard !self.closed else { return }
        let payload = AdminEnvelope(callID: callID, body: body).serializedBytes()
        guard payload.count <= Limits.channelFrameBytes else {
            let status = Status(
                code: .failedPrecondition,
                message: "the reply is \(payload.count) bytes, more than the admin channel's limit of \(Limits.channelFrameBytes) bytes")
            if case .mutationReply = body {
                self.send(.mutationReply(AdapterMutationReply(status: status)), callID: callID)
            } else {
                self.send(.result(CallResult(status: status)), callID: callID)
            }
            return
        }
        self.pipe.write(Frame.encode(payload))
    }
}

extension Supervisor {
    /// Default admin socket path: under the state directory.
    var adminSocketPath: String { self.configuration.adminSocketPath ?? self.configuration.stateDirectory + "/admin.sock" }

    func startAdminServer() throws {
        let server = try UVPipeServer(loop: self.loop, path: self.adminSocketPath, mode: 0o600)
        try server.listen { [unowned self] pipe in self.adminConnected(pipe) }
        self.adminServer = server
        self.logger.info("admin socket at \(self.adminSocketPath)")
    }

    func adminConnected(_ pipe: UVPipe) {
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
        let connection = AdminConnection(pipe: pipe, caller: "uid=\(credentials.uid) pid=\(credentials.pid)")
        pipe.startReading(
            onData: { [unowned self] bytes in
                connection.decoder.feed(bytes)
                while !connection.closed {
                    do {
                        guard let envelope = try connection.decoder.next() else { return }
                        self.handleAdmin(envelope, on: connection)
                    } catch {
                        self.logger.warning("closing admin connection: \(error)")
                        connection.closed = true
                        pipe.close()
                    }
                }
            },
            onEnd: { _ in
                connection.closed = true
                pipe.close()
            })
    }

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
            self.route(.load(request), callID: callID, origin: nil) { reply in connection.send(.mutationReply(reply), callID: callID) }
        case .unload(var request):
            request.originSlot = -1
            request.caller = connection.caller
            self.route(.unload(request), callID: callID, origin: nil) { reply in connection.send(.mutationReply(reply), callID: callID) }
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
            if self.rolling != nil { return result(Status(code: .failedPrecondition, message: "a rolling restart is already running")) }
            self.startRollingRestart()
            result()
        case .scale(let scale):
            guard scale.workers >= 1, scale.workers <= 256 else {
                return result(Status(code: .invalidArgument, message: "workers must be between 1 and 256", param: "workers"))
            }
            var active = self.slots.filter { !$0.removing }.count
            while active < Int(scale.workers) {
                self.addSlot()
                active += 1
            }
            while active > Int(scale.workers) {
                self.removeLastSlot()
                active -= 1
            }
            result()
        case .drainWorker(let drain):
            guard let slot = self.slots.first(where: { $0.index == Int(drain.slot) && !$0.removing }) else {
                return result(Status(code: .notFound, message: "no worker slot \(drain.slot)", param: "slot"))
            }
            guard self.rolling == nil else { return result(Status(code: .failedPrecondition, message: "a rolling restart is running")) }
            self.rolling = RollingRestart(remaining: [slot.index])
            self.rollingStep()
            result()
        case .stop(let stop):
            result()
            self.stop(stop.fast ? .fast : .graceful)
        case .statusReply, .workerList, .adapterTable, .mutationReply, .batchReply, .result, .none:
            result(Status(code: .invalidArgument, message: "not a request"))
        }
    }

    /// Batch items run one after another, each with its own result (not all-or-nothing:
    /// a refused item does not undo the ones before it).
    func runBatch(
        _ items: ArraySlice<BatchItem>, results: [AdapterMutationReply], caller: String,
        done: @escaping ([AdapterMutationReply]) -> Void
    ) {
        guard let item = items.first else { return done(results) }
        let callID = self.nextCallID
        self.nextCallID += 1
        let next: (AdapterMutationReply) -> Void = { [unowned self] reply in
            self.runBatch(items.dropFirst(), results: results + [reply], caller: caller, done: done)
        }
        let index = results.count
        switch item {
        case .load(var request):
            request.originSlot = -1
            request.caller = caller
            self.route(.load(request), callID: callID, origin: nil, batchIndex: index, reply: next)
        case .unload(var request):
            request.originSlot = -1
            request.caller = caller
            self.route(.unload(request), callID: callID, origin: nil, batchIndex: index, reply: next)
        }
    }

    func statusReply() -> StatusReply {
        StatusReply(
            version: self.configuration.version, uptimeMs: self.nowMs - self.startedAtMs, epoch: self.epoch,
            tableVersion: self.table.version, engineState: self.engineState, workers: UInt32(self.slots.count),
            leaderSlot: self.leader.map { Int32($0.slot) } ?? -1,
            readyWorkers: UInt32(self.slots.filter { $0.current?.state == .ready }.count))
    }

    func workerInfos() -> [WorkerInfo] {
        self.slots.flatMap { slot in
            [slot.current, slot.replacement].compactMap { $0 }.map { worker in
                WorkerInfo(
                    slot: UInt32(slot.index), pid: worker.pid, role: worker.role,
                    state: slot.tripped ? "crash-loop" : worker.state.rawValue, restarts: slot.restarts, lastExit: slot.lastExit,
                    heartbeatAgeMs: self.nowMs - worker.lastHeartbeatMs, requestsServed: worker.requestsServed)
            } + (slot.current == nil && slot.replacement == nil
                ? [WorkerInfo(slot: UInt32(slot.index), state: slot.tripped ? "crash-loop" : "restarting", restarts: slot.restarts, lastExit: slot.lastExit)]
                : [])
        }
    }
}
