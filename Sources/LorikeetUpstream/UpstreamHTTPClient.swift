package import LorikeetWorker
package import NIOCore
package import NIOHTTP1
import NIOPosix
import Synchronization

/// A failure talking to an upstream replica (not an HTTP error status: those are responses).
package enum UpstreamError: Error, Sendable, CustomStringConvertible {
    /// No connection could be made (nothing was sent): safe to try another replica.
    case connect(String)
    /// The connection broke or the replica sent something unparsable; `sent` tells whether
    /// the request may have reached the replica.
    case transport(String, sent: Bool)
    /// No response head within the deadline.
    case timeout(String)
    /// A body read whole was larger than `limit` bytes (declared or counted): the upstream
    /// request was closed, the replica aborts it.
    case bodyTooLarge(limit: Int)
    /// The caller gave up on the request (its task was cancelled, or it cancelled the body).
    case cancelled

    package var description: String {
        switch self {
        case .connect(let message): "cannot connect: \(message)"
        case .transport(let message, _): "connection failed: \(message)"
        case .timeout(let message): "timed out: \(message)"
        case .bodyTooLarge(let limit): "response body larger than \(limit) bytes"
        case .cancelled: "request cancelled"
        }
    }
}

/// A small HTTP/1.1 client for one upstream replica, on SwiftNIO's `NIOHTTP1` codec and
/// `NIOAsyncChannel`.
///
/// - Connections: keep-alive, pooled per replica (the most recently used idle connection
///   first, at most `maxIdleConnections` idle); a request that finds no idle connection
///   opens one. A pooled connection the replica closed meanwhile is retried once on a
///   fresh connection. Requests go one at a time per connection (no pipelining).
/// - Back pressure: a response body is handed to the caller one part at a time, and the
///   connection reads the next part from the socket only when the caller took the last
///   one (plus `NIOAsyncChannel`'s small inbound buffer, at most 8 reads). A slow
///   downstream client therefore slows the reading from the replica; nothing is buffered
///   without bound here. Whole bodies are read with `UpstreamResponse.collect(limit:)`.
/// - Cancelling a response (or the task reading it) before its end closes the connection,
///   which is how vLLM and SGLang learn that the client went away (they abort the request).
/// - Lifecycle: every connection is a child task of `run()`. Requests made before `run()`
///   starts wait for it; when `run()`'s task is cancelled, connections close, requests in
///   flight fail and later requests fail at once with `.connect`. No `deinit` does I/O.
package final class UpstreamHTTPClient: Sendable {
    package let endpoint: UpstreamEndpoint
    private let group: any EventLoopGroup
    private let connectTimeout: TimeAmount
    private let maxIdleConnections: Int
    private let pool = Mutex(Pool())
    /// Rung when `Pool.waiting` gained a request that needs a new connection.
    private let doorbell: AsyncStream<Void>
    private let ring: AsyncStream<Void>.Continuation

    /// Inbound parts `NIOAsyncChannel` may buffer per connection before it stops reading
    /// the socket (each part at most one socket read).
    static let inboundBuffer = NIOAsyncSequenceProducerBackPressureStrategies.HighLowWatermark(lowWatermark: 2, highWatermark: 8)

    /// An idle keep-alive connection, parked in its task until a request (or nil: close) arrives.
    private struct IdleConnection: Sendable {
        var id: UInt64
        var channel: any Channel
        var mailbox: CheckedContinuation<UpstreamExchange?, Never>
    }

    private struct Pool {
        var idle: [IdleConnection] = []
        /// Requests waiting for `run()` to open a connection for them.
        var waiting: [UpstreamExchange] = []
        var isShutDown = false
        var nextConnectionID: UInt64 = 1
    }

    package init(
        endpoint: UpstreamEndpoint, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        connectTimeout: Duration = .seconds(3), maxIdleConnections: Int = 64
    ) {
        self.endpoint = endpoint
        self.group = group
        self.connectTimeout = TimeAmount(connectTimeout)
        self.maxIdleConnections = maxIdleConnections
        (self.doorbell, self.ring) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Runs the connections until this task is cancelled; then closes them all.
    package func run() async {
        await withDiscardingTaskGroup { group in
            for await _ in self.doorbell {
                let opening = self.pool.withLock { pool -> [UpstreamExchange] in
                    defer { pool.waiting = [] }
                    return pool.waiting
                }
                for exchange in opening {
                    group.addTask { await self.connection(first: exchange) }
                }
            }
            // Cancelled (the doorbell ends with its task): no new connections; the children
            // are cancelled with this task and close theirs.
            let (waiting, idle) = self.pool.withLock { pool in
                pool.isShutDown = true
                defer {
                    pool.waiting = []
                    pool.idle = []
                }
                return (pool.waiting, pool.idle)
            }
            for exchange in waiting { exchange.fail(.connect("\(self.endpoint): the upstream client has stopped")) }
            for connection in idle { connection.mailbox.resume(returning: nil) }
        }
    }

    /// Closes the idle pooled connections (a replica taken out of rotation); the client
    /// stays usable.
    package func closeIdleConnections() {
        let idle = self.pool.withLock { pool in
            defer { pool.idle = [] }
            return pool.idle
        }
        for connection in idle { connection.mailbox.resume(returning: nil) }
    }

    /// Sends one request and returns once the response head arrived; the body follows
    /// through `UpstreamResponse.body`, which the caller reads to its end or cancels.
    package func execute(
        method: HTTPMethod, path: String, headers: [(String, String)] = [], body: ByteBuffer? = nil,
        headTimeout: Duration
    ) async throws(UpstreamError) -> UpstreamResponse {
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: self.endpoint.pathPrefix + path)
        head.headers.add(name: "Host", value: self.endpoint.hostHeader)
        for (name, value) in headers { head.headers.add(name: name, value: value) }
        if let body {
            head.headers.replaceOrAdd(name: "Content-Length", value: String(body.readableBytes))
        } else if method == .POST || method == .PUT {
            head.headers.replaceOrAdd(name: "Content-Length", value: "0")
        }
        for attempt in 0..<2 {
            let exchange = UpstreamExchange(head: head, body: body, headTimeout: TimeAmount(headTimeout))
            let reused = try self.dispatch(exchange, fresh: attempt > 0)
            let responseHead: HTTPResponseHead
            do {
                responseHead = try await exchange.responseHead()
            } catch {
                // A kept-alive connection the replica closed meanwhile (its idle timeout): no
                // response head came, so try once more on a fresh connection.
                if reused, case .transport = error { continue }
                throw error
            }
            var headers: [(String, String)] = []
            for header in responseHead.headers { headers.append((header.name, header.value)) }
            return UpstreamResponse(
                status: Int(responseHead.status.code), headers: headers, body: UpstreamResponseBody(exchange: exchange))
        }
        throw UpstreamError.transport("\(self.endpoint): the connection closed twice", sent: false)
    }

    // MARK: Connections

    private enum Dispatch {
        case reuse(CheckedContinuation<UpstreamExchange?, Never>)
        case open
        case refuse
    }

    /// Hands `exchange` to an idle connection (true) or queues it for a new one (false).
    private func dispatch(_ exchange: UpstreamExchange, fresh: Bool) throws(UpstreamError) -> Bool {
        var closed: [CheckedContinuation<UpstreamExchange?, Never>] = []
        let step = self.pool.withLock { pool -> Dispatch in
            if pool.isShutDown { return .refuse }
            if !fresh {
                while let idle = pool.idle.popLast() {
                    if idle.channel.isActive { return .reuse(idle.mailbox) }
                    closed.append(idle.mailbox)
                }
            }
            pool.waiting.append(exchange)
            return .open
        }
        for mailbox in closed { mailbox.resume(returning: nil) }
        switch step {
        case .reuse(let mailbox):
            mailbox.resume(returning: exchange)
            return true
        case .open:
            self.ring.yield()
            return false
        case .refuse:
            throw UpstreamError.connect("\(self.endpoint): the upstream client has stopped")
        }
    }

    /// One connection's life: connect, serve `first`, then every request handed to it
    /// while it is idle, until the replica or we close it.
    private func connection(first: UpstreamExchange) async {
        let connected: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
        do {
            connected = try await ClientBootstrap(group: self.group)
                .connectTimeout(self.connectTimeout)
                .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
                .connect(host: self.endpoint.host, port: self.endpoint.port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                            wrappingChannelSynchronously: channel, configuration: .init(backPressureStrategy: Self.inboundBuffer))
                    }
                }
        } catch {
            first.fail(.connect("\(self.endpoint): \(error)"))
            return
        }
        let channel = connected.channel
        let id = self.pool.withLock { pool in
            defer { pool.nextConnectionID += 1 }
            return pool.nextConnectionID
        }
        // An idle connection the replica closes leaves the pool at once.
        channel.closeFuture.whenComplete { _ in self.evict(id) }
        do {
            try await connected.executeThenClose { inbound, outbound in
                var parts = inbound.makeAsyncIterator()
                var next: UpstreamExchange? = first
                while let exchange = next {
                    guard await self.serve(exchange, on: channel, parts: &parts, outbound: outbound) else { return }
                    next = await self.park(id, channel: channel)
                }
            }
        } catch {
            // Closing a connection the replica had already closed: nothing left to do.
        }
    }

    /// Sends the request of `exchange` and hands its response over part by part. True when
    /// the connection may carry another request.
    private func serve(
        _ exchange: UpstreamExchange, on channel: any Channel,
        parts: inout NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<HTTPClientRequestPart>
    ) async -> Bool {
        // Given up before it was sent: the connection is untouched.
        guard exchange.attach(channel) else { return true }
        do {
            var request: [HTTPClientRequestPart] = [.head(exchange.head)]
            if let body = exchange.body { request.append(.body(.byteBuffer(body))) }
            request.append(.end(nil))
            try await outbound.write(contentsOf: request)
        } catch {
            exchange.fail(.transport("\(self.endpoint): \(error)", sent: false))
            return false
        }
        let deadline = HeadDeadline()
        let timer = channel.eventLoop.scheduleTask(in: exchange.headTimeout) {
            if deadline.expire() { channel.close(promise: nil) }
        }
        let first: HTTPClientResponsePart?
        var readError: (any Error)?
        do {
            first = try await parts.next()
        } catch {
            first = nil
            readError = error
        }
        let inTime = deadline.settle()
        timer.cancel()
        guard case .head(let head) = first else {
            if !inTime {
                exchange.fail(.timeout("no response within \(exchange.headTimeout)"))
            } else {
                let reason = readError.map { "\($0)" } ?? "the connection closed before a response"
                exchange.fail(.transport("\(self.endpoint): \(reason)", sent: true))
            }
            return false
        }
        exchange.receivedHead(head)
        while true {
            let part: HTTPClientResponsePart?
            do {
                part = try await parts.next()
            } catch {
                exchange.fail(.transport("\(self.endpoint): \(error)", sent: true))
                return false
            }
            switch part {
            case .body(let chunk):
                // Waits until the caller took the chunk: the back pressure.
                guard await exchange.deliver(chunk) else {
                    exchange.fail(.transport("\(self.endpoint): the upstream client has stopped", sent: true))
                    return false
                }
            case .end:
                return exchange.finish() && head.isKeepAlive
            case .head, .none:
                exchange.fail(.transport("\(self.endpoint): the replica closed the connection mid-response", sent: true))
                return false
            }
        }
    }

    /// Parks an idle connection until a request is handed to it; nil closes it (pool full,
    /// replica closed it, pool emptied, or the client stopping).
    private func park(_ id: UInt64, channel: any Channel) async -> UpstreamExchange? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (mailbox: CheckedContinuation<UpstreamExchange?, Never>) in
                let parked = self.pool.withLock { pool -> Bool in
                    guard !pool.isShutDown, !Task.isCancelled, channel.isActive, pool.idle.count < self.maxIdleConnections
                    else { return false }
                    pool.idle.append(IdleConnection(id: id, channel: channel, mailbox: mailbox))
                    return true
                }
                if !parked { mailbox.resume(returning: nil) }
            }
        } onCancel: {
            self.evict(id)
        }
    }

    /// Takes connection `id` out of the pool if it is idle there (its task then closes it).
    private func evict(_ id: UInt64) {
        let evicted = self.pool.withLock { pool -> IdleConnection? in
            guard let index = pool.idle.firstIndex(where: { $0.id == id }) else { return nil }
            return pool.idle.remove(at: index)
        }
        evicted?.mailbox.resume(returning: nil)
    }
}

/// The response head's deadline: whichever of the timer and the head comes first wins.
private final class HeadDeadline: Sendable {
    private enum Phase { case waiting, expired, settled }
    private let phase = Mutex(Phase.waiting)

    /// The timer fired: true when no head had come (the caller closes the connection).
    func expire() -> Bool {
        self.phase.withLock { phase in
            guard case .waiting = phase else { return false }
            phase = .expired
            return true
        }
    }

    /// The read finished: true when it did so before the deadline.
    func settle() -> Bool {
        self.phase.withLock { phase in
            if case .expired = phase { return false }
            phase = .settled
            return true
        }
    }
}

/// One request and its response, handed between the caller's task (which awaits the
/// head, then pulls the body) and the task of the connection carrying it (which pushes one
/// body part at a time and waits until the caller took it).
final class UpstreamExchange: Sendable {
    let head: HTTPRequestHead
    let body: ByteBuffer?
    let headTimeout: TimeAmount

    private enum Phase {
        case waitingForHead
        case streaming
        /// The connection read the end of the body.
        case ended
        case failed(UpstreamError)
        case cancelled
    }

    private struct State {
        var phase = Phase.waitingForHead
        /// The connection carrying the request, once it took it (closed by `cancel()`).
        var channel: (any Channel)?
        var head: HTTPResponseHead?
        var headWaiter: CheckedContinuation<Result<HTTPResponseHead, UpstreamError>, Never>?
        /// A body part handed over and not yet taken, and the connection waiting on it.
        var chunk: ByteBuffer?
        var producer: CheckedContinuation<Bool, Never>?
        var consumer: CheckedContinuation<Result<ByteBuffer?, UpstreamError>, Never>?
    }

    private let state = Mutex(State())

    init(head: HTTPRequestHead, body: ByteBuffer?, headTimeout: TimeAmount) {
        self.head = head
        self.body = body
        self.headTimeout = headTimeout
    }

    // MARK: Connection side

    /// The connection takes the request; false when the caller already gave up.
    func attach(_ channel: any Channel) -> Bool {
        self.state.withLock { state in
            if case .cancelled = state.phase { return false }
            state.channel = channel
            return true
        }
    }

    func receivedHead(_ head: HTTPResponseHead) {
        let waiter = self.state.withLock { state -> CheckedContinuation<Result<HTTPResponseHead, UpstreamError>, Never>? in
            guard case .waitingForHead = state.phase else { return nil }
            state.phase = .streaming
            state.head = head
            defer { state.headWaiter = nil }
            return state.headWaiter
        }
        waiter?.resume(returning: .success(head))
    }

    /// Hands one body part over and waits until the caller took it. False when the caller
    /// gave up (or this task was cancelled): the connection must close.
    func deliver(_ chunk: ByteBuffer) async -> Bool {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (producer: CheckedContinuation<Bool, Never>) in
                let consumer = self.state.withLock { state -> CheckedContinuation<Result<ByteBuffer?, UpstreamError>, Never>?? in
                    guard case .streaming = state.phase, !Task.isCancelled else { return .none }
                    if let consumer = state.consumer {
                        state.consumer = nil
                        return .some(consumer)
                    }
                    state.chunk = chunk
                    state.producer = producer
                    return .some(nil)
                }
                switch consumer {
                case .none: producer.resume(returning: false)
                case .some(.some(let waiting)):
                    waiting.resume(returning: .success(chunk))
                    producer.resume(returning: true)
                case .some(.none): break  // resumed by the caller's next() or by cancel()
                }
            }
        } onCancel: {
            let producer = self.state.withLock { state in
                defer { state.producer = nil }
                return state.producer
            }
            producer?.resume(returning: false)
        }
    }

    /// The end of the body; false when the caller gave up first.
    func finish() -> Bool {
        let (ended, consumer) = self.state.withLock { state -> (Bool, CheckedContinuation<Result<ByteBuffer?, UpstreamError>, Never>?) in
            guard case .streaming = state.phase else { return (false, nil) }
            state.phase = .ended
            state.channel = nil
            defer { state.consumer = nil }
            return (true, state.consumer)
        }
        consumer?.resume(returning: .success(nil))
        return ended
    }

    /// The request failed (no effect once it ended, failed or was cancelled).
    func fail(_ error: UpstreamError) {
        let (headWaiter, consumer) = self.state.withLock { state in
            switch state.phase {
            case .ended, .failed, .cancelled:
                return (nil, nil)
                    as (
                        CheckedContinuation<Result<HTTPResponseHead, UpstreamError>, Never>?,
                        CheckedContinuation<Result<ByteBuffer?, UpstreamError>, Never>?
                    )
            case .waitingForHead, .streaming:
                state.phase = .failed(error)
                state.channel = nil
                defer {
                    state.headWaiter = nil
                    state.consumer = nil
                }
                return (state.headWaiter, state.consumer)
            }
        }
        headWaiter?.resume(returning: .failure(error))
        consumer?.resume(returning: .failure(error))
    }

    // MARK: Caller side

    /// Waits for the response head. Cancelling the task cancels the request.
    func responseHead() async throws(UpstreamError) -> HTTPResponseHead {
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (waiter: CheckedContinuation<Result<HTTPResponseHead, UpstreamError>, Never>) in
                let now = self.state.withLock { state -> Result<HTTPResponseHead, UpstreamError>? in
                    if let head = state.head { return .success(head) }
                    switch state.phase {
                    case .failed(let error): return .failure(error)
                    case .cancelled: return .failure(.cancelled)
                    case .waitingForHead, .streaming, .ended:
                        state.headWaiter = waiter
                        return nil
                    }
                }
                if let now { waiter.resume(returning: now) }
            }
        } onCancel: {
            self.cancel()
        }
        return try result.get()
    }

    /// The next body part; nil at the end. Cancelling the task cancels the request.
    func next() async throws(UpstreamError) -> ByteBuffer? {
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (consumer: CheckedContinuation<Result<ByteBuffer?, UpstreamError>, Never>) in
                let (now, producer) = self.state.withLock {
                    state -> (Result<ByteBuffer?, UpstreamError>?, CheckedContinuation<Bool, Never>?) in
                    if let chunk = state.chunk {
                        state.chunk = nil
                        defer { state.producer = nil }
                        return (.success(chunk), state.producer)
                    }
                    switch state.phase {
                    case .ended: return (.success(nil), nil)
                    case .failed(let error): return (.failure(error), nil)
                    case .cancelled: return (.failure(.cancelled), nil)
                    case .waitingForHead, .streaming:
                        state.consumer = consumer
                        return (nil, nil)
                    }
                }
                producer?.resume(returning: true)
                if let now { consumer.resume(returning: now) }
            }
        } onCancel: {
            self.cancel()
        }
        return try result.get()
    }

    /// Gives up on the request: the connection carrying it is closed (the replica aborts
    /// the request) and every waiter resumes. No effect after the end of the body.
    func cancel() {
        let taken = self.state.withLock { state -> State? in
            switch state.phase {
            case .ended, .failed, .cancelled: return nil
            case .waitingForHead, .streaming:
                let taken = state
                state = State()
                state.phase = .cancelled
                return taken
            }
        }
        guard let taken else { return }
        taken.producer?.resume(returning: false)
        taken.headWaiter?.resume(returning: .failure(.cancelled))
        taken.consumer?.resume(returning: .failure(.cancelled))
        taken.channel?.close(promise: nil)
    }
}

/// A response: status and headers; the body is read with `body.next()` (or whole with
/// `collect(limit:)`), to its end or until `body.cancel()`.
package struct UpstreamResponse: Sendable {
    package var status: Int
    package var headers: [(String, String)]
    package var body: UpstreamResponseBody

    /// First value of a header (case-insensitive).
    package func header(_ name: String) -> String? {
        self.headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }

    /// Reads the whole body, at most `limit` bytes. A larger body (as declared by
    /// `Content-Length`, or as counted) is `.bodyTooLarge`, and the request is closed
    /// before more of it is read.
    package func collect(limit: Int) async throws(UpstreamError) -> ByteBuffer {
        if let declared = self.header("Content-Length").flatMap(Int.init), declared > limit {
            self.body.cancel()
            throw UpstreamError.bodyTooLarge(limit: limit)
        }
        var buffer = ByteBuffer()
        while var chunk = try await self.body.next() {
            guard buffer.readableBytes + chunk.readableBytes <= limit else {
                self.body.cancel()
                throw UpstreamError.bodyTooLarge(limit: limit)
            }
            buffer.writeBuffer(&chunk)
        }
        return buffer
    }
}

/// The body of a response, read by one task at a time, in order.
package final class UpstreamResponseBody: Sendable {
    private let exchange: UpstreamExchange

    init(exchange: UpstreamExchange) { self.exchange = exchange }

    /// The next chunk as the replica sent it, or nil at the end of the body.
    package func next() async throws(UpstreamError) -> ByteBuffer? {
        try await self.exchange.next()
    }

    /// Abandons the response: the connection is closed (the replica aborts the request).
    /// No effect after the end of the body.
    package func cancel() {
        self.exchange.cancel()
    }
}
