import Foundation
import Logging
import LorikeetEngine
import LorikeetEngineServer
import LorikeetProto
import LorikeetTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The outbound bound and the drain, over real sockets (socketpairs) to an in-process
/// server.
@Suite("Engine server: slow clients and draining", .serialized, .ownThreads)
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

        // Blocking socket code runs off the concurrency pool (see `offPool`).
        try await offPool { try Self.slowConsumerBody(server: server, core: core, ref: ref, slow: slow, steady: steady) }
    }

    static func slowConsumerBody(
        server: EngineServer, core: EngineCore, ref: ServerFixture.Reference, slow: TestEngineClient, steady: MultiplexEngineClient
    ) throws {
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
        // The tiny model may finish its 250 tokens before the second call reaches the
        // draining server (which then closes the idle connection first): the scenario is
        // repeated until the second call meets a running generation.
        var observed = false
        for _ in 0..<8 where !observed {
            observed = try await Self.drainScenario()
        }
        #expect(observed, "the running generation always finished before the second call; the drain was never exercised")
    }

    /// One drain scenario; false when the running generation ended before the second call
    /// arrived (nothing to check then).
    static func drainScenario() async throws -> Bool {
        let core = try EngineCore(modelDirectory: try ServerFixture.directory() + "/model")
        let server = EngineServer(core: core, logger: Logger(label: "test.engine"))
        let client = TestEngineClient(fd: try await HostileChannelTests.connect(to: server))
        try client.connection.send(
            EngineEnvelope(callID: 1, body: .generate(TestEngineClient.greedy("running", prompt: [256, 65], maxTokens: 250))))
        guard let first = try await offPool({ try client.connection.receive() }), first.callID == 1 else {
            Issue.record("no first chunk")
            return true
        }
        server.beginDrain()
        async let drained: Void = server.drain(grace: .seconds(300))
        let outcome = try await offPool { () -> ([EngineEnvelope], GenerateChunk?)? in
            do {
                try client.connection.send(EngineEnvelope(callID: 2, body: .generate(TestEngineClient.greedy("new", prompt: [256, 65]))))
                var running = [first]
                var refused: GenerateChunk?
                while running.last?.body.finished != true || refused == nil {
                    guard let envelope = try client.connection.receive() else { break }
                    if envelope.callID == 1 { running.append(envelope) }
                    if envelope.callID == 2, case .chunk(let chunk) = envelope.body { refused = chunk }
                }
                return (running, refused)
            } catch {
                return nil  // closed before the second call was read: the generation had ended
            }
        }
        await drained
        guard let (running, refused) = outcome, refused != nil else { return false }
        #expect(refused?.status.code == .unavailable && refused?.finishReason == "error")
        let chunks = running.compactMap { if case .chunk(let c) = $0.body { c } else { nil } }
        #expect(chunks.last?.finishReason == "length" && chunks.tokens.count == 250)
        #expect(try await offPool({ try client.connection.receive() }) == nil, "the drain closes the connection")
        #expect(server.connectionCount == 0)
        return true
    }
}

extension Optional where Wrapped == EngineEnvelope.Body {
    /// Whether this is a chunk with a finish reason.
    var finished: Bool {
        if case .chunk(let c) = self { !c.finishReason.isEmpty } else { false }
    }
}
