import Foundation
import Logging
import LorikeetEngine
import LorikeetEngineServer
import LorikeetProto
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The outbound bound and the drain, over real sockets (socketpairs) to an in-process
/// server.
// Serialized: both tests block a thread of the cooperative pool in a synchronous receive
// while the server's drain (an `async let`) needs one; run together on a 2-core machine
// they took both pool threads and hung the whole test run (seen twice in bin/test).
@Suite("Engine server: slow clients and draining", .serialized)
struct BackPressureAndDrainTests {
    /// A request whose every chunk echoes a 1000-byte request id: four of them stream
    /// about 1 MB, more than a Unix socket buffers, so a client that does not read leaves
    /// frames the server cannot write.
    static func bulky(_ index: Int, maxTokens: UInt32 = 250) -> GenerateRequest {
        GenerateRequest(
            requestID: String(repeating: "s", count: 999) + "\(index)", promptTokens: [256, 65],
            sampling: LorikeetProto.SamplingParams(maxTokens: maxTokens, ignoreEOS: true))
    }

    /// A client that stops reading is disconnected once more than `maxQueuedFrames` frames
    /// wait for it, with its requests aborted; another connection's streams go on, and it
    /// keeps being served.
    @Test func slowConsumerIsDisconnectedAlone() async throws {
        let ref = try ServerFixture.reference()
        let core = try EngineCore(modelDirectory: try ServerFixture.directory() + "/model")
        let server = EngineServer(core: core, logger: Logger(label: "test.engine"), maxQueuedFrames: 256)
        let slow = TestEngineClient(fd: try await HostileChannelTests.connect(to: server))
        let steady = MultiplexEngineClient(fd: try await HostileChannelTests.connect(to: server))

        let long = try steady.send(.generate(TestEngineClient.greedy("steady", prompt: ref.promptTokens, maxTokens: 200)))
        for i in 0..<4 {
            try slow.connection.send(EngineEnvelope(callID: UInt64(i + 1), body: .generate(Self.bulky(i))))
        }
        for _ in 0..<6000 where server.connectionCount > 1 { usleep(10_000) }  // hang guard
        #expect(server.connectionCount == 1, "the slow client was not disconnected")
        // The slow client can read what the kernel had buffered, then its socket ends: far
        // fewer than the 1000 chunks it asked for.
        var received = 0
        while (try? slow.connection.receive()) != nil { received += 1 }
        #expect(received < 4 * 250)

        let chunks = try #require(steady.stream(long))
        #expect(chunks.last?.finishReason == "length")
        #expect(chunks.tokens.count == 200)
        #expect(Array(chunks.tokens.prefix(16)) == ref.cases["base"]!.greedy)
        let after = try steady.send(.generate(TestEngineClient.greedy("after", prompt: ref.promptTokens)))
        #expect(try #require(steady.stream(after)).tokens == ref.cases["base"]!.greedy)
        #expect(!steady.isClosed && server.connectionCount == 1)
        for _ in 0..<1000 where core.runningRequests > 0 { usleep(10_000) }  // hang guard
        #expect(core.runningRequests == 0)
    }

    /// While draining, a new generation is refused with UNAVAILABLE, a running one
    /// finishes and is delivered whole, and then the connection is closed.
    @Test func drainRefusesNewGenerationsAndFinishesRunningOnes() async throws {
        let core = try EngineCore(modelDirectory: try ServerFixture.directory() + "/model")
        let server = EngineServer(core: core, logger: Logger(label: "test.engine"))
        let client = TestEngineClient(fd: try await HostileChannelTests.connect(to: server))
        try client.connection.send(
            EngineEnvelope(callID: 1, body: .generate(TestEngineClient.greedy("running", prompt: [256, 65], maxTokens: 250))))
        guard let first = try client.connection.receive(), first.callID == 1 else {
            Issue.record("no first chunk")
            return
        }
        server.beginDrain()
        try client.connection.send(EngineEnvelope(callID: 2, body: .generate(TestEngineClient.greedy("new", prompt: [256, 65]))))
        async let drained: Void = server.drain(grace: .seconds(300))
        var running = [first]
        var refused: GenerateChunk?
        while running.last?.body.finished != true || refused == nil {
            guard let envelope = try client.connection.receive() else { break }
            if envelope.callID == 1 { running.append(envelope) }
            if envelope.callID == 2, case .chunk(let chunk) = envelope.body { refused = chunk }
        }
        #expect(refused?.status.code == .unavailable && refused?.finishReason == "error")
        let chunks = running.compactMap { if case .chunk(let c) = $0.body { c } else { nil } }
        #expect(chunks.last?.finishReason == "length" && chunks.tokens.count == 250)
        await drained
        #expect(try client.connection.receive() == nil, "the drain closes the connection")
        #expect(server.connectionCount == 0)
    }
}

extension Optional where Wrapped == EngineEnvelope.Body {
    /// Whether this is a chunk with a finish reason.
    var finished: Bool {
        if case .chunk(let c) = self { !c.finishReason.isEmpty } else { false }
    }
}
