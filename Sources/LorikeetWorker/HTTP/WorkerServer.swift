package import HummingbirdCore
package import Logging
import LorikeetLimits
package import NIOCore
import NIOExtras
import NIOPosix
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Where the worker's HTTP listener comes from.
package enum HTTPListenTarget: Sendable, Equatable {
    /// A listening TCP socket inherited from the supervisor (`--listen-fd 3`), already
    /// bound and listening (one `SO_REUSEPORT` socket per worker slot).
    case inheritedFD(Int32)
    /// Bind `host:port` here (`SO_REUSEADDR`); port 0 picks a free port.
    case address(host: String, port: Int)
}

/// Settings of the HTTP listener and connections.
package struct HTTPServerConfiguration: Sendable {
    package var listen: HTTPListenTarget
    /// An idle keep-alive connection is closed after this long.
    package var idleTimeout: Duration
    /// Once the first byte of a request arrives, its whole head (request line and
    /// headers) must arrive within this long, or the connection is closed unanswered
    /// (slowloris). The body is not covered; an idle keep-alive connection waits for the
    /// idle timeout, as the clock starts with a byte.
    package var headTimeout: Duration
    /// `listen(2)` backlog when binding here.
    package var backlog: Int32
    /// Bind with `SO_REUSEPORT`, so a successor can bind the same address while this
    /// process drains (the per-slot metrics listener during a rolling restart).
    package var reusePort: Bool

    package init(
        listen: HTTPListenTarget, idleTimeout: Duration = .seconds(75), headTimeout: Duration = .seconds(30), backlog: Int32 = 1024,
        reusePort: Bool = false
    ) {
        self.listen = listen
        self.idleTimeout = idleTimeout
        self.headTimeout = headTimeout
        self.backlog = backlog
        self.reusePort = reusePort
    }
}

/// The worker's HTTP/1.1 server: Hummingbird's `HTTP1Channel` on our own NIO
/// `ServerBootstrap`, so it can serve on an inherited listening fd as well as on an
/// address it binds itself.
///
/// Graceful drain (`drain(grace:)`, or `beginDrain(grace:)` from a synchronous context
/// such as a graceful-shutdown handler): stop accepting, let idle keep-alive connections
/// close, let requests in flight finish (their responses carry `Connection: close`), and
/// force-close whatever is still open when the grace period ends. `run()` returns when
/// every connection is closed.
package final class WorkerServer: Sendable {
    /// Answers one request (Hummingbird's `HTTPChannelHandler.Responder`).
    package typealias Responder = HTTPChannelHandler.Responder

    private enum Phase {
        case idle
        case running(serverChannel: any Channel, quiescer: ServerQuiescingHelper, drained: EventLoopPromise<Void>)
        case draining(drained: EventLoopPromise<Void>)
        case stopped
    }

    private struct State {
        var phase: Phase = .idle
        var children: [ObjectIdentifier: any Channel] = [:]
        var drainRequested: (grace: Duration, handOffListener: Bool?)?
    }

    private let configuration: HTTPServerConfiguration
    private let responder: Responder
    private let eventLoopGroup: any EventLoopGroup
    private let logger: Logger
    private let state = Mutex(State())
    private let boundAddress = Mutex<SocketAddress?>(nil)
    private let listenerClosedSignal = Mutex<(closed: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    package init(
        configuration: HTTPServerConfiguration, responder: @escaping Responder,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger
    ) {
        self.configuration = configuration
        self.responder = responder
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
    }

    /// The address the listener is bound to, once serving.
    package var localAddress: SocketAddress? { self.boundAddress.withLock { $0 } }

    /// Open HTTP connections.
    package var connectionCount: Int { self.state.withLock { $0.children.count } }

    /// Binds (or adopts the inherited fd), calls `onReady` once the listener is serving,
    /// then serves until drained. Throws when the listener cannot be set up.
    package func run(onReady: @Sendable (SocketAddress?) async -> Void = { _ in }) async throws {
        let quiescer = ServerQuiescingHelper(group: self.eventLoopGroup)
        let http1 = HTTP1Channel(
            responder: self.responder,
            configuration: .init(
                idleTimeout: TimeAmount(self.configuration.idleTimeout),
                // The head's byte limit (`RequestHeadDeadline`, a 431) is the one that applies:
                // the parser's own limits sit above it (the smallest header line is 4 bytes).
                httpDecoderConfiguration: .init(maxHeaderFieldCount: Limits.requestHeadBytes / 4))
        )
        var bootstrap = ServerBootstrap(group: self.eventLoopGroup)
            .serverChannelOption(ChannelOptions.backlog, value: self.configuration.backlog)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiescer.makeServerChannelHandler(channel: channel))
                }
            }
        // Only ever set, never cleared: clearing SO_REUSEPORT on an inherited slot listener
        // would take it out of the kernel's spreading (every connection went to the other slot).
        if self.configuration.reusePort {
            bootstrap = bootstrap.serverChannelOption(ChannelOptions.socket(SocketOptionLevel(SOL_SOCKET), SO_REUSEPORT), value: 1)
        }
        let logger = self.logger
        let headTimeout = TimeAmount(self.configuration.headTimeout)
        let setup: @Sendable (any Channel) -> EventLoopFuture<HTTP1Channel.Value> = { channel in
            self.track(channel)
            return http1.setup(channel: channel, logger: logger).flatMapThrowing { value in
                try RequestHeadDeadline.install(on: channel, timeout: headTimeout, logger: logger)
                try PeerClosedWatch.install(on: channel)
                return value
            }
        }
        let serverChannel: NIOAsyncChannel<HTTP1Channel.Value, Never>
        switch self.configuration.listen {
        case .inheritedFD(let fd):
            serverChannel = try await bootstrap.bind(fd, serverBackPressureStrategy: nil, childChannelInitializer: setup)
        case .address(let host, let port):
            serverChannel = try await bootstrap.bind(
                host: host, port: port, serverBackPressureStrategy: nil, childChannelInitializer: setup)
        }
        let channel = serverChannel.channel
        channel.closeFuture.whenComplete { _ in self.markListenerClosed() }
        let drained = channel.eventLoop.makePromise(of: Void.self)
        let pendingDrain = self.state.withLock { state -> (grace: Duration, handOffListener: Bool?)? in
            state.phase = .running(serverChannel: channel, quiescer: quiescer, drained: drained)
            return state.drainRequested
        }
        self.boundAddress.withLock { $0 = channel.localAddress }
        logger.info("HTTP server listening", metadata: ["http.address": "\(channel.localAddress.map { "\($0)" } ?? "?")"])
        if let pendingDrain { self.beginDrain(grace: pendingDrain.grace, handOffListener: pendingDrain.handOffListener) }

        await onReady(channel.localAddress)
        await withDiscardingTaskGroup { group in
            do {
                try await serverChannel.executeThenClose { inbound in
                    for try await child in inbound {
                        group.addTask { await http1.handle(value: child, logger: logger) }
                    }
                }
            } catch {
                logger.error("HTTP accept loop failed", metadata: ["error": "\(error)"])
            }
        }
        drained.succeed()
        self.state.withLock { $0.phase = .stopped }
        logger.info("HTTP server stopped")
    }

    /// Starts a graceful drain and returns at once (usable from synchronous handlers).
    /// Connections still open after `grace` are closed.
    ///
    /// - Parameter handOffListener: whether another process keeps the listening socket
    ///   open and will accept what queues on it (a supervised slot whose successor takes
    ///   over). Then accepts pause first, so queued connections wait in the kernel for the
    ///   successor. Otherwise (nil with a listener this process bound itself, or a retired
    ///   slot) the listener is closed at once, so the kernel stops queueing connections on
    ///   a socket nobody will accept from. Nil: hand off when the listener was inherited.
    package func beginDrain(grace: Duration, handOffListener: Bool? = nil) {
        enum Action {
            case none
            case quiesce(ServerQuiescingHelper, any Channel, EventLoopPromise<Void>)
        }
        let action = self.state.withLock { state -> Action in
            switch state.phase {
            case .idle:
                state.drainRequested = (grace, handOffListener)
                return .none
            case .running(let serverChannel, let quiescer, let drained):
                state.phase = .draining(drained: drained)
                return .quiesce(quiescer, serverChannel, drained)
            case .draining, .stopped:
                return .none
            }
        }
        guard case .quiesce(let quiescer, let serverChannel, let drained) = action else { return }
        let handOff: Bool
        if let handOffListener {
            handOff = handOffListener
        } else if case .inheritedFD = self.configuration.listen {
            handOff = true
        } else {
            handOff = false
        }
        self.logger.info("draining HTTP connections", metadata: ["drain.grace": "\(grace)", "drain.hand_off": "\(handOff)"])
        // Handing off: stop calling accept() first (connections keep queueing in the kernel,
        // where the listener's next owner picks them up) and let the connections already
        // accepted reach the HTTP handler before the listener closes. Not handing off: keep
        // accepting up to the close, which comes at once. Either way quiesce a little
        // later: quiescing a connection whose request is still on the wire would reset a
        // client.
        let closeListener: @Sendable () -> Void = {
            serverChannel.eventLoop.scheduleTask(in: .milliseconds(handOff ? 100 : 0)) {
                serverChannel.close(promise: nil)
            }
            serverChannel.eventLoop.scheduleTask(in: .milliseconds(400)) {
                let quiesced = serverChannel.eventLoop.makePromise(of: Void.self)
                quiescer.initiateShutdown(promise: quiesced)
            }
        }
        if handOff {
            serverChannel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in closeListener() }
        } else {
            serverChannel.eventLoop.execute(closeListener)
        }
        let forceClose = serverChannel.eventLoop.scheduleTask(in: TimeAmount(grace)) {
            let open = self.state.withLock { Array($0.children.values) }
            if !open.isEmpty {
                self.logger.warning("closing connections still open after the drain grace", metadata: ["count": "\(open.count)"])
            }
            for channel in open { channel.close(promise: nil) }
        }
        drained.futureResult.whenComplete { _ in forceClose.cancel() }
    }

    /// Drains gracefully (see `beginDrain(grace:)`) and returns when every connection is
    /// closed and `run()` is about to return.
    package func drain(grace: Duration) async {
        self.beginDrain(grace: grace)
        let drained: EventLoopPromise<Void>? = self.state.withLock { state in
            switch state.phase {
            case .running(_, _, let drained), .draining(let drained): return drained
            case .idle, .stopped: return nil
            }
        }
        try? await drained?.futureResult.get()
    }

    /// Returns once this process no longer accepts connections (the listening channel is
    /// closed; an inherited listening socket stays open in the supervisor, so connections
    /// wait there for the next process instead of being refused).
    package func listenerClosed() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let closed = self.listenerClosedSignal.withLock { state -> Bool in
                if state.closed { return true }
                state.waiters.append(continuation)
                return false
            }
            if closed { continuation.resume() }
        }
    }

    private func markListenerClosed() {
        let waiters = self.listenerClosedSignal.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.closed = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    private func track(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        self.state.withLock { $0.children[id] = channel }
        channel.closeFuture.whenComplete { _ in
            _ = self.state.withLock { $0.children.removeValue(forKey: id) }
        }
    }
}

extension WorkerServer {
    /// Runs `self` with `companion` (the metrics listener) beside it: both serve until
    /// `self` has drained, then the companion drains too. A companion that cannot bind is
    /// logged and skipped; the main listener keeps serving.
    package func run(
        alongside companion: WorkerServer?, logger: Logger, onReady: @Sendable (SocketAddress?) async -> Void = { _ in }
    ) async throws {
        guard let companion else { return try await self.run(onReady: onReady) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    try await companion.run()
                } catch {
                    logger.error("metrics listener failed; serving without it", metadata: ["error": "\(error)"])
                }
            }
            do {
                try await self.run(onReady: onReady)
            } catch {
                await companion.drain(grace: .seconds(1))
                throw error
            }
            await companion.drain(grace: .seconds(1))
            try await group.waitForAll()
        }
    }
}
