import Foundation
package import Logging
import LorikeetChannels
package import LorikeetProto
import NIOCore

/// Async client of the engine channel over one Unix-socket connection.
///
/// A `FramedCallClient` on SwiftNIO (no threads of its own): calls are `EngineEnvelope`
/// frames tagged with a `call_id`, replies are matched by id, generation streams have back
/// pressure. When the connection breaks, every call in flight on it fails with
/// `UNAVAILABLE` and the next call reconnects; when the engine cannot be reached at all,
/// calls fail at once with `UNAVAILABLE` (HTTP 503).
package final class EngineClient: GenerationBackend, AdapterHost {
    /// Path of the engine's Unix socket.
    package let socketPath: String
    private let logger: Logger
    private let callTimeout: Duration
    private let mutationTimeout: Duration
    private let client: FramedCallClient<EngineEnvelope>

    /// A client of the engine listening at `socketPath`. Nothing connects until the first call.
    /// - Parameters:
    ///   - callTimeout: deadline of health, model info and listing calls.
    ///   - mutationTimeout: deadline of adapter add/remove/pin calls (loading weights takes time).
    package init(
        socketPath: String, logger: Logger, callTimeout: Duration = .seconds(10), mutationTimeout: Duration = .seconds(120)
    ) {
        self.socketPath = socketPath
        self.logger = logger
        self.callTimeout = callTimeout
        self.mutationTimeout = mutationTimeout
        self.client = FramedCallClient(endpoint: .unixSocket(path: socketPath), logger: logger)
    }

    /// Closes the connection; calls in flight fail with UNAVAILABLE, later calls too.
    package func shutdown() {
        self.client.shutdown()
    }

    // MARK: Generations and adapter hosting

    package func generate(_ request: GenerateRequest) async throws(Status) -> AsyncThrowingStream<GenerateChunk, any Error> {
        let replies: FramedCallClient<EngineEnvelope>.ReplyStream
        do {
            replies = try await self.client.stream(
                EngineEnvelope(body: .generate(request)),
                isFinal: { envelope in
                    switch envelope.body {
                    case .chunk(let chunk): return !chunk.finishReason.isEmpty || !chunk.status.isOK
                    case .result(let result): return !result.status.isOK
                    default: return false
                    }
                },
                onAbandoned: { [weak self] _ in
                    // The consumer went away before the last chunk: stop the work in the engine.
                    self?.sendAbort(requestID: request.requestID)
                })
        } catch {
            throw self.status(error)
        }
        // One consumer pulls on demand, so the producer's back pressure reaches the socket.
        let iterator = ReplyIterator(replies.makeAsyncIterator())
        return AsyncThrowingStream {
            while true {
                let envelope: EngineEnvelope?
                do {
                    envelope = try await iterator.next()
                } catch let error as FramedCallError {
                    throw self.status(error)
                }
                guard let envelope else { return nil }
                switch envelope.body {
                case .chunk(let chunk):
                    if !chunk.status.isOK { throw chunk.status }
                    if chunk.finishReason == "error" { throw Status(code: .internal, message: "the engine failed the request") }
                    return chunk
                case .result(let result) where !result.status.isOK:
                    throw result.status
                default:
                    continue
                }
            }
        }
    }

    /// Aborts a generation of this client: its stream ends, and the engine is told once.
    package func abort(requestID: String) async {
        let finished = self.client.finishStreams { envelope in
            if case .generate(let request) = envelope.body { return request.requestID == requestID }
            return false
        }
        if finished > 0 { self.sendAbort(requestID: requestID) }
    }

    package func addAdapter(_ request: AddAdapterRequest) async throws(Status) {
        try Self.expectResult(try await self.call(.addAdapter(request), timeout: self.mutationTimeout))
    }

    package func removeAdapter(_ request: RemoveAdapterRequest) async throws(Status) {
        try Self.expectResult(try await self.call(.removeAdapter(request), timeout: self.mutationTimeout))
    }

    package func pinAdapter(_ request: PinAdapterRequest) async throws(Status) {
        try Self.expectResult(try await self.call(.pinAdapter(request), timeout: self.mutationTimeout))
    }

    package func listAdapters() async throws(Status) -> [EngineAdapter] {
        let reply = try await self.call(.listAdapters, timeout: self.callTimeout)
        if case .adapterList(let list) = reply { return list.adapters }
        try Self.expectResult(reply)
        throw Self.unexpected(reply, expecting: "adapter_list")
    }

    package func health() async throws(Status) -> HealthReply {
        let reply = try await self.call(.health, timeout: self.callTimeout)
        if case .healthReply(let health) = reply { return health }
        try Self.expectResult(reply)
        throw Self.unexpected(reply, expecting: "health_reply")
    }

    package func modelInfo() async throws(Status) -> ModelInfo {
        let reply = try await self.call(.modelInfo, timeout: self.callTimeout)
        if case .modelInfoReply(let info) = reply { return info }
        try Self.expectResult(reply)
        throw Self.unexpected(reply, expecting: "model_info_reply")
    }

    package func tokenize(_ request: TokenizeRequest) async throws(Status) -> TokenizeReply {
        let reply = try await self.call(.tokenize(request), timeout: self.callTimeout)
        if case .tokenizeReply(let tokens) = reply { return tokens }
        try Self.expectResult(reply)
        throw Self.unexpected(reply, expecting: "tokenize_reply")
    }

    package func detokenize(_ request: DetokenizeRequest) async throws(Status) -> DetokenizeReply {
        let reply = try await self.call(.detokenize(request), timeout: self.callTimeout)
        if case .detokenizeReply(let text) = reply { return text }
        try Self.expectResult(reply)
        throw Self.unexpected(reply, expecting: "detokenize_reply")
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
            return try await self.client.call(EngineEnvelope(deadlineUnixMs: deadline, body: body), timeout: timeout).body
        } catch {
            throw self.status(error)
        }
    }

    private func sendAbort(requestID: String) {
        self.client.post(EngineEnvelope(callID: 0, body: .abort(AbortRequest(requestID: requestID))))
        self.logger.debug("aborted engine request", metadata: ["request.id": "\(requestID)"])
    }

    private func status(_ error: FramedCallError) -> Status {
        switch error {
        case .unavailable(let reason):
            return Status(code: .unavailable, message: "engine unavailable at \(self.socketPath): \(reason)")
        case .connectionLost(let reason):
            return Status(code: .unavailable, message: "engine connection lost: \(reason)")
        case .deadlineExceeded(let timeout):
            return Status(code: .deadlineExceeded, message: "the engine did not answer within \(timeout)")
        case .cancelled:
            return Status(code: .cancelled, message: "engine call cancelled")
        case .consumerTooSlow:
            return Status(code: .cancelled, message: "the response was not being read; the generation was stopped")
        case .messageTooLarge(let length, let maximum):
            // Nothing was written: this request alone is refused, the connection (and every
            // other stream on it) carries on.
            return Status(
                code: .invalidArgument,
                message: "The request is too large for the engine channel (\(length) bytes encoded; the limit is \(maximum)).")
        }
    }
}

/// The iterator of one generation's replies, shared with the `AsyncThrowingStream` that
/// wraps it.
// Why it is safe: `AsyncThrowingStream(unfolding:)` calls its closure for one
// consumer, one call at a time, so `next()` never runs concurrently with itself; the
// iterator is touched nowhere else.
// Unchecked sendability is safe here: its one consumer calls next() one call at a time.
private final class ReplyIterator: @unchecked Sendable {  // Safe: one consumer, one next() at a time.
    private var iterator: FramedCallClient<EngineEnvelope>.ReplyStream.AsyncIterator

    init(_ iterator: FramedCallClient<EngineEnvelope>.ReplyStream.AsyncIterator) {
        self.iterator = iterator
    }

    func next() async throws -> EngineEnvelope? {
        try await self.iterator.next()
    }
}
