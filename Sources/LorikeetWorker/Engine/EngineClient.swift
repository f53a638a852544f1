import Foundation
public import Logging
public import LorikeetProto
import Synchronization

/// Async client of the engine channel over one Unix-socket connection.
///
/// Calls are `EngineEnvelope` frames tagged with a `call_id`; a dedicated reader thread
/// (not the Swift concurrency pool, whose 2 threads must stay free for HTTP) receives
/// replies and dispatches them by `call_id` to waiting continuations or generation
/// streams. When the connection breaks, every call in flight on it fails with
/// `UNAVAILABLE` and the next call reconnects; when the engine cannot be reached at all,
/// calls fail at once with `UNAVAILABLE` (HTTP 503).
public final class EngineClient: EngineBackend {
    /// Path of the engine's Unix socket.
    public let socketPath: String
    private let logger: Logger
    private let callTimeout: Duration
    private let mutationTimeout: Duration
    private let state = Mutex(State())

    private typealias Connection = FramedConnection<EngineEnvelope>

    private enum Call {
        case unary(CheckedContinuation<EngineEnvelope.Body?, any Error>)
        case stream(AsyncThrowingStream<GenerateChunk, any Error>.Continuation, requestID: String)
    }

    private struct Pending {
        var connection: ObjectIdentifier
        var call: Call
    }

    private struct State {
        var connection: Connection?
        var nextCallID: UInt64 = 1
        var pending: [UInt64: Pending] = [:]
        var isShutDown = false

        mutating func takeCallID() -> UInt64 {
            defer { self.nextCallID &+= 1 }
            return self.nextCallID
        }
    }

    /// A client of the engine listening at `socketPath`. Nothing connects until the first call.
    /// - Parameters:
    ///   - callTimeout: deadline of health, model info, listing and abort calls.
    ///   - mutationTimeout: deadline of adapter add/remove/pin calls (loading weights takes time).
    public init(
        socketPath: String, logger: Logger, callTimeout: Duration = .seconds(10), mutationTimeout: Duration = .seconds(120)
    ) {
        self.socketPath = socketPath
        self.logger = logger
        self.callTimeout = callTimeout
        self.mutationTimeout = mutationTimeout
    }

    deinit {
        self.state.withLock { $0.connection?.close() }
    }

    /// Closes the connection; calls in flight fail with UNAVAILABLE, later calls too.
    public func shutdown() {
        let connection = self.state.withLock { state -> Connection? in
            state.isShutDown = true
            defer { state.connection = nil }
            return state.connection
        }
        if let connection { self.connectionLost(connection, reason: "client shut down") }
    }

    // MARK: EngineBackend

    public func generate(_ request: GenerateRequest) async throws(Status) -> AsyncThrowingStream<GenerateChunk, any Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: GenerateChunk.self)
        let requestID = request.requestID
        let callID = try self.send(deadline: nil) { callID in
            EngineEnvelope(callID: callID, body: .generate(request))
        } register: { state, callID, connection in
            state.pending[callID] = Pending(connection: ObjectIdentifier(connection), call: .stream(continuation, requestID: requestID))
        }
        continuation.onTermination = { [weak self] termination in
            guard case .cancelled = termination, let self else { return }
            // The consumer went away before the last chunk: stop the work in the engine.
            let wasRunning = self.state.withLock { $0.pending.removeValue(forKey: callID) != nil }
            if wasRunning { self.sendAbort(requestID: requestID) }
        }
        return stream
    }

    /// Aborts a generation of this client: its stream ends, and the engine is told once.
    public func abort(requestID: String) async {
        let streams = self.state.withLock { state -> [AsyncThrowingStream<GenerateChunk, any Error>.Continuation] in
            let ids = state.pending.compactMap { entry -> UInt64? in
                if case .stream(_, let id) = entry.value.call, id == requestID { return entry.key }
                return nil
            }
            return ids.compactMap { id in
                if case .stream(let continuation, _)? = state.pending.removeValue(forKey: id)?.call { return continuation }
                return nil
            }
        }
        guard !streams.isEmpty else { return }
        self.sendAbort(requestID: requestID)
        for continuation in streams { continuation.finish() }
    }

    public func addAdapter(_ request: AddAdapterRequest) async throws(Status) {
        try Self.expectResult(try await self.call(.addAdapter(request), timeout: self.mutationTimeout))
    }

    public func removeAdapter(_ request: RemoveAdapterRequest) async throws(Status) {
        try Self.expectResult(try await self.call(.removeAdapter(request), timeout: self.mutationTimeout))
    }

    public func pinAdapter(_ request: PinAdapterRequest) async throws(Status) {
        try Self.expectResult(try await self.call(.pinAdapter(request), timeout: self.mutationTimeout))
    }

    public func listAdapters() async throws(Status) -> [EngineAdapter] {
        let reply = try await self.call(.listAdapters, timeout: self.callTimeout)
        if case .adapterList(let list) = reply { return list.adapters }
        try Self.expectResult(reply)
        throw Self.unexpected(reply, expecting: "adapter_list")
    }

    public func health() async throws(Status) -> HealthReply {
        let reply = try await self.call(.health, timeout: self.callTimeout)
        if case .healthReply(let health) = reply { return health }
        try Self.expectResult(reply)
        throw Self.unexpected(reply, expecting: "health_reply")
    }

    public func modelInfo() async throws(Status) -> ModelInfo {
        let reply = try await self.call(.modelInfo, timeout: self.callTimeout)
        if case .modelInfoReply(let info) = reply { return info }
        try Self.expectResult(reply)
        throw Self.unexpected(reply, expecting: "model_info_reply")
    }

    // MARK: Calls

    private static func expectResult(_ body: EngineEnvelope.Body?) throws(Status) {
        switch body {
        case .result(let result):
            if !result.status.isOK { throw result.status }
        default:
            throw Self.unexpected(body, expecting: "result")
        }
    }

    private static func unexpected(_ body: EngineEnvelope.Body?, expecting: String) -> Status {
        if case .result(let result) = body, !result.status.isOK { return result.status }
        let got = body.map { "\($0)".prefix(80) } ?? "an empty envelope"
        return Status(code: .internal, message: "engine replied with \(got) where \(expecting) was expected")
    }

    /// One request, one reply, with a deadline. Task cancellation fails the call at once.
    private func call(_ body: EngineEnvelope.Body, timeout: Duration) async throws(Status) -> EngineEnvelope.Body? {
        let deadline = UInt64(max(0, Date().timeIntervalSince1970 * 1000)) + UInt64(timeout.components.seconds * 1000)
        do {
            return try await withThrowingTaskGroup(of: EngineEnvelope.Body?.self) { group in
                group.addTask { try await self.awaitReply(body, deadline: deadline) }
                group.addTask {
                    try await Task.sleep(for: timeout)
                    throw Status(code: .deadlineExceeded, message: "the engine did not answer within \(timeout)")
                }
                defer { group.cancelAll() }
                guard let first = try await group.next() else { throw CancellationError() }
                return first
            }
        } catch let status as Status {
            throw status
        } catch {
            throw Status(code: .cancelled, message: "engine call cancelled")
        }
    }

    private func awaitReply(_ body: EngineEnvelope.Body, deadline: UInt64) async throws -> EngineEnvelope.Body? {
        let callID = Mutex<UInt64?>(nil)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<EngineEnvelope.Body?, any Error>) in
                do {
                    let id = try self.send(deadline: deadline) { callID in
                        EngineEnvelope(callID: callID, deadlineUnixMs: deadline, body: body)
                    } register: { state, id, connection in
                        state.pending[id] = Pending(connection: ObjectIdentifier(connection), call: .unary(continuation))
                    }
                    callID.withLock { $0 = id }
                    if Task.isCancelled { self.cancelCall(id) }
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        } onCancel: {
            if let id = callID.withLock({ $0 }) { self.cancelCall(id) }
        }
    }

    private func cancelCall(_ id: UInt64) {
        let pending = self.state.withLock { $0.pending.removeValue(forKey: id) }
        if case .unary(let continuation) = pending?.call { continuation.resume(throwing: CancellationError()) }
    }

    /// Registers a call under a fresh id on the live connection (connecting if needed) and
    /// sends its envelope; on a broken connection retries once on a fresh one.
    private func send(
        deadline: UInt64?, envelope: (UInt64) -> EngineEnvelope,
        register: (inout State, UInt64, Connection) -> Void
    ) throws(Status) -> UInt64 {
        var lastError = ""
        for _ in 0..<2 {
            let connection = try self.connection()
            let id = self.state.withLock { state in
                let id = state.takeCallID()
                register(&state, id, connection)
                return id
            }
            do {
                try connection.send(envelope(id))
                return id
            } catch .frame(.frameTooLarge(let length, let maximum)) {
                // Nothing was written: this request alone is refused, the connection (and
                // every other stream on it) carries on.
                _ = self.state.withLock { $0.pending.removeValue(forKey: id) }
                throw Status(
                    code: .invalidArgument,
                    message: "The request is too large for the engine channel (\(length) bytes encoded; the limit is \(maximum)).")
            } catch {
                lastError = "\(error)"
                _ = self.state.withLock { $0.pending.removeValue(forKey: id) }
                self.connectionLost(connection, reason: "send failed: \(error)")
            }
        }
        throw Status(code: .unavailable, message: "engine unavailable at \(self.socketPath): \(lastError)")
    }

    private func sendAbort(requestID: String) {
        guard let connection = self.state.withLock({ $0.connection }) else { return }
        let id = self.state.withLock { $0.takeCallID() }
        do {
            try connection.send(EngineEnvelope(callID: id, body: .abort(AbortRequest(requestID: requestID))))
            self.logger.debug("aborted engine request", metadata: ["request.id": "\(requestID)"])
        } catch {
            self.connectionLost(connection, reason: "send failed: \(error)")
        }
    }

    // MARK: Connection

    private func connection() throws(Status) -> Connection {
        let (existing, isShutDown) = self.state.withLock { ($0.connection, $0.isShutDown) }
        if isShutDown { throw Status(code: .unavailable, message: "engine client is shut down") }
        if let existing { return existing }
        let fd: Int32
        do {
            fd = try UnixSocket.connect(path: self.socketPath)
        } catch {
            throw Status(code: .unavailable, message: "engine unavailable at \(self.socketPath): \(error)")
        }
        let fresh = Connection(fd: fd)
        let winner = self.state.withLock { state -> Connection in
            if let current = state.connection { return current }
            state.connection = fresh
            return fresh
        }
        if winner !== fresh {
            fresh.close()
            return winner
        }
        self.logger.debug("connected to the engine", metadata: ["engine.socket": "\(self.socketPath)"])
        self.startReader(fresh)
        return fresh
    }

    private func startReader(_ connection: Connection) {
        let thread = Thread { [weak self] in
            var reason = "engine closed the connection"
            do {
                while let envelope = try connection.receive() {
                    guard let self else { return }
                    self.dispatch(envelope, from: connection)
                }
            } catch {
                reason = "\(error)"
            }
            self?.connectionLost(connection, reason: reason)
        }
        thread.name = "lorikeet-engine-reader"
        thread.start()
    }

    private enum Delivery {
        case none
        case reply(CheckedContinuation<EngineEnvelope.Body?, any Error>, EngineEnvelope.Body?)
        case chunk(AsyncThrowingStream<GenerateChunk, any Error>.Continuation, GenerateChunk, last: Bool)
        case fail(AsyncThrowingStream<GenerateChunk, any Error>.Continuation, Status)
    }

    private func dispatch(_ envelope: EngineEnvelope, from connection: Connection) {
        let delivery = self.state.withLock { state -> Delivery in
            guard let pending = state.pending[envelope.callID] else { return .none }
            switch pending.call {
            case .unary(let continuation):
                state.pending[envelope.callID] = nil
                return .reply(continuation, envelope.body)
            case .stream(let continuation, _):
                switch envelope.body {
                case .chunk(let chunk):
                    let last = !chunk.finishReason.isEmpty || !chunk.status.isOK
                    if last { state.pending[envelope.callID] = nil }
                    return .chunk(continuation, chunk, last: last)
                case .result(let result) where !result.status.isOK:
                    state.pending[envelope.callID] = nil
                    return .fail(continuation, result.status)
                default:
                    return .none
                }
            }
        }
        switch delivery {
        case .none:
            break
        case .reply(let continuation, let body):
            continuation.resume(returning: body)
        case .chunk(let continuation, let chunk, let last):
            if !chunk.status.isOK {
                continuation.finish(throwing: chunk.status)
            } else if chunk.finishReason == "error" {
                continuation.finish(throwing: Status(code: .internal, message: "the engine failed the request"))
            } else {
                continuation.yield(chunk)
                if last { continuation.finish() }
            }
        case .fail(let continuation, let status):
            continuation.finish(throwing: status)
        }
    }

    private func connectionLost(_ connection: Connection, reason: String) {
        let failed = self.state.withLock { state -> [Call] in
            if state.connection === connection { state.connection = nil }
            let key = ObjectIdentifier(connection)
            let ids = state.pending.compactMap { $0.value.connection == key ? $0.key : nil }
            return ids.compactMap { state.pending.removeValue(forKey: $0)?.call }
        }
        connection.close()
        if !failed.isEmpty {
            self.logger.warning(
                "engine connection lost", metadata: ["engine.socket": "\(self.socketPath)", "reason": "\(reason)"])
        }
        let status = Status(code: .unavailable, message: "engine connection lost: \(reason)")
        for call in failed {
            switch call {
            case .unary(let continuation): continuation.resume(throwing: status)
            case .stream(let continuation, _): continuation.finish(throwing: status)
            }
        }
    }
}
