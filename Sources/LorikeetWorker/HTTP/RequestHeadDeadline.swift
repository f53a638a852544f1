import HTTPTypes
import Logging
import LorikeetJSON
import LorikeetLimits
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
///
/// The same handler bounds the head's size (`Limits.requestHeadBytes`): a head longer than
/// that is answered with a 431 in OpenAI's envelope and the connection closes, before
/// NIO's parser reaches its own limit (which Hummingbird answers with an empty 400).
final class RequestHeadDeadline {
    private enum Phase {
        /// Between requests: the next byte starts the clock.
        case waitingForHead
        /// Bytes of a head arrived, the head is not decoded yet.
        case headPending
        /// Head decoded; the body (if any) is being read.
        case inRequest
        /// The head was too large: answered with a 431, closing; bytes are dropped.
        case refused
    }

    private let timeout: TimeAmount
    private let logger: Logger
    private var phase = Phase.waitingForHead
    private var timer: Scheduled<Void>?
    private let maxHeadBytes: Int
    /// Bytes of the pending head read so far (its earlier reads).
    private var headBytes = 0
    /// The last bytes of the previous read of a pending head: a blank line may span reads.
    private var headTail: [UInt8] = []

    private init(timeout: TimeAmount, maxHeadBytes: Int, logger: Logger) {
        self.timeout = timeout
        self.maxHeadBytes = maxHeadBytes
        self.logger = logger
    }

    /// Adds the two handlers to a channel whose HTTP server pipeline is configured. Call
    /// on the channel's event loop, before it reads.
    static func install(
        on channel: any Channel, timeout: TimeAmount, maxHeadBytes: Int = Limits.requestHeadBytes, logger: Logger
    ) throws {
        let deadline = RequestHeadDeadline(timeout: timeout, maxHeadBytes: maxHeadBytes, logger: logger)
        let operations = channel.pipeline.syncOperations
        let decoder = try operations.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self)
        try operations.addHandler(BytesHandler(deadline), position: .first)
        try operations.addHandler(HeadsHandler(deadline), position: .after(decoder))
    }

    /// Raw bytes arrived; `forward` passes them on to the decoder, which may decode the
    /// whole head in the same call (no timer is scheduled then).
    fileprivate func bytesArrived(context: ChannelHandlerContext, bytes: ByteBuffer, forward: () -> Void) {
        switch self.phase {
        case .refused:
            return
        case .inRequest:
            return forward()
        case .waitingForHead:
            self.phase = .headPending
            self.headBytes = 0
            self.headTail = []
        case .headPending:
            break
        }
        guard self.headFits(bytes) else { return self.refuse(context: context) }
        self.headBytes += bytes.readableBytes
        self.headTail = Array(bytes.readableBytesView.suffix(3))
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

    /// Whether the pending head, with `bytes` added, ends (a blank line) within the limit.
    /// Bytes after the blank line (a body, a pipelined request) do not count. Only a read
    /// that would cross the limit is scanned, in place, once per head.
    private func headFits(_ bytes: ByteBuffer) -> Bool {
        let room = self.maxHeadBytes - self.headBytes
        guard bytes.readableBytes > room else { return true }
        guard room > 0 else { return false }
        // The blank line may begin in the previous read's last bytes: carry them as the
        // last three bytes seen ("\n\n" or "\n\r\n" ending at a "\n" closes the head).
        var last: (UInt8, UInt8, UInt8) = (0, 0, 0)
        for byte in self.headTail { last = (last.1, last.2, byte) }
        for byte in bytes.readableBytesView.prefix(room) {
            if byte == UInt8(ascii: "\n"), last.2 == UInt8(ascii: "\n") || (last.2 == UInt8(ascii: "\r") && last.1 == UInt8(ascii: "\n")) {
                return true
            }
            last = (last.1, last.2, byte)
        }
        return false
    }

    /// Answers 431 with OpenAI's envelope, written below the HTTP codec, and closes.
    private func refuse(context: ChannelHandlerContext) {
        self.phase = .refused
        self.cancel()
        let error = APIError(
            status: .init(code: 431, reasonPhrase: "Request Header Fields Too Large"), kind: .invalidRequest,
            message: "The request head (request line and headers) is larger than \(self.maxHeadBytes) bytes.",
            code: "request_header_fields_too_large")
        let body = JSONWriter.encode(error.json)
        var response = context.channel.allocator.buffer(capacity: body.count + 160)
        response.writeString(
            "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\n"
                + "Content-Length: \(body.count)\r\nConnection: close\r\n\r\n")
        response.writeBytes(body)
        self.logger.debug(
            "refusing HTTP request: head too large",
            metadata: ["http.remote": "\(context.channel.remoteAddress.map { "\($0)" } ?? "?")"])
        // Closing with unread bytes would reset the connection, and the client could lose
        // the answer: shut our side after the answer, drop what still arrives, close in 1 s.
        let loop = context.eventLoop.assumeIsolated()
        context.writeAndFlush(NIOAny(response)).assumeIsolated().whenComplete { _ in
            context.close(mode: .output, promise: nil)
            loop.scheduleTask(in: .seconds(1)) { context.close(promise: nil) }
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
            self.deadline.bytesArrived(context: context, bytes: self.unwrapInboundIn(data)) { context.fireChannelRead(data) }
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
