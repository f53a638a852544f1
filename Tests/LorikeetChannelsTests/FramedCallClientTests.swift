import Foundation
import Logging
import LorikeetChannels
import LorikeetProto
import NIOCore
import Synchronization
import Testing

/// The call client against a scripted peer over a real socketpair.
@Suite struct FramedCallClientTests {
    static let logger = Logger(label: "test.channels")

    /// The other end of the socketpair: a blocking reader thread answering with `script`.
    final class Peer: Sendable {
        let connection: FramedConnection<EngineEnvelope>
        let received = Mutex<[EngineEnvelope]>([])

        init(fd: Int32, script: @escaping @Sendable (EngineEnvelope, Peer) -> Void) {
            self.connection = FramedConnection(fd: fd)
            let thread = Thread { [self] in
                while let envelope = try? self.connection.receive() {
                    self.received.withLock { $0.append(envelope) }
                    script(envelope, self)
                }
            }
            thread.start()
        }

        func send(_ envelope: EngineEnvelope) { try? self.connection.send(envelope) }
        func sendRaw(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { Glibc.send(self.connection.fd, $0.baseAddress, $0.count, 0) } }
    }

    static func pair(
        configuration: FramedCallClient<EngineEnvelope>.Configuration = .init(),
        onLost: @escaping @Sendable (String) -> Void = { _ in },
        script: @escaping @Sendable (EngineEnvelope, Peer) -> Void
    ) throws -> (FramedCallClient<EngineEnvelope>, Peer) {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw CancellationError()
        }
        let client = FramedCallClient<EngineEnvelope>(
            endpoint: .connectedSocket(fd: fds[0]), configuration: configuration, logger: Self.logger, onConnectionLost: onLost)
        return (client, Peer(fd: fds[1], script: script))
    }

    @Test func unaryCallsAreMatchedByIDOutOfOrder() async throws {
        // The peer answers each pair of calls in reverse order.
        let held = Mutex<EngineEnvelope?>(nil)
        let (client, _) = try Self.pair { envelope, peer in
            let reply = EngineEnvelope(
                callID: envelope.callID, body: .result(CallResult(status: Status(code: .ok, message: "\(envelope.callID)"))))
            if let first = held.withLock({ state -> EngineEnvelope? in
                defer { state = state == nil ? reply : nil }
                return state
            }) {
                peer.send(reply)
                peer.send(first)
            }
        }
        defer { client.shutdown() }
        try await withThrowingTaskGroup(of: (UInt64, EngineEnvelope).self) { group in
            for _ in 0..<10 {
                group.addTask { (0, try await client.call(EngineEnvelope(body: .health), timeout: .seconds(5))) }
            }
            for try await (_, reply) in group {
                guard case .result(let result) = reply.body else {
                    Issue.record("unexpected \(reply)")
                    continue
                }
                #expect(result.status.message == "\(reply.callID)")
            }
        }
    }

    @Test func deadlineExceeded() async throws {
        let (client, _) = try Self.pair { _, _ in }
        defer { client.shutdown() }
        await #expect(throws: FramedCallError.deadlineExceeded(.milliseconds(100))) {
            try await client.call(EngineEnvelope(body: .health), timeout: .milliseconds(100))
        }
    }

    @Test func cancellationFailsTheCallAtOnce() async throws {
        let (client, _) = try Self.pair { _, _ in }
        defer { client.shutdown() }
        let task = Task { try await client.call(EngineEnvelope(body: .health), timeout: .seconds(60)) }
        try await Task.sleep(for: .milliseconds(50))
        task.cancel()
        await #expect(throws: FramedCallError.cancelled) { try await task.value }
    }

    /// An oversized request fails alone: nothing is written and the connection carries on.
    @Test func oversizedRequestFailsAlone() async throws {
        let (client, peer) = try Self.pair(configuration: .init(maximumFrameSize: 64)) { envelope, peer in
            peer.send(EngineEnvelope(callID: envelope.callID, body: .result(CallResult(status: .ok))))
        }
        defer { client.shutdown() }
        _ = try await client.call(EngineEnvelope(body: .health), timeout: .seconds(5))
        let large = EngineEnvelope(body: .abort(AbortRequest(requestID: String(repeating: "a", count: 100))))
        let error = await #expect(throws: FramedCallError.self) { try await client.call(large, timeout: .seconds(5)) }
        guard case .messageTooLarge(_, 64)? = error else {
            Issue.record("got \(String(describing: error))")
            return
        }
        _ = try await client.call(EngineEnvelope(body: .health), timeout: .seconds(5))
        #expect(peer.received.withLock { $0.count } == 2)
    }

    /// A bad inbound frame closes the connection: calls in flight fail with the reason, and
    /// an adopted socket is not reconnected.
    @Test func badInboundFrameFailsEverythingInFlight() async throws {
        let lost = Mutex<[String]>([])
        let (client, _) = try Self.pair(
            onLost: { reason in lost.withLock { $0.append(reason) } },
            script: { _, peer in peer.sendRaw([7, 0, 0, 0, 0]) })
        let error = await #expect(throws: FramedCallError.self) {
            try await client.call(EngineEnvelope(body: .health), timeout: .seconds(5))
        }
        guard case .connectionLost(let reason)? = error else {
            Issue.record("got \(String(describing: error))")
            return
        }
        #expect(reason.contains("unsupported frame flag 7"))
        #expect(lost.withLock { $0.count } == 1)
        await #expect(throws: FramedCallError.unavailable("the channel is closed")) {
            try await client.call(EngineEnvelope(body: .health), timeout: .seconds(5))
        }
    }

    /// Many more replies than the high watermark reach a slow consumer complete and in order.
    @Test func streamWithBackPressureDeliversEverythingInOrder() async throws {
        let count = 2000
        let (client, _) = try Self.pair(configuration: .init(streamLowWatermark: 4, streamHighWatermark: 16)) { envelope, peer in
            guard case .generate = envelope.body else { return }
            for index in 0..<count {
                peer.send(
                    EngineEnvelope(
                        callID: envelope.callID,
                        body: .chunk(GenerateChunk(text: "\(index)", finishReason: index == count - 1 ? "stop" : ""))))
            }
        }
        defer { client.shutdown() }
        let replies = try await client.stream(
            EngineEnvelope(body: .generate(GenerateRequest(requestID: "r"))),
            isFinal: { if case .chunk(let chunk) = $0.body { !chunk.finishReason.isEmpty } else { false } },
            onAbandoned: { _ in Issue.record("not abandoned") })
        var seen = 0
        for try await envelope in replies {
            guard case .chunk(let chunk) = envelope.body else { continue }
            #expect(chunk.text == "\(seen)")
            seen += 1
            if seen % 100 == 0 { try await Task.sleep(for: .milliseconds(5)) }
        }
        #expect(seen == count)
    }

    /// A consumer that stops reading fails alone: the connection is shared, so the client
    /// keeps reading it for every other call, and the stalled stream ends with
    /// `.consumerTooSlow` (its peer told) once it is `streamAbortLag` past its watermark.
    @Test func stalledConsumerFailsAloneOthersCarryOn() async throws {
        let count = 1000
        let abandoned = Atomic<Int>(0)
        let (client, _) = try Self.pair(configuration: .init(streamLowWatermark: 2, streamHighWatermark: 8, streamAbortLag: 32)) {
            envelope, peer in
            switch envelope.body {
            case .generate:
                for index in 0..<count {
                    let last = index == count - 1
                    peer.send(
                        EngineEnvelope(callID: envelope.callID, body: .chunk(GenerateChunk(text: "t", finishReason: last ? "stop" : ""))))
                }
            case .health:
                peer.send(EngineEnvelope(callID: envelope.callID, body: .result(CallResult(status: .ok))))
            default: break
            }
        }
        defer { client.shutdown() }
        let replies = try await client.stream(
            EngineEnvelope(body: .generate(GenerateRequest(requestID: "r"))),
            isFinal: { if case .chunk(let chunk) = $0.body { !chunk.finishReason.isEmpty } else { false } },
            onAbandoned: { _ in abandoned.add(1, ordering: .relaxed) })
        let iterator = replies.makeAsyncIterator()
        _ = try await iterator.next()
        // The stalled stream does not hold back other calls on the connection.
        _ = try await client.call(EngineEnvelope(body: .health), timeout: .seconds(30))
        var received = 1
        var failure: FramedCallError?
        do {
            while try await iterator.next() != nil { received += 1 }
        } catch let error as FramedCallError {
            failure = error
        }
        #expect(failure == .consumerTooSlow, "received \(received) of \(count)")
        #expect(received <= 8 + 32 + 2)
        #expect(abandoned.load(ordering: .relaxed) == 1)
        _ = try await client.call(EngineEnvelope(body: .health), timeout: .seconds(30))
    }

    /// A consumer that stops early abandons the call (the owner tells the peer), and the
    /// connection carries on.
    @Test func droppedStreamIsAbandoned() async throws {
        let abandoned = Mutex<[UInt64]>([])
        let (client, _) = try Self.pair { envelope, peer in
            switch envelope.body {
            case .generate:
                peer.send(EngineEnvelope(callID: envelope.callID, body: .chunk(GenerateChunk(text: "first"))))
            case .health:
                peer.send(EngineEnvelope(callID: envelope.callID, body: .result(CallResult(status: .ok))))
            default: break
            }
        }
        defer { client.shutdown() }
        do {
            let replies = try await client.stream(
                EngineEnvelope(body: .generate(GenerateRequest(requestID: "r"))), isFinal: { _ in false },
                onAbandoned: { request in abandoned.withLock { $0.append(request.callID) } })
            let iterator = replies.makeAsyncIterator()
            _ = try await iterator.next()
        }
        #expect(abandoned.withLock { $0.count } == 1)
        _ = try await client.call(EngineEnvelope(body: .health), timeout: .seconds(5))
    }

    /// A Unix-socket peer that drops the first connection on its second call: that call
    /// fails with `.connectionLost`, and the next call reconnects.
    @Test func connectionLossFailsInFlightAndTheNextCallReconnects() async throws {
        let path = "/tmp/lorikeet-channels-test-\(getpid()).sock"
        let listener = try UnixSocket.listen(path: path)
        defer {
            // Wakes the accepting thread (EINVAL), then releases the socket.
            shutdown(listener, Int32(SHUT_RDWR))
            Glibc.close(listener)
            unlink(path)
        }
        let accepted = Atomic<Int>(0)
        let thread = Thread {
            while let fd = try? UnixSocket.accept(listener: listener) {
                let number = accepted.add(1, ordering: .relaxed).newValue
                let connection = FramedConnection<EngineEnvelope>(fd: fd)
                var calls = 0
                while let envelope = try? connection.receive() {
                    calls += 1
                    if number == 1 && calls == 2 {
                        connection.close()
                        break
                    }
                    try? connection.send(EngineEnvelope(callID: envelope.callID, body: .result(CallResult(status: .ok))))
                }
            }
        }
        thread.start()
        let client = FramedCallClient<EngineEnvelope>(endpoint: .unixSocket(path: path), logger: Self.logger)
        defer { client.shutdown() }
        _ = try await client.call(EngineEnvelope(body: .health), timeout: .seconds(5))
        let error = await #expect(throws: FramedCallError.self) {
            try await client.call(EngineEnvelope(body: .health), timeout: .seconds(5))
        }
        guard case .connectionLost? = error else {
            Issue.record("got \(String(describing: error))")
            return
        }
        _ = try await client.call(EngineEnvelope(body: .health), timeout: .seconds(5))
        #expect(accepted.load(ordering: .relaxed) == 2)
    }

    @Test func unreachablePeerIsUnavailable() async throws {
        let client = FramedCallClient<EngineEnvelope>(endpoint: .unixSocket(path: "/nonexistent/engine.sock"), logger: Self.logger)
        let error = await #expect(throws: FramedCallError.self) {
            try await client.call(EngineEnvelope(body: .health), timeout: .seconds(5))
        }
        guard case .unavailable? = error else {
            Issue.record("got \(String(describing: error))")
            return
        }
    }
}
