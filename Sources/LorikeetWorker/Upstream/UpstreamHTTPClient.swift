public import NIOCore
public import NIOHTTP1
public import NIOPosix
import Synchronization

/// Where an upstream replica listens: `http://host[:port][/prefix]` (plain HTTP; TLS is
/// left to a sidecar or a private network).
public struct UpstreamEndpoint: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int
    /// Path prefix put before every route (`http://gw/vllm-a` -> `/vllm-a/v1/...`); "" = none.
    public var pathPrefix: String

    public init(host: String, port: Int, pathPrefix: String = "") {
        self.host = host
        self.port = port
        self.pathPrefix = pathPrefix
    }

    /// Parses `http://host[:port][/prefix]`; the port defaults to 80.
    public init(parsing text: String) throws(UpstreamError) {
        guard text.hasPrefix("http://") else {
            throw UpstreamError.invalidURL("\(text): only http:// upstream URLs are supported")
        }
        var rest = Substring(text.dropFirst("http://".count))
        var prefix = ""
        if let slash = rest.firstIndex(of: "/") {
            prefix = String(rest[slash...])
            rest = rest[..<slash]
            while prefix.hasSuffix("/") { prefix.removeLast() }
        }
        var host = String(rest)
        var port = 80
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { throw UpstreamError.invalidURL("\(text): bad IPv6 host") }
            let after = host[host.index(after: close)...]
            if after.hasPrefix(":") {
                guard let parsed = Int(after.dropFirst()), (1...65535).contains(parsed) else {
                    throw UpstreamError.invalidURL("\(text): bad port")
                }
                port = parsed
            }
            host = String(host[host.index(after: host.startIndex)..<close])
        } else if let colon = host.lastIndex(of: ":") {
            guard let parsed = Int(host[host.index(after: colon)...]), (1...65535).contains(parsed) else {
                throw UpstreamError.invalidURL("\(text): bad port")
            }
            port = parsed
            host = String(host[..<colon])
        }
        guard !host.isEmpty else { throw UpstreamError.invalidURL("\(text): no host") }
        self.init(host: host, port: port, pathPrefix: prefix)
    }

    public var description: String {
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        return "http://\(host):\(self.port)\(self.pathPrefix)"
    }
}

/// A failure talking to an upstream replica (not an HTTP error status: those are responses).
public enum UpstreamError: Error, Sendable, CustomStringConvertible {
    case invalidURL(String)
    /// No connection could be made (nothing was sent): safe to try another replica.
    case connect(String)
    /// The connection broke or the replica sent something unparsable; `sent` tells whether
    /// the request may have reached the replica.
    case transport(String, sent: Bool)
    /// No response head within the deadline.
    case timeout(String)

    public var description: String {
        switch self {
        case .invalidURL(let message): "invalid upstream URL \(message)"
        case .connect(let message): "cannot connect: \(message)"
        case .transport(let message, _): "connection failed: \(message)"
        case .timeout(let message): "timed out: \(message)"
        }
    }
}

/// A small HTTP/1.1 client for one upstream replica, on SwiftNIO's `NIOHTTP1` codec (no
/// extra package): keep-alive connections pooled per replica, request bodies sent in one
/// write, response bodies handed over chunk by chunk as they arrive (SSE passes through
/// unbuffered). Dropping or cancelling a response before its end closes the connection,
/// which is how vLLM and SGLang learn that the client went away (they abort the request).
public final class UpstreamHTTPClient: Sendable {
    public let endpoint: UpstreamEndpoint
    private let group: any EventLoopGroup
    private let connectTimeout: TimeAmount
    private let maxIdleConnections: Int
    private let idle = Mutex<[UpstreamConnection]>([])

    public init(
        endpoint: UpstreamEndpoint, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        connectTimeout: Duration = .seconds(3), maxIdleConnections: Int = 64
    ) {
        self.endpoint = endpoint
        self.group = group
        self.connectTimeout = TimeAmount(connectTimeout)
        self.maxIdleConnections = maxIdleConnections
    }

    /// Closes the pooled connections.
    public func shutdown() {
        let connections = self.idle.withLock { idle -> [UpstreamConnection] in
            defer { idle = [] }
            return idle
        }
        for connection in connections { connection.channel.close(promise: nil) }
    }

    /// Sends one request and returns once the response head arrived; the body follows
    /// through `UpstreamResponse.body`. A pooled connection the replica closed meanwhile is
    /// retried once on a fresh connection.
    public func execute(
        method: HTTPMethod, path: String, headers: [(String, String)] = [], body: ByteBuffer? = nil,
        headTimeout: Duration
    ) async throws(UpstreamError) -> UpstreamResponse {
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: self.endpoint.pathPrefix + path)
        head.headers.add(name: "Host", value: self.hostHeader)
        for (name, value) in headers { head.headers.add(name: name, value: value) }
        if let body {
            head.headers.replaceOrAdd(name: "Content-Length", value: String(body.readableBytes))
        } else if method == .POST || method == .PUT {
            head.headers.replaceOrAdd(name: "Content-Length", value: "0")
        }
        for attempt in 0..<2 {
            let (connection, reused) = try await self.connection(forceFresh: attempt > 0)
            do {
                return try await self.send(head: head, body: body, on: connection, headTimeout: headTimeout)
            } catch {
                // A kept-alive connection the replica closed meanwhile (its idle timeout): no
                // response head came, so try once more on a fresh connection.
                if reused, case .transport = error { continue }
                throw error
            }
        }
        throw UpstreamError.transport("connection closed twice", sent: false)
    }

    private var hostHeader: String {
        let host = self.endpoint.host.contains(":") ? "[\(self.endpoint.host)]" : self.endpoint.host
        return self.endpoint.port == 80 ? host : "\(host):\(self.endpoint.port)"
    }

    private func connection(forceFresh: Bool) async throws(UpstreamError) -> (UpstreamConnection, reused: Bool) {
        if !forceFresh {
            while let pooled = self.idle.withLock({ $0.popLast() }) {
                if pooled.channel.isActive { return (pooled, true) }
            }
        }
        let bootstrap = ClientBootstrap(group: self.group)
            .connectTimeout(self.connectTimeout)
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(UpstreamResponseHandler())
                }
            }
        do {
            let channel = try await bootstrap.connect(host: self.endpoint.host, port: self.endpoint.port).get()
            return (UpstreamConnection(channel: channel), false)
        } catch {
            throw UpstreamError.connect("\(self.endpoint): \(error)")
        }
    }

    private func send(
        head: HTTPRequestHead, body: ByteBuffer?, on connection: UpstreamConnection, headTimeout: Duration
    ) async throws(UpstreamError) -> UpstreamResponse {
        let (parts, continuation) = AsyncThrowingStream.makeStream(of: HTTPClientResponsePart.self)
        let channel = connection.channel
        continuation.onTermination = { termination in
            // The consumer dropped the response before its end (or its task was cancelled):
            // closing the connection tells the replica to abort the request.
            if case .cancelled = termination { channel.close(promise: nil) }
        }
        let written: EventLoopFuture<Void> = channel.eventLoop.flatSubmit {
            guard let handler = try? channel.pipeline.syncOperations.handler(type: UpstreamResponseHandler.self) else {
                return channel.eventLoop.makeFailedFuture(UpstreamError.transport("connection has no handler", sent: false))
            }
            handler.begin(continuation, headTimeout: TimeAmount(headTimeout), channel: channel)
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            if let body { channel.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil) }
            return channel.writeAndFlush(HTTPClientRequestPart.end(nil))
        }
        do {
            try await written.get()
        } catch {
            continuation.finish()
            channel.close(promise: nil)
            throw error as? UpstreamError ?? UpstreamError.transport("\(self.endpoint): \(error)", sent: false)
        }
        let iterator = SequentialIterator(parts.makeAsyncIterator())
        let first: HTTPClientResponsePart?
        do {
            first = try await iterator.next()
        } catch {
            channel.close(promise: nil)
            throw error as? UpstreamError ?? UpstreamError.transport("\(self.endpoint): \(error)", sent: true)
        }
        guard case .head(let responseHead) = first else {
            channel.close(promise: nil)
            throw UpstreamError.transport("\(self.endpoint): the connection closed before a response", sent: true)
        }
        let keepAlive = responseHead.isKeepAlive
        let body = UpstreamResponseBody(iterator: iterator, channel: channel) { [weak self] in
            guard keepAlive, let self else {
                channel.close(promise: nil)
                return
            }
            self.release(connection)
        }
        var headers: [(String, String)] = []
        for header in responseHead.headers { headers.append((header.name, header.value)) }
        return UpstreamResponse(status: Int(responseHead.status.code), headers: headers, body: body)
    }

    private func release(_ connection: UpstreamConnection) {
        guard connection.channel.isActive else { return }
        let kept = self.idle.withLock { idle -> Bool in
            guard idle.count < self.maxIdleConnections else { return false }
            idle.append(connection)
            return true
        }
        if !kept { connection.channel.close(promise: nil) }
    }
}

/// One pooled connection.
final class UpstreamConnection: Sendable {
    let channel: any Channel
    init(channel: any Channel) { self.channel = channel }
}

/// A response: status and headers; the body is read with `body.next()`.
public struct UpstreamResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: UpstreamResponseBody

    /// First value of a header (case-insensitive).
    public func header(_ name: String) -> String? {
        self.headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }

    /// Reads the whole body (at most `limit` bytes; more is an error and closes the connection).
    public func collect(limit: Int = 16 * 1024 * 1024) async throws(UpstreamError) -> ByteBuffer {
        var buffer = ByteBuffer()
        while var chunk = try await self.body.next() {
            guard buffer.readableBytes + chunk.readableBytes <= limit else {
                self.body.cancel()
                throw UpstreamError.transport("response body larger than \(limit) bytes", sent: true)
            }
            buffer.writeBuffer(&chunk)
        }
        return buffer
    }
}

/// The body of a response, read by one task at a time, in order.
// Unchecked Sendable is safe: `iterator` and `onEnd` are only touched by the single task
// that reads the body, one call at a time (the response is handed from the request task to
// the response-writer closure, which runs inline in that task); `cancel()` runs in that
// same task, and `channel.close` is thread-safe.
public final class UpstreamResponseBody: @unchecked Sendable {
    private var iterator: SequentialIterator<HTTPClientResponsePart>?
    private let channel: any Channel
    private var onEnd: (@Sendable () -> Void)?

    init(iterator: SequentialIterator<HTTPClientResponsePart>, channel: any Channel, onEnd: @escaping @Sendable () -> Void) {
        self.iterator = iterator
        self.channel = channel
        self.onEnd = onEnd
    }

    /// The next chunk as the replica sent it, or nil at the end of the body.
    public func next() async throws(UpstreamError) -> ByteBuffer? {
        guard let iterator = self.iterator else { return nil }
        while true {
            let part: HTTPClientResponsePart?
            do {
                part = try await iterator.next()
            } catch {
                self.iterator = nil
                self.channel.close(promise: nil)
                throw error as? UpstreamError ?? UpstreamError.transport("\(error)", sent: true)
            }
            switch part {
            case .body(let buffer):
                return buffer
            case .end:
                self.iterator = nil
                let onEnd = self.onEnd
                self.onEnd = nil
                onEnd?()
                return nil
            case .head, .none:
                self.iterator = nil
                self.channel.close(promise: nil)
                throw UpstreamError.transport("the replica closed the connection mid-response", sent: true)
            }
        }
    }

    /// Abandons the response: the connection is closed (the replica aborts the request).
    public func cancel() {
        self.iterator = nil
        self.onEnd = nil
        self.channel.close(promise: nil)
    }

    deinit {
        if self.iterator != nil { self.channel.close(promise: nil) }
    }
}

/// Feeds the response parts of the request in flight to its stream; fails it when the
/// connection closes, errors, or no head arrives within the deadline.
final class UpstreamResponseHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart

    private var sink: AsyncThrowingStream<HTTPClientResponsePart, any Error>.Continuation?
    private var headTimer: Scheduled<Void>?

    /// Called on the event loop before the request is written.
    func begin(
        _ sink: AsyncThrowingStream<HTTPClientResponsePart, any Error>.Continuation, headTimeout: TimeAmount,
        channel: any Channel
    ) {
        self.sink = sink
        self.headTimer = channel.eventLoop.scheduleTask(in: headTimeout) {
            sink.finish(throwing: UpstreamError.timeout("no response within \(headTimeout)"))
            channel.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = self.unwrapInboundIn(data)
        if case .head = part {
            self.headTimer?.cancel()
            self.headTimer = nil
        }
        self.sink?.yield(part)
        if case .end = part {
            self.sink?.finish()
            self.sink = nil
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.fail(UpstreamError.transport("the replica closed the connection", sent: true))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.fail(UpstreamError.transport("\(error)", sent: true))
        context.close(promise: nil)
    }

    private func fail(_ error: UpstreamError) {
        self.headTimer?.cancel()
        self.headTimer = nil
        self.sink?.finish(throwing: error)
        self.sink = nil
    }
}
