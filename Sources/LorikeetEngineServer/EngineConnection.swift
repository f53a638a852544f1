import Logging
import LorikeetChannels
import LorikeetProto
import NIOCore
import Synchronization

/// One client connection of the engine server: its channel, its bounded outbound queue
/// and the ids of its requests in flight.
///
/// Replies are produced on many threads (the scheduler thread for tokens, the adapter and
/// deferred-submit queues, the event loop for quick calls). `enqueue` never blocks: it
/// appends under a lock and, when the queue was empty, schedules one task on the channel's
/// event loop that writes the whole batch and flushes once (so the tokens of one scheduler
/// step cost one `writev`, and frames keep their enqueue order). A frame counts as
/// outstanding from `enqueue` until NIO has handed it to the socket (its write promise
/// completed); a client that lets more than `maxQueuedFrames` pile up (it stopped reading,
/// so the socket is not writable and NIO's pending writes grow) is disconnected with a
/// logged reason, and its requests are aborted when the channel goes inactive. Other
/// connections are not affected: nothing here waits for this client.
final class EngineConnection: Sendable {
    private enum Phase {
        case open
        /// Draining: close as soon as every outstanding frame is written.
        case closingWhenWritten
        case closed
    }

    private struct Outbound {
        var pending: [EngineEnvelope] = []
        /// Frames enqueued whose write has not completed (pending ones included).
        var outstanding = 0
        var flushScheduled = false
        var phase = Phase.open
    }

    private enum EnqueueStep {
        case none
        case scheduleFlush
        case overflow(Int)
    }

    let id: UInt64
    let channel: any Channel
    /// Whether this peer may send a leader epoch newer than any seen (see `EngineServer.listen`).
    let mayRaiseEpoch: Bool
    private let logger: Logger
    private let maxQueuedFrames: Int
    private let outbound = Mutex(Outbound())
    /// Requests in flight (for aborting them on disconnect) and the ids aborted while
    /// their submission was still pending on the deferred-submit queue.
    private let requests = Mutex<(running: Set<String>, aborted: Set<String>)>(([], []))
    /// Told how many requests started (+1) or ended (negative), for the server's drain.
    private let requestsChanged: @Sendable (Int) -> Void

    init(
        id: UInt64, channel: any Channel, logger: Logger, maxQueuedFrames: Int, mayRaiseEpoch: Bool,
        requestsChanged: @escaping @Sendable (Int) -> Void
    ) {
        self.id = id
        self.channel = channel
        self.logger = logger
        self.maxQueuedFrames = maxQueuedFrames
        self.mayRaiseEpoch = mayRaiseEpoch
        self.requestsChanged = requestsChanged
    }

    // MARK: Outbound

    /// Queues a frame; never blocks. A client that lets the queue grow past the limit is
    /// disconnected. Frames queued after the connection closed are dropped.
    func enqueue(_ envelope: EngineEnvelope) {
        let step = self.outbound.withLock { o -> EnqueueStep in
            guard o.phase != .closed else { return .none }
            o.outstanding += 1
            if o.outstanding > self.maxQueuedFrames {
                o.phase = .closed
                o.pending = []
                return .overflow(o.outstanding - 1)
            }
            o.pending.append(envelope)
            if o.flushScheduled { return .none }
            o.flushScheduled = true
            return .scheduleFlush
        }
        switch step {
        case .none:
            break
        case .scheduleFlush:
            self.channel.eventLoop.execute { self.flush() }
        case .overflow(let queued):
            self.logger.warning(
                "engine client is not reading; closing",
                metadata: ["connection.id": "\(self.id)", "frames.queued": "\(queued)", "frames.limit": "\(self.maxQueuedFrames)"])
            self.channel.close(promise: nil)
        }
    }

    /// On the event loop: writes every pending frame, then flushes once.
    private func flush() {
        let batch = self.outbound.withLock { o -> [EngineEnvelope] in
            o.flushScheduled = false
            defer { o.pending = [] }
            return o.phase == .closed ? [] : o.pending
        }
        guard !batch.isEmpty else { return }
        for envelope in batch { self.write(envelope, replaceIfTooLarge: true) }
        self.channel.flush()
    }

    private func write(_ envelope: EngineEnvelope, replaceIfTooLarge: Bool) {
        let promise = self.channel.eventLoop.makePromise(of: Void.self)
        promise.futureResult.whenComplete { result in self.written(envelope, result, replaceIfTooLarge: replaceIfTooLarge) }
        self.channel.write(envelope, promise: promise)
    }

    /// On the event loop, when a frame's write completed (or failed).
    private func written(_ envelope: EngineEnvelope, _ result: Result<Void, any Error>, replaceIfTooLarge: Bool) {
        if replaceIfTooLarge, case .failure(FrameError.frameTooLarge(let length, let maximum)) = result {
            // The reply alone is too large for the channel: answer the call with an error
            // instead, and keep the connection (the encoder wrote nothing).
            self.logger.error(
                "engine reply over the frame limit replaced by an error",
                metadata: ["connection.id": "\(self.id)", "bytes": "\(length)", "limit": "\(maximum)"])
            let replacement = EngineEnvelope(callID: envelope.callID, body: Self.tooLarge(envelope.body))
            let stillOpen = self.outbound.withLock { o -> Bool in
                guard o.phase != .closed else { return false }
                o.outstanding += 1
                return true
            }
            if stillOpen {
                self.write(replacement, replaceIfTooLarge: false)
                self.channel.flush()
            }
        }
        let closeNow = self.outbound.withLock { o -> Bool in
            o.outstanding -= 1
            return o.phase == .closingWhenWritten && o.outstanding == 0
        }
        if closeNow { self.channel.close(promise: nil) }
    }

    private static func tooLarge(_ body: EngineEnvelope.Body?) -> EngineEnvelope.Body {
        let status = Status(code: .resourceExhausted, message: "the engine's reply is larger than the channel's frame limit")
        if case .chunk(let c) = body {
            return .chunk(GenerateChunk(requestID: c.requestID, finishReason: "error", status: status))
        }
        return .result(CallResult(status: status))
    }

    // MARK: Closing

    /// Closes the connection now (its requests are aborted when the channel goes inactive).
    func close() {
        self.outbound.withLock {
            $0.phase = .closed
            $0.pending = []
        }
        self.channel.close(promise: nil)
    }

    /// Closes the connection once every frame queued so far (and any queued meanwhile)
    /// has been written: the end of a drain, so the last chunks of finished streams reach
    /// the client.
    func closeWhenWritten() {
        let closeNow = self.outbound.withLock { o -> Bool in
            guard o.phase == .open else { return false }
            o.phase = .closingWhenWritten
            return o.outstanding == 0
        }
        if closeNow { self.channel.close(promise: nil) }
    }

    /// The channel went inactive: nothing more is written.
    func markClosed() {
        self.outbound.withLock {
            $0.phase = .closed
            $0.pending = []
        }
    }

    // MARK: Requests

    func track(_ requestID: String) {
        let inserted = self.requests.withLock { $0.running.insert(requestID).inserted }
        if inserted { self.requestsChanged(1) }
    }

    func untrack(_ requestID: String) {
        let removed = self.requests.withLock {
            _ = $0.aborted.remove(requestID)
            return $0.running.remove(requestID) != nil
        }
        if removed { self.requestsChanged(-1) }
    }

    /// Records an abort of a request of this connection (kept until it finishes).
    func markAborted(_ requestID: String) {
        self.requests.withLock { if $0.running.contains(requestID) { _ = $0.aborted.insert(requestID) } }
    }

    /// Whether a request whose submission was deferred must not run (aborted, or the
    /// connection is gone).
    func shouldAbort(_ requestID: String) -> Bool {
        let closed = self.outbound.withLock { $0.phase == .closed }
        return closed || self.requests.withLock { $0.aborted.contains(requestID) }
    }

    /// Forgets every request in flight and returns their ids (to abort them).
    func takeRequests() -> [String] {
        let taken = self.requests.withLock { r in
            defer { r = ([], []) }
            return Array(r.running)
        }
        if !taken.isEmpty { self.requestsChanged(-taken.count) }
        return taken
    }
}

/// The last handler of an engine connection's pipeline (after the frame decoder and
/// encoder of `LorikeetChannels`): hands each envelope to the server on the event loop,
/// closes the connection on a broken frame with the reason logged, and reports the
/// connection's start and end.
final class EngineChannelHandler: ChannelInboundHandler {
    typealias InboundIn = EngineEnvelope

    private let server: EngineServer
    private let connection: EngineConnection
    private var closeReason: String?

    init(server: EngineServer, connection: EngineConnection) {
        self.server = server
        self.connection = connection
    }

    func channelActive(context: ChannelHandlerContext) {
        self.server.opened(self.connection)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.server.dispatch(Self.unwrapInboundIn(data), self.connection)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Only a broken frame (bad flag, length over the limit, undecodable protobuf, a
        // stream cut inside a frame) or a socket error gets here: the connection closes.
        if self.closeReason == nil {
            self.closeReason = "\(error)"
            self.server.logger.warning("closing engine connection: \(error)", metadata: ["connection.id": "\(self.connection.id)"])
        }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.server.closed(self.connection)
        context.fireChannelInactive()
    }
}

@available(*, unavailable)
extension EngineChannelHandler: Sendable {}
