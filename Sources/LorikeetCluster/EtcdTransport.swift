import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// One etcd member's client address, `host:port` (from `127.0.0.1:2379`, `http://host:2379`
/// or `http://[::1]:2379`). Plain HTTP only: etcd's TLS client URLs need a TLS stack this
/// module does not have; run etcd's client port on a private network or a local proxy.
package struct EtcdEndpoint: Sendable, Hashable, CustomStringConvertible {
    package var host: String
    package var port: Int

    package init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port` or `http://host:port[/]`.
    package init(parsing text: String) throws(EtcdError) {
        var rest = Substring(text)
        if rest.hasPrefix("https://") {
            throw .invalidArgument("\(text): TLS (https) etcd endpoints are not supported; use http:// on a private network")
        }
        if rest.hasPrefix("http://") { rest = rest.dropFirst("http://".count) }
        while rest.hasSuffix("/") { rest = rest.dropLast() }
        let host: Substring
        let portText: Substring
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]"), rest[rest.index(after: close)...].hasPrefix(":") else {
                throw .invalidArgument("\(text): expected [ipv6]:port")
            }
            host = rest[rest.index(after: rest.startIndex)..<close]
            portText = rest[rest.index(close, offsetBy: 2)...]
        } else {
            guard let colon = rest.lastIndex(of: ":") else { throw .invalidArgument("\(text): expected host:port") }
            host = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
        }
        guard !host.isEmpty, !host.contains("/") else { throw .invalidArgument("\(text): no host") }
        guard let port = Int(portText), (1...65535).contains(port) else { throw .invalidArgument("\(text): bad port") }
        self.init(host: String(host), port: port)
    }

    package var description: String { self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)" }
}

/// An HTTP/1.1 connection to one member, as an async channel (back pressure on reads).
typealias EtcdHTTPChannel = NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>

/// Why the client closed a connection on purpose (deadline, idle watch), so that the task
/// reading it reports that instead of "connection closed".
final class CloseReason: Sendable {
    private let reason = Mutex<EtcdError?>(nil)

    func set(_ error: EtcdError) { self.reason.withLock { if $0 == nil { $0 = error } } }
    var error: EtcdError? { self.reason.withLock { $0 } }
}

/// Closes a watch connection on which nothing arrived for `timeout` (the client asks for
/// progress more often than that, so a silent member is frozen or cut off).
final class ReadIdleCloser: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias InboundOut = HTTPClientResponsePart

    private let timeout: TimeAmount
    private let reason: CloseReason
    private let description: String
    private var timer: Scheduled<Void>?

    init(timeout: TimeAmount, reason: CloseReason, description: String) {
        self.timeout = timeout
        self.reason = reason
        self.description = description
    }

    func handlerAdded(context: ChannelHandlerContext) { self.arm(context: context) }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.arm(context: context)
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
    }

    private func arm(context: ChannelHandlerContext) {
        self.timer?.cancel()
        let channel = context.channel
        let reason = self.reason
        let message = "nothing from \(self.description) for \(self.timeout.nanoseconds / 1_000_000) ms (member frozen or cut off)"
        self.timer = context.eventLoop.scheduleTask(in: self.timeout) {
            reason.set(.timeout(message))
            channel.close(promise: nil)
        }
    }
}

extension TimeAmount {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}

enum EtcdTransport {
    /// Opens a connection to `endpoint`; `.unreachable` when nothing accepts it in time.
    static func connect(
        to endpoint: EtcdEndpoint, group: any EventLoopGroup, timeout: Duration, idle: (TimeAmount, CloseReason)? = nil
    ) async throws(EtcdError) -> EtcdHTTPChannel {
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(TimeAmount(timeout))
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
        do {
            return try await bootstrap.connect(host: endpoint.host, port: endpoint.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    if let (timeout, reason) = idle {
                        try channel.pipeline.syncOperations.addHandler(
                            ReadIdleCloser(timeout: timeout, reason: reason, description: endpoint.description))
                    }
                    return try EtcdHTTPChannel(wrappingChannelSynchronously: channel)
                }
            }
        } catch {
            throw .unreachable("cannot connect to \(endpoint): \(error)")
        }
    }

    /// The request head of a gateway call: `POST path`, JSON, and `hasleader` metadata so
    /// that a member without a leader refuses at once ("etcdserver: no leader") instead of
    /// waiting out its request timeout or serving a watch that never sees another event.
    static func head(_ endpoint: EtcdEndpoint, path: String, contentLength: Int?) -> HTTPRequestHead {
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: path)
        head.headers.add(name: "Host", value: endpoint.description)
        head.headers.add(name: "Content-Type", value: "application/json")
        head.headers.add(name: "Grpc-Metadata-hasleader", value: "true")
        if let contentLength {
            head.headers.add(name: "Content-Length", value: String(contentLength))
            head.headers.add(name: "Connection", value: "close")
        } else {
            // A stream (watch) whose body stays open. etcd 3.4's gateway answers such a
            // request only when it asked for `100-continue` (measured: without it, no
            // response head ever comes); NIO drops the 100 response for us.
            head.headers.add(name: "Transfer-Encoding", value: "chunked")
            head.headers.add(name: "Expect", value: "100-continue")
        }
        return head
    }
}
