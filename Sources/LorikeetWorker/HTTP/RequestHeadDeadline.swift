import Logging
import NIOCore
import NIOHTTP1

/// The request-head deadline (slowloris): once the first byte of a request arrives (on
/// a new connection, or on a keep-alive connection after the previous request), the whole
/// head must be decoded within `timeout`, or the connection is closed without an answer.
///
/// Two handlers share one state: `bytes` at the front of the pipeline sees raw reads and
/// starts the clock; `heads` right after the HTTP decoder sees the decoded `.head` (stops
/// it) and `.end` (the next byte starts the next request). The body is not covered (it
/// has its own read timeout in the routes); an idle keep-alive connection is left to the
/// idle timeout, since the clock only starts with a byte.
///
/// Bytes that arrive in the same read as the previous request's end start no clock; the
/// next read of that request's head does.
final class RequestHeadDeadline {
    private enum Phase {
        /// Between requests: the next byte starts the clock.
        case waitingForHead
        /// Bytes of a head arrived, the head is not decoded yet.
        case headPending
        /// Head decoded; the body (if any) is being read.
        case inRequest
    }

    private let timeout: TimeAmount
    private let logger: Logger
    private var phase = Phase.waitingForHead
    private var timer: Scheduled<Void>?

    private init(timeout: TimeAmount, logger: Logger) {
        self.timeout = timeout
        self.logger = logger
    }

    /// Adds the two handlers to a channel whose HTTP server pipeline is configured. Call
    /// on the channel's event loop, before it reads.
    static func install(on channel: any Channel, timeout: TimeAmount, logger: Logger) throws {
        let deadline = RequestHeadDeadline(timeout: timeout, logger: logger)
        let operations = channel.pipeline.syncOperations
        let decoder = try operations.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self)
        try operations.addHandler(BytesHandler(deadline), position: .first)
        try operations.addHandler(HeadsHandler(deadline), position: .after(decoder))
    }

    /// Raw bytes arrived; `forward` passes them on to the decoder, which may decode the
    /// whole head in the same call (no timer is scheduled then).
    fileprivate func bytesArrived(context: ChannelHandlerContext, forward: () -> Void) {
        guard case .waitingForHead = self.phase else { return forward() }
        self.phase = .headPending
        let deadline = NIODeadline.now() + self.timeout
        forward()
        guard case .headPending = self.phase, self.timer == nil, context.channel.isActive else { return }
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            self.timer = nil
            guard case .headPending = self.phase, context.channel.isActive else { return }
            self.logger.debug(
                "closing HTTP connection: request head incomplete",
                metadata: [
                    "http.head_timeout": "\(self.timeout)",
                    "http.remote": "\(context.channel.remoteAddress.map { "\($0)" } ?? "?")",
                ])
            context.close(promise: nil)
        }
    }

    fileprivate func decoded(_ part: HTTPServerRequestPart) {
        switch part {
        case .head:
            self.phase = .inRequest
            self.cancel()
        case .body:
            break
        case .end:
            self.phase = .waitingForHead
        }
    }

    fileprivate func cancel() {
        self.timer?.cancel()
        self.timer = nil
    }

    /// First in the pipeline: raw reads.
    private final class BytesHandler: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = ByteBuffer
        typealias InboundOut = ByteBuffer
        private let deadline: RequestHeadDeadline

        init(_ deadline: RequestHeadDeadline) { self.deadline = deadline }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            self.deadline.bytesArrived(context: context) { context.fireChannelRead(data) }
        }

        func channelInactive(context: ChannelHandlerContext) {
            self.deadline.cancel()
            context.fireChannelInactive()
        }

        func handlerRemoved(context: ChannelHandlerContext) { self.deadline.cancel() }
    }

    /// Right after the HTTP decoder: decoded request parts.
    private final class HeadsHandler: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias InboundOut = HTTPServerRequestPart
        private let deadline: RequestHeadDeadline

        init(_ deadline: RequestHeadDeadline) { self.deadline = deadline }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            self.deadline.decoded(self.unwrapInboundIn(data))
            context.fireChannelRead(data)
        }
    }
}

@available(*, unavailable)
extension RequestHeadDeadline: Sendable {}
