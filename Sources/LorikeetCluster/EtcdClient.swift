package import Logging
import LorikeetJSON
import LorikeetLimits
package import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A client of an etcd v3 cluster through etcd's JSON gateway on the client port
/// (`POST /v3/kv/range`, `/v3/kv/put`, `/v3/kv/txn`, `/v3/lease/...`, `/v3/watch`), on
/// SwiftNIO's HTTP/1.1 codec — no gRPC stack (see docs/CLUSTER.md, "etcd client").
///
/// Every call has a deadline (`Options.callTimeout` unless given) and tries the members in
/// order, starting with the one that answered last: a member that refuses connections, has
/// no leader, or (for reads) does not answer within `Options.attemptTimeout` is left for the
/// next one. A write that was sent waits for its answer until the call's deadline.
/// Reads (range, lease keep-alive and time-to-live) are retried on any member; writes only
/// when they cannot have been applied (no connection, or the member refused for lack of a
/// leader) — otherwise the error says that the outcome is unknown. Each call uses its own
/// connection (a few hundred microseconds on a LAN; no stale pooled connections to a member
/// that died); watches hold one connection each.
///
/// Responses over `Options.responseLimit` fail their call with `responseTooLarge`. Call
/// `shutdown()` when done: it closes every open connection and fails later calls.
package final class EtcdClient: Sendable {
    /// Timeouts and limits of a client.
    package struct Options: Sendable {
        /// Deadline of a call, over every member tried.
        package var callTimeout: Duration = .seconds(5)
        /// Time one member has to answer before the next one is tried.
        package var attemptTimeout: Duration = .seconds(2)
        /// Time to establish a TCP connection to a member.
        package var connectTimeout: Duration = .seconds(1)
        /// Largest response body (and largest watch message).
        package var responseLimit: Int = Limits.etcdResponseBytes
        /// A watch asks its member for a progress report this often...
        package var watchProgressInterval: Duration = .seconds(2)
        /// ...and moves to another member when nothing arrived for this long.
        package var watchIdleTimeout: Duration = .seconds(7)
        /// Longest pause between two attempts to re-establish a watch.
        package var watchMaxBackoff: Duration = .seconds(2)

        package init() {}
    }

    package let endpoints: [EtcdEndpoint]
    package let options: Options
    let logger: Logger
    let group: any EventLoopGroup
    private let state = Mutex(State())

    private struct State {
        var preferred = 0
        var isShutdown = false
        var nextConnection = 0
        var open: [Int: any Channel] = [:]
    }

    /// A client of the members at `endpoints` (`host:port` or `http://host:port`).
    package init(
        endpoints: [String], logger: Logger, options: Options = Options(),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) throws(EtcdError) {
        guard !endpoints.isEmpty else { throw .invalidArgument("no etcd endpoints given") }
        var parsed: [EtcdEndpoint] = []
        for endpoint in endpoints { parsed.append(try EtcdEndpoint(parsing: endpoint)) }
        self.endpoints = parsed
        self.logger = logger
        self.options = options
        self.group = group
    }

    /// Closes every open connection (calls and watches in flight fail with `.shutdown`);
    /// later calls fail with `.shutdown`. Idempotent.
    package func shutdown() {
        let channels = self.state.withLock { state -> [any Channel] in
            state.isShutdown = true
            defer { state.open = [:] }
            return Array(state.open.values)
        }
        for channel in channels { channel.close(promise: nil) }
    }

    // MARK: Connections

    /// Records an open connection so that `shutdown()` can close it; nil after shutdown.
    func register(_ channel: any Channel) -> Int? {
        let id = self.state.withLock { state -> Int? in
            guard !state.isShutdown else { return nil }
            state.nextConnection += 1
            state.open[state.nextConnection] = channel
            return state.nextConnection
        }
        if id == nil { channel.close(promise: nil) }
        return id
    }

    func unregister(_ id: Int) { _ = self.state.withLock { $0.open.removeValue(forKey: id) } }

    var isShutdown: Bool { self.state.withLock { $0.isShutdown } }

    /// The member to try first: the last one that answered.
    var preferredIndex: Int { self.state.withLock { $0.preferred } }

    func remember(_ index: Int) { self.state.withLock { $0.preferred = index % self.endpoints.count } }

    // MARK: Unary calls

    /// A request that could not be handed to the connection at all: no byte of it was sent.
    struct RequestNotSent: Error {
        var underlying: any Error
    }

    /// How a failed attempt may be retried.
    struct AttemptFailure: Error {
        var error: EtcdError
        /// Whether the request cannot have been applied (never sent, or refused up front).
        var notApplied: Bool
    }

    /// One gateway call with failover and a deadline; returns the response's JSON.
    /// `idempotent` calls are retried on another member after any member failure.
    func call(
        _ path: String, _ request: JSONValue, idempotent: Bool, timeout: Duration?, leaseID: Int64? = nil,
        revision: Int64? = nil
    ) async throws(EtcdError) -> JSONValue {
        let body = JSONWriter.encode(request)
        let clock = ContinuousClock()
        let total = timeout ?? self.options.callTimeout
        let deadline = clock.now + total
        var index = self.preferredIndex
        var tried = 0
        var lastError: EtcdError?
        while true {
            if Task.isCancelled { throw .cancelled }
            if self.isShutdown { throw .shutdown }
            let remaining = deadline - clock.now
            guard remaining > .zero else {
                switch lastError {
                case .unavailable(let message)?: throw .unavailable("\(message) (every member tried for \(total))")
                case let error?: throw .timeout("no member answered within \(total); last: \(error)")
                case nil: throw .timeout("no member answered within \(total)")
                }
            }
            let endpoint = self.endpoints[index % self.endpoints.count]
            do {
                // A write cannot move on to another member once sent (it may still apply),
                // so it gets the whole remaining deadline: enough to ride out an election.
                let attemptTimeout = idempotent ? min(remaining, self.options.attemptTimeout) : remaining
                let response = try await self.attempt(
                    endpoint, path: path, body: body, timeout: attemptTimeout, leaseID: leaseID, revision: revision)
                self.remember(index)
                return response
            } catch {
                lastError = error.error
                guard error.error.triesNextMember, idempotent || error.notApplied else {
                    // Let the next call start elsewhere when this member is the problem.
                    if error.error.triesNextMember {
                        self.remember(index + 1)
                        // A write that reached the member: applied or not, nobody can say yet.
                        if !idempotent { throw .outcomeUnknown("\(error.error)") }
                    }
                    throw error.error
                }
                self.logger.debug(
                    "etcd member failed, trying the next",
                    metadata: ["etcd.endpoint": "\(endpoint)", "etcd.path": "\(path)", "error": "\(error.error)"])
            }
            index += 1
            tried += 1
            if tried % self.endpoints.count == 0 {
                // Every member failed once: pause a little before the next round.
                let pause = min(Duration.milliseconds(100 * min(tried / self.endpoints.count, 5)), deadline - clock.now)
                if pause > .zero {
                    do { try await Task.sleep(for: pause) } catch { throw .cancelled }
                }
            }
        }
    }

    /// One request to one member on a fresh connection.
    private func attempt(
        _ endpoint: EtcdEndpoint, path: String, body: [UInt8], timeout: Duration, leaseID: Int64?, revision: Int64?
    ) async throws(AttemptFailure) -> JSONValue {
        let channel: EtcdHTTPChannel
        do {
            channel = try await EtcdTransport.connect(
                to: endpoint, group: self.group, timeout: min(timeout, self.options.connectTimeout))
        } catch {
            throw AttemptFailure(error: error, notApplied: true)
        }
        guard let id = self.register(channel.channel) else { throw AttemptFailure(error: .shutdown, notApplied: true) }
        defer { self.unregister(id) }
        let reason = CloseReason()
        let raw = channel.channel
        let timer = raw.eventLoop.scheduleTask(in: TimeAmount(timeout)) {
            reason.set(.timeout("no answer from \(endpoint) within \(timeout)"))
            raw.close(promise: nil)
        }
        defer { timer.cancel() }
        let limit = self.options.responseLimit
        let status: Int
        let bytes: [UInt8]
        do {
            (status, bytes) = try await channel.executeThenClose { inbound, outbound in
                do {
                    // One hand-over for the whole request: when it fails, no byte of it
                    // reached the channel, so the member cannot have applied it. (Parts
                    // written one by one were not that: the head and the body could be out
                    // and applied, the member answer and close, and only the empty end part
                    // fail; a retry elsewhere then applied the write twice.)
                    try await outbound.write(contentsOf: [
                        .head(EtcdTransport.head(endpoint, path: path, contentLength: body.count)),
                        .body(.byteBuffer(ByteBuffer(bytes: body))), .end(nil),
                    ])
                } catch {
                    throw RequestNotSent(underlying: error)
                }
                var status = 0
                var buffer = ByteBuffer()
                for try await part in inbound {
                    switch part {
                    case .head(let head): status = Int(head.status.code)
                    case .body(var chunk):
                        guard buffer.readableBytes + chunk.readableBytes <= limit else {
                            throw EtcdError.responseTooLarge(limit: limit)
                        }
                        buffer.writeBuffer(&chunk)
                    case .end: return (status, Array(buffer.readableBytesView))
                    }
                }
                throw EtcdError.unavailable("\(endpoint) closed the connection before answering")
            }
        } catch {
            if let closed = reason.error { throw AttemptFailure(error: closed, notApplied: false) }
            if Task.isCancelled { throw AttemptFailure(error: .cancelled, notApplied: false) }
            if let notSent = error as? RequestNotSent {
                throw AttemptFailure(
                    error: .unavailable("connection to \(endpoint) closed before the request was sent: \(notSent.underlying)"),
                    notApplied: true)
            }
            if let error = error as? EtcdError { throw AttemptFailure(error: error, notApplied: false) }
            throw AttemptFailure(error: .unavailable("connection to \(endpoint) failed: \(error)"), notApplied: false)
        }
        let json: JSONValue
        do {
            json = try EtcdJSON.parse(bytes, from: endpoint)
        } catch {
            throw AttemptFailure(error: status == 200 ? error : .badResponse("HTTP \(status) from \(endpoint)"), notApplied: false)
        }
        guard status == 200 else {
            let error = EtcdJSON.error(json, path: path, httpStatus: status, leaseID: leaseID, revision: revision)
            // "no leader" is refused before the request reaches raft: safe to retry anywhere.
            let refusedUpFront: Bool
            if case .unavailable(let message) = error { refusedUpFront = message.contains("no leader") } else { refusedUpFront = false }
            throw AttemptFailure(error: error, notApplied: refusedUpFront)
        }
        if let streamed = json["result"] { return streamed }  // a stream's first (only) message
        if let error = json["error"] {
            throw AttemptFailure(
                error: EtcdJSON.error(.object([("error", error)]), path: path, httpStatus: status, leaseID: leaseID), notApplied: false)
        }
        return json
    }
}
