package import Logging
import LorikeetProto
package import NIOCore
import NIOPosix
import Synchronization

/// A multiplexed request/reply client over one framed SwiftNIO connection, for any
/// channel whose envelope carries a `call_id` (the engine channel, the control channel).
///
/// - Calls get fresh `call_id`s; replies are matched by id. Unary calls take an optional
///   deadline (a timer on the connection's event loop) and fail at once when their task is
///   cancelled. Streamed calls deliver every envelope with their id until `isFinal` says so.
/// - A slow consumer fails alone: the connection is shared by every call (every
///   generation of a worker), so reading it is never paused for one consumer. A stream
///   whose consumer falls `streamAbortLag` envelopes behind its high watermark (a client
///   that stopped reading its response) ends with `.consumerTooSlow` and is abandoned
///   (`onAbandoned` tells the peer); every other call carries on. Memory per stream is
///   bounded by the high watermark plus that lag.
/// - Envelopes whose id matches no call in flight (calls the peer makes, late replies)
///   go to `onUnsolicited`, on the event loop, in arrival order.
/// - When the connection closes (peer gone, bad inbound frame), every call in flight on it
///   fails with `.connectionLost` and `onConnectionLost` runs; the next call reconnects
///   (except on an adopted socket).
///
/// No threads of its own: all I/O runs on `group`'s event loops.
package final class FramedCallClient<Message: CallEnvelope>: Sendable {
    /// Tunables; the defaults suit the engine and control channels.
    package struct Configuration: Sendable {
        /// Largest frame payload sent and accepted (`Limits.channelFrameBytes`).
        package var maximumFrameSize: Int
        /// The first `call_id` this client assigns (the control channel gives the worker
        /// the upper half so its ids never collide with the supervisor's).
        package var firstCallID: UInt64
        package var streamLowWatermark: Int
        package var streamHighWatermark: Int
        /// Envelopes a stream may buffer beyond its high watermark before it fails alone.
        package var streamAbortLag: Int
        package var connectTimeout: Duration

        package init(
            maximumFrameSize: Int = Frame.defaultMaximumSize, firstCallID: UInt64 = 1, streamLowWatermark: Int = 64,
            streamHighWatermark: Int = 1024, streamAbortLag: Int = 16_384, connectTimeout: Duration = .seconds(2)
        ) {
            self.streamAbortLag = streamAbortLag
            self.maximumFrameSize = maximumFrameSize
            self.firstCallID = firstCallID
            self.streamLowWatermark = streamLowWatermark
            self.streamHighWatermark = streamHighWatermark
            self.connectTimeout = connectTimeout
        }
    }

    /// The replies of one streamed call, with back pressure.
    package typealias ReplyStream = NIOThrowingAsyncSequenceProducer<
        Message, any Error, NIOAsyncSequenceProducerBackPressureStrategies.HighLowWatermark, FramedStreamDelegate
    >

    package let endpoint: FramedEndpoint
    package let configuration: Configuration
    private let group: any EventLoopGroup
    private let logger: Logger
    private let onUnsolicited: @Sendable (Message) -> Void
    private let onConnectionLost: @Sendable (String) -> Void
    private let state: Mutex<State>

    private struct Connection: Sendable {
        let id: UInt64
        let channel: any Channel
    }

    private enum Kind {
        case unary(CheckedContinuation<Message, any Error>)
        /// The request is kept for `finishStreams` and `onAbandoned` (unary calls keep none).
        case stream(
            ReplyStream.Source, request: Message, isFinal: @Sendable (Message) -> Bool, onAbandoned: @Sendable (Message) -> Void
        )
    }

    private struct Pending {
        var connectionID: UInt64
        var kind: Kind
        var deadline: Scheduled<Void>?
    }

    private enum ConnectStep {
        case ready(Connection)
        case wait(EventLoopFuture<Connection>)
        case start(UInt64, EventLoopPromise<Connection>)
        case fail(FramedCallError)
    }

    private struct State {
        var connection: Connection?
        var connecting: EventLoopFuture<Connection>?
        var nextConnectionID: UInt64 = 1
        var nextCallID: UInt64
        var pending: [UInt64: Pending] = [:]
        /// Streams over their high watermark: envelopes buffered beyond it.
        var laggingStreams: [UInt64: Int] = [:]
        var isShutDown = false
        var adoptedSocketUsed = false

        mutating func takeCallID() -> UInt64 {
            defer { self.nextCallID &+= 1 }
            return self.nextCallID
        }
    }

    /// A client of `endpoint`. Nothing connects until the first call (or `connect()`).
    package init(
        endpoint: FramedEndpoint, configuration: Configuration = Configuration(),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger,
        onUnsolicited: @escaping @Sendable (Message) -> Void = { _ in },
        onConnectionLost: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        self.endpoint = endpoint
        self.configuration = configuration
        self.group = group
        self.logger = logger
        self.onUnsolicited = onUnsolicited
        self.onConnectionLost = onConnectionLost
        self.state = Mutex(State(nextCallID: configuration.firstCallID))
    }

    /// Closes the connection; calls in flight and later calls fail with `.unavailable`.
    ///
    /// There is deliberately no `deinit` that closes the channel: the last reference can
    /// be released inside an event loop's task lock (NIO releases a cancelled scheduled
    /// task's closure under it), and a close there re-enters that lock (EDEADLK, a crash in
    /// debug builds). An abandoned client's connection stays open until the process exits
    /// or the peer closes it; the handler holds the client weakly.
    package func shutdown() {
        let (connection, failed) = self.state.withLock { state -> (Connection?, [Pending]) in
            state.isShutDown = true
            defer {
                state.connection = nil
                state.pending = [:]
                state.laggingStreams = [:]
            }
            return (state.connection, Array(state.pending.values))
        }
        connection?.channel.close(promise: nil)
        for pending in failed { Self.complete(pending, with: .failure(.unavailable("client shut down"))) }
    }

    // MARK: Calls

    /// Sends `request` under a fresh call id (or `callID`) and waits for the reply with
    /// that id, at most `timeout`. Reconnects first if needed; a request that could not be
    /// written on a connection that turned out dead is retried once on a fresh one.
    package func call(_ request: Message, callID: UInt64? = nil, timeout: Duration?) async throws(FramedCallError) -> Message {
        var attempt = 0
        while true {
            attempt += 1
            let connection = try await self.liveConnection()
            do {
                return try await self.unary(request, callID: callID, timeout: timeout, on: connection)
            } catch .connectionLost(let reason) where attempt == 1 && reason.hasPrefix(Self.writeFailurePrefix) {
                continue
            }
        }
    }

    /// Sends `request` and returns the stream of its replies; the stream ends after the
    /// reply for which `isFinal` is true. When the consumer stops early (drops the stream,
    /// cancels its task), the call is forgotten and `onAbandoned` runs with the request so
    /// the caller can tell the peer. Throws when the request cannot be written.
    package func stream(
        _ request: Message, isFinal: @escaping @Sendable (Message) -> Bool,
        onAbandoned: @escaping @Sendable (Message) -> Void
    ) async throws(FramedCallError) -> ReplyStream {
        let connection = try await self.liveConnection()
        var request = request
        request.callID = self.state.withLock { $0.takeCallID() }
        let id = request.callID
        let produced = ReplyStream.makeSequence(
            elementType: Message.self,
            backPressureStrategy: .init(
                lowWatermark: self.configuration.streamLowWatermark, highWatermark: self.configuration.streamHighWatermark),
            finishOnDeinit: false,
            delegate: FramedStreamDelegate(
                produceMore: { [weak self] in self?.resume(stream: id) },
                didTerminate: { [weak self] in self?.abandoned(stream: id) }))
        self.state.withLock { state in
            state.pending[id] = Pending(
                connectionID: connection.id,
                kind: .stream(produced.source, request: request, isFinal: isFinal, onAbandoned: onAbandoned))
        }
        do {
            try await connection.channel.writeAndFlush(request)
        } catch {
            let failure = self.writeFailure(error, connection: connection)
            // Not sent: forget the call without telling the peer about it.
            if let pending = self.state.withLock({ $0.pending.removeValue(forKey: id) }) {
                Self.complete(pending, with: .failure(failure))
            }
            throw failure
        }
        return produced.sequence
    }

    /// Ends the streams whose request matches (their consumers see a normal end) and
    /// returns how many there were. The peer is not told; that is the caller's business.
    package func finishStreams(where matches: (Message) -> Bool) -> Int {
        let finished = self.state.withLock { state -> [Pending] in
            let ids = state.pending.compactMap { entry -> UInt64? in
                guard case .stream(_, let request, _, _) = entry.value.kind, matches(request) else { return nil }
                return entry.key
            }
            return ids.compactMap { id in
                state.laggingStreams[id] = nil
                return state.pending.removeValue(forKey: id)
            }
        }
        for pending in finished {
            pending.deadline?.cancel()
            if case .stream(let source, _, _, _) = pending.kind { source.finish() }
        }
        return finished.count
    }

    /// Sends a one-way message (or a reply to the peer's call) on the current connection,
    /// without connecting. Returns at once; a failure is reported to `onFailure` (and a
    /// write error other than an oversized frame closes the connection).
    package func post(_ message: Message, onFailure: @escaping @Sendable (FramedCallError) -> Void = { _ in }) {
        guard let connection = self.state.withLock({ $0.connection }) else {
            onFailure(.unavailable("not connected"))
            return
        }
        connection.channel.writeAndFlush(message).whenFailure { error in
            onFailure(self.writeFailure(error, connection: connection))
        }
    }

    /// Connects now if not connected (calls do this themselves).
    package func connect() async throws(FramedCallError) {
        _ = try await self.liveConnection()
    }

    private func liveConnection() async throws(FramedCallError) -> Connection {
        let step = self.state.withLock { state -> ConnectStep in
            if state.isShutDown { return .fail(.unavailable("client shut down")) }
            if let connection = state.connection { return .ready(connection) }
            if let connecting = state.connecting { return .wait(connecting) }
            if case .connectedSocket = self.endpoint {
                if state.adoptedSocketUsed { return .fail(.unavailable("the channel is closed")) }
                state.adoptedSocketUsed = true
            }
            let id = state.nextConnectionID
            state.nextConnectionID += 1
            let promise = self.group.next().makePromise(of: Connection.self)
            state.connecting = promise.futureResult
            return .start(id, promise)
        }
        let future: EventLoopFuture<Connection>
        switch step {
        case .ready(let connection):
            return connection
        case .fail(let error):
            throw error
        case .wait(let connecting):
            future = connecting
        case .start(let id, let promise):
            // Published on the channel's own event loop, where `channelInactive` also runs:
            // a connection that closes right away is either never published or seen closing.
            self.makeChannel(connectionID: id).map { channel -> Connection in
                let connection = Connection(id: id, channel: channel)
                let stale = self.state.withLock { state -> Bool in
                    state.connecting = nil
                    if state.isShutDown || !channel.isActive { return true }
                    state.connection = connection
                    return false
                }
                if stale { channel.close(promise: nil) }
                return connection
            }.cascade(to: promise)
            promise.futureResult.whenFailure { _ in self.state.withLock { $0.connecting = nil } }
            future = promise.futureResult
        }
        do {
            let connection = try await future.get()
            if case .unixSocket = self.endpoint {
                self.logger.debug("connected", metadata: ["channel.endpoint": "\(self.endpoint)"])
            }
            return connection
        } catch {
            throw .unavailable("\(error)")
        }
    }

    private func makeChannel(connectionID: UInt64) -> EventLoopFuture<any Channel> {
        let maximumFrameSize = self.configuration.maximumFrameSize
        let logger = self.logger
        let endpoint = self.endpoint
        let bootstrap = ClientBootstrap(group: self.group)
            .connectTimeout(.milliseconds(Int64(self.configuration.connectTimeout.components.seconds * 1000)))
            .channelInitializer { [weak self] channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = FramedCallHandler<Message>(endpoint: endpoint, logger: logger) { event in
                        guard let self else { return }
                        switch event {
                        case .message(let message): self.dispatch(message, connectionID: connectionID)
                        case .closed(let reason): self.connectionLost(connectionID, reason: reason)
                        }
                    }
                    try channel.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(FrameMessageDecoder<Message>(maximumFrameSize: maximumFrameSize)),
                        FrameMessageEncoder<Message>(maximumFrameSize: maximumFrameSize),
                        handler,
                    ])
                }
            }
        switch endpoint {
        case .unixSocket(let path): return bootstrap.connect(unixDomainSocketPath: path)
        case .connectedSocket(let fd): return bootstrap.withConnectedSocket(fd)
        }
    }

    private static var writeFailurePrefix: String { "write failed: " }

    private func writeFailure(_ error: any Error, connection: Connection) -> FramedCallError {
        if case FrameError.frameTooLarge(let length, let maximum) = error {
            return .messageTooLarge(length: length, maximum: maximum)
        }
        // The connection is unusable: forget and close it, so every call on it fails and the
        // next one reconnects.
        self.state.withLock { state in
            if state.connection?.id == connection.id { state.connection = nil }
        }
        connection.channel.close(promise: nil)
        return .connectionLost(Self.writeFailurePrefix + "\(error)")
    }

    private func unary(_ request: Message, callID: UInt64?, timeout: Duration?, on connection: Connection) async throws(FramedCallError)
        -> Message
    {
        var request = request
        request.callID = callID ?? self.state.withLock { $0.takeCallID() }
        let id = request.callID
        do {
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Message, any Error>) in
                    self.state.withLock { state in
                        state.pending[id] = Pending(connectionID: connection.id, kind: .unary(continuation))
                    }
                    if Task.isCancelled {
                        self.fail(call: id, with: .cancelled)
                        return
                    }
                    if let timeout {
                        let scheduled = connection.channel.eventLoop.scheduleTask(in: TimeAmount(timeout)) { [weak self] () -> Void in
                            self?.fail(call: id, with: .deadlineExceeded(timeout))
                        }
                        let stillPending = self.state.withLock { state -> Bool in
                            guard state.pending[id] != nil else { return false }
                            state.pending[id]?.deadline = scheduled
                            return true
                        }
                        if !stillPending { scheduled.cancel() }
                    }
                    connection.channel.writeAndFlush(request).whenFailure { error in
                        self.fail(call: id, with: self.writeFailure(error, connection: connection))
                    }
                }
            } onCancel: {
                self.fail(call: id, with: .cancelled)
            }
        } catch let error as FramedCallError {
            throw error
        } catch {
            throw .connectionLost("\(error)")
        }
    }

    // MARK: Completion

    private static func complete(_ pending: Pending, with result: Result<Message, FramedCallError>) {
        pending.deadline?.cancel()
        switch (pending.kind, result) {
        case (.unary(let continuation), .success(let reply)): continuation.resume(returning: reply)
        case (.unary(let continuation), .failure(let error)): continuation.resume(throwing: error)
        case (.stream(let source, _, _, _), .success(let reply)):
            _ = source.yield(reply)
            source.finish()
        case (.stream(let source, _, _, _), .failure(let error)): source.finish(error)
        }
    }

    private func fail(call id: UInt64, with error: FramedCallError) {
        let pending = self.state.withLock { state -> Pending? in
            state.laggingStreams[id] = nil
            return state.pending.removeValue(forKey: id)
        }
        if let pending { Self.complete(pending, with: .failure(error)) }
    }

    private enum Delivery {
        case unsolicited
        case reply(Pending)
        case element(ReplyStream.Source, UInt64)
        case last(Pending)
    }

    /// Runs on the connection's event loop for every inbound envelope.
    private func dispatch(_ message: Message, connectionID: UInt64) {
        let delivery = self.state.withLock { state -> Delivery in
            let id = message.callID
            guard id != 0, let pending = state.pending[id], pending.connectionID == connectionID else { return .unsolicited }
            switch pending.kind {
            case .unary:
                state.pending[id] = nil
                return .reply(pending)
            case .stream(let source, _, let isFinal, _):
                guard isFinal(message) else { return .element(source, id) }
                state.pending[id] = nil
                state.laggingStreams[id] = nil
                return .last(pending)
            }
        }
        switch delivery {
        case .unsolicited:
            self.onUnsolicited(message)
        case .reply(let pending):
            Self.complete(pending, with: .success(message))
        case .last(let pending):
            Self.complete(pending, with: .success(message))
        case .element(let source, let id):
            if case .stopProducing = source.yield(message) { self.lagging(stream: id) }
        }
    }

    /// One more envelope buffered past the stream's high watermark; past `streamAbortLag`
    /// the stream fails alone (the shared connection keeps reading for everyone else).
    private func lagging(stream id: UInt64) {
        let overflowed = self.state.withLock { state -> Pending? in
            guard state.pending[id] != nil else { return nil }
            let lag = (state.laggingStreams[id] ?? 0) + 1
            guard lag > self.configuration.streamAbortLag else {
                state.laggingStreams[id] = lag
                return nil
            }
            state.laggingStreams[id] = nil
            return state.pending.removeValue(forKey: id)
        }
        guard let overflowed, case .stream(let source, let request, _, let onAbandoned) = overflowed.kind else { return }
        self.logger.warning(
            "a stream's consumer stopped reading; failing that call alone",
            metadata: ["call.id": "\(id)", "buffered": "\(self.configuration.streamHighWatermark + self.configuration.streamAbortLag)"])
        overflowed.deadline?.cancel()
        source.finish(FramedCallError.consumerTooSlow)
        onAbandoned(request)
    }

    private func resume(stream id: UInt64) {
        self.state.withLock { _ = $0.laggingStreams.removeValue(forKey: id) }
    }

    /// The consumer of a stream terminated: forgotten, and the owner told, if it was still running.
    private func abandoned(stream id: UInt64) {
        let pending = self.state.withLock { state -> Pending? in
            state.laggingStreams[id] = nil
            return state.pending.removeValue(forKey: id)
        }
        guard let pending, case .stream(let source, let request, _, let onAbandoned) = pending.kind else { return }
        pending.deadline?.cancel()
        source.finish()
        onAbandoned(request)
    }

    private func connectionLost(_ connectionID: UInt64, reason: String) {
        let (failed, wasCurrent) = self.state.withLock { state -> ([Pending], Bool) in
            var wasCurrent = false
            if state.connection?.id == connectionID {
                state.connection = nil
                state.laggingStreams = [:]
                wasCurrent = true
            }
            let ids = state.pending.compactMap { $0.value.connectionID == connectionID ? $0.key : nil }
            return (ids.compactMap { state.pending.removeValue(forKey: $0) }, wasCurrent)
        }
        if !failed.isEmpty {
            self.logger.warning(
                "channel connection lost",
                metadata: ["channel.endpoint": "\(self.endpoint)", "reason": "\(reason)", "calls.failed": "\(failed.count)"])
        }
        if wasCurrent { self.onConnectionLost(reason) }
        for pending in failed { Self.complete(pending, with: .failure(.connectionLost(reason))) }
    }
}

/// Tells a `FramedCallClient` when a stream's consumer wants more or went away.
package struct FramedStreamDelegate: NIOAsyncSequenceProducerDelegate {
    let onProduceMore: @Sendable () -> Void
    let onTerminate: @Sendable () -> Void

    init(produceMore: @escaping @Sendable () -> Void, didTerminate: @escaping @Sendable () -> Void) {
        self.onProduceMore = produceMore
        self.onTerminate = didTerminate
    }

    package func produceMore() { self.onProduceMore() }
    package func didTerminate() { self.onTerminate() }
}

/// The client's end of the pipeline: hands inbound envelopes to the client and reports
/// the connection's end once, with the reason (a bad frame closes the channel here).
final class FramedCallHandler<Message: WireMessage>: ChannelInboundHandler {
    typealias InboundIn = Message

    enum Event {
        case message(Message)
        case closed(String)
    }

    private let endpoint: FramedEndpoint
    private let logger: Logger
    private let onEvent: (Event) -> Void
    private var closeReason: String?

    init(endpoint: FramedEndpoint, logger: Logger, onEvent: @escaping (Event) -> Void) {
        self.endpoint = endpoint
        self.logger = logger
        self.onEvent = onEvent
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.onEvent(.message(Self.unwrapInboundIn(data)))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if self.closeReason == nil {
            self.closeReason = "\(error)"
            self.logger.error(
                "closing the channel: bad inbound data", metadata: ["channel.endpoint": "\(self.endpoint)", "reason": "\(error)"])
        }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.onEvent(.closed(self.closeReason ?? "the peer closed the connection"))
        context.fireChannelInactive()
    }
}

@available(*, unavailable)
extension FramedCallHandler: Sendable {}

extension TimeAmount {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
