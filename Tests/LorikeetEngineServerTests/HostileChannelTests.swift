import Foundation
import Logging
import LorikeetEngine
import LorikeetEngineServer
import LorikeetGGUF
import LorikeetProto
import LorikeetTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Hostile calls on the engine channel, over real sockets: each fails alone.
@Suite("Engine channel: hostile calls fail alone", .ownThreads)
struct HostileChannelTests {
    static func socketPair() throws -> (Int32, Int32) {
        var fds: [Int32] = [0, 0]
        // CLOEXEC: suites that spawn processes (the real engine, workers) run in parallel with
        // these; a child that inherited the server's end would keep the socket open after the
        // server closes it, so the client would never see EOF (and a test blocked in recv
        // on the concurrency pool would stall every other suite).
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw ServerFixture.Failure(description: "socketpair failed")
        }
        return (fds[0], fds[1])
    }

    /// One end of a new socketpair served by `server`; returns the other end.
    static func connect(to server: EngineServer) async throws -> Int32 {
        let (a, b) = try Self.socketPair()
        try await server.start(connectedSocket: a)
        return b
    }

    static func fixtureServer(
        options: EngineOptions = EngineOptions(maxLoraRank: 32)
    ) async throws -> (EngineServer, EngineCore, MultiplexEngineClient) {
        let core = try EngineCore(modelDirectory: try ServerFixture.directory() + "/model", options: options)
        let server = EngineServer(core: core, logger: Logger(label: "test.engine"))
        return (server, core, MultiplexEngineClient(fd: try await Self.connect(to: server)))
    }

    struct GenerateCase: CustomTestStringConvertible, Sendable {
        var label: String
        var param: String
        var request: @Sendable () -> GenerateRequest
        var testDescription: String { self.label }
    }

    static func prompt(_ id: String, sampling: LorikeetProto.SamplingParams = LorikeetProto.SamplingParams(maxTokens: 2)) -> GenerateRequest
    {
        GenerateRequest(requestID: id, promptTokens: [256, 65], sampling: sampling)
    }

    static let generateCases: [GenerateCase] = [
        GenerateCase(label: "17 stop sequences", param: "stop") {
            Self.prompt("h", sampling: LorikeetProto.SamplingParams(maxTokens: 2, stop: (0...Limits.stopSequences).map { "s\($0)" }))
        },
        GenerateCase(label: "a 257-byte stop sequence", param: "stop") {
            Self.prompt(
                "h",
                sampling: LorikeetProto.SamplingParams(maxTokens: 2, stop: [String(repeating: "x", count: Limits.stopSequenceBytes + 1)]))
        },
        GenerateCase(label: "257 stop token ids", param: "stop_token_ids") {
            Self.prompt(
                "h", sampling: LorikeetProto.SamplingParams(maxTokens: 2, stopTokenIDs: Array(repeating: 5, count: Limits.stopTokenIDs + 1))
            )
        },
        // 8 MiB + 1: over the prompt limit, well under the 16 MiB frame limit.
        GenerateCase(label: "prompt text over 8 MiB", param: "prompt") {
            GenerateRequest(requestID: "h", promptText: String(repeating: "a", count: Limits.promptBytes + 1))
        },
        GenerateCase(label: "1,000,001 prompt tokens", param: "prompt") {
            GenerateRequest(requestID: "h", promptTokens: Array(repeating: 65, count: Limits.promptTokens + 1))
        },
        GenerateCase(label: "4097 messages", param: "messages") {
            GenerateRequest(requestID: "h", messages: Array(repeating: ChatMessage(role: "user", content: "x"), count: Limits.messages + 1))
        },
        GenerateCase(label: "messages over 8 MiB together", param: "messages") {
            GenerateRequest(
                requestID: "h",
                messages: Array(
                    repeating: ChatMessage(role: "user", content: String(repeating: "m", count: Limits.promptBytes / 2 + 1)), count: 2))
        },
        GenerateCase(label: "a 300-byte role", param: "messages") {
            GenerateRequest(requestID: "h", messages: [ChatMessage(role: String(repeating: "r", count: 300), content: "x")])
        },
        GenerateCase(label: "a newline in the request id", param: "request_id") {
            Self.prompt("h\nx")
        },
        GenerateCase(label: "a 2000-byte request id", param: "request_id") {
            Self.prompt(String(repeating: "i", count: 2000))
        },
    ]

    /// A too-large or malformed generate is answered with INVALID_ARGUMENT (and `param`)
    /// for that call alone: a stream in flight on the same connection completes with the
    /// reference tokens, the connection stays open, and a normal generate after it runs.
    @Test(arguments: generateCases)
    func refusedGenerateLeavesTheConnectionServing(_ c: GenerateCase) async throws {
        let (server, core, client) = try await Self.fixtureServer()
        let ref = try ServerFixture.reference()
        let long = try client.send(.generate(TestEngineClient.greedy("long", prompt: ref.promptTokens, maxTokens: 16)))
        let bad = try client.send(.generate(c.request()))
        let refused = try #require(client.stream(bad))
        #expect(refused.count == 1)
        #expect(refused.last?.finishReason == "error")
        #expect(refused.last?.status.code == .invalidArgument)
        #expect(refused.last?.status.param == c.param)
        #expect((refused.last?.status.message.utf8.count ?? 0) < 512, "the message does not repeat the input")
        let normal = try client.send(.generate(Self.prompt("after")))
        let longChunks = try #require(client.stream(long))
        #expect(longChunks.flatMap(\.tokens) == ref.cases["base"]!.greedy)
        #expect(longChunks.last?.finishReason == "length")
        #expect(try #require(client.stream(normal)).last?.finishReason == "length")
        #expect(!client.isClosed && server.connectionCount == 1)
        #expect(core.runningRequests == 0)
    }

    struct AdapterCase: CustomTestStringConvertible, Sendable {
        var label: String
        var name: String
        var path: String
        var param: String
        var testDescription: String { self.label }
    }

    static let adapterCases: [AdapterCase] = [
        AdapterCase(label: "an empty name", name: "", path: "/x", param: "lora_name"),
        AdapterCase(
            label: "a 257-byte name", name: String(repeating: "n", count: Limits.adapterNameBytes + 1), path: "/x", param: "lora_name"),
        AdapterCase(label: "a C1 control in the name", name: "a\u{85}b", path: "/x", param: "lora_name"),
        AdapterCase(label: "a newline in the name", name: "a\nb", path: "/x", param: "lora_name"),
        AdapterCase(label: "a bidi override in the name", name: "a\u{202E}b", path: "/x", param: "lora_name"),
        AdapterCase(label: "a newline in the path", name: "a", path: "/tmp\n/../x", param: "lora_path"),
        AdapterCase(
            label: "a 4097-byte path", name: "a", path: "/" + String(repeating: "p", count: Limits.adapterPathBytes), param: "lora_path"),
    ]

    /// An add_adapter with a name or path that breaks `TextRules` is refused for itself,
    /// while a stream on the same connection goes on.
    @Test(arguments: adapterCases)
    func refusedAdapterCallLeavesTheConnectionServing(_ c: AdapterCase) async throws {
        let (server, core, client) = try await Self.fixtureServer()
        let ref = try ServerFixture.reference()
        let long = try client.send(.generate(TestEngineClient.greedy("long", prompt: ref.promptTokens, maxTokens: 16)))
        let add = try client.send(.addAdapter(AddAdapterRequest(epoch: 1, name: c.name, intID: 1, path: c.path)))
        let status = try #require(client.reply(add)?.status)
        #expect(status.code == .invalidArgument && status.param == c.param, "\(status)")
        #expect(try #require(client.stream(long)).flatMap(\.tokens) == ref.cases["base"]!.greedy)
        #expect(core.adapters.list().isEmpty)
        #expect(!client.isClosed && server.connectionCount == 1)
    }

    /// Only a broken frame closes the connection; a frame over the old 4 MiB limit but
    /// under `Limits.channelFrameBytes` is read and refused for itself, and the
    /// connection's other calls are answered.
    @Test func brokenFramesCloseButLargeFramesDoNot() async throws {
        let (server, _, client) = try await Self.fixtureServer()
        let big = try client.send(.generate(GenerateRequest(requestID: "big", promptText: String(repeating: "a", count: 6 << 20))))
        let health = try client.send(.health)
        // 6 MiB is under the prompt limit, and longer than the context could hold whatever
        // it encodes to: refused from its length, without being tokenized.
        let refused = try #require(client.stream(big))
        #expect(refused.last?.status.code == .invalidArgument)
        #expect(refused.last?.status.message.contains("your prompt has at least") == true, "\(String(describing: refused.last))")
        #expect(client.reply(health) != nil, "the health call behind it was not answered")
        #expect(!client.isClosed)
        // A frame whose length is over the channel limit closes the connection.
        let length = UInt32(Limits.channelFrameBytes + 1)
        let header: [UInt8] = [0, UInt8(length >> 24), UInt8((length >> 16) & 0xFF), UInt8((length >> 8) & 0xFF), UInt8(length & 0xFF)]
        _ = header.withUnsafeBytes { send(client.connection.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        try await offPool {
            for _ in 0..<3000 where !client.isClosed { usleep(10_000) }  // hang guard
            for _ in 0..<3000 where server.connectionCount > 0 { usleep(10_000) }  // hang guard
        }
        #expect(client.isClosed)
        #expect(server.connectionCount == 0)
    }

    /// `SO_PEERCRED`: a peer running as another uid is disconnected before anything is
    /// read; the same uid is served. (The test cannot switch users, so it asks the server
    /// to allow a different uid than its own.)
    @Test func peerWithAnotherUIDIsClosedAtOnce() async throws {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent(
            "lk-peer-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        ).path
        defer { unlink(scratch) }
        let core = try EngineCore(modelDirectory: try ServerFixture.directory() + "/model")
        let server = EngineServer(core: core, logger: Logger(label: "test.engine"))
        for (allowed, served) in [(getuid() &+ 1, false), (getuid(), true)] {
            unlink(scratch)
            let listener = try UnixSocket.listen(path: scratch)
            let listening = try await server.listen(on: listener, allowedUID: allowed)
            let client = MultiplexEngineClient(fd: try UnixSocket.connect(path: scratch))
            let call = try? client.send(.health)
            if served {
                let callID = try #require(call)
                guard case .healthReply(let h) = try #require(client.reply(callID, timeout: 10)).body else {
                    Issue.record("no health reply")
                    return
                }
                #expect(h.status.isOK)
            } else {
                for _ in 0..<3000 where !client.isClosed { usleep(10_000) }
                #expect(client.isClosed, "a foreign uid must be disconnected")
                #expect(call.map { client.firstSequence($0) } ?? nil == nil)
            }
            // Closing the listener stops accepting (and completes its close future).
            await listening.close()
            server.closeAll()
        }
    }
}

// A NUL in a string never reaches the engine: the protobuf-c codec cuts strings at the
// first NUL (LorikeetProto), so `"a\u{0}b"` arrives as `"a"`. The worker must refuse NUL
// at the HTTP edge; the engine's checks above cover every other control character.

/// A model and an adapter large enough that reading the adapter takes a while: the test
/// of "loading never blocks the connection" needs a load that is still running when the
/// other calls arrive.
enum LargeAdapter {
    static let config: LlamaConfig = {
        try! LlamaConfig(
            hiddenSize: 512, intermediateSize: 1024, numLayers: 2, numHeads: 8, numKVHeads: 8,
            vocabSize: 258, maxPositionEmbeddings: 256, rmsNormEps: 1e-5, ropeTheta: 10_000,
            tieWordEmbeddings: false, bosTokenID: 256, eosTokenIDs: [257])
    }()
    static let rank = 256

    /// An engine on a zero-initialised model of `config` (norms 1).
    static func engine(maxLoras: Int = 4, maxCpuLoras: Int = 4) throws -> EngineCore {
        let c = self.config
        let weights = try LlamaWeights(config: c) { (name: String, shape: [Int]) throws(ModelLoadError) -> WeightMatrix in
            let count = shape.reduce(1, *)
            let value: Float = name.hasSuffix("norm.weight") ? 1 : 0.001
            return WeightMatrix(
                dense: FloatTensor(shape: shape.count == 1 ? [shape[0], 1] : shape, values: Array(repeating: value, count: count)))
        }
        return EngineCore(
            weights: weights, tokenizer: ByteTokenizer(),
            options: EngineOptions(maxLoras: maxLoras, maxCpuLoras: maxCpuLoras, maxLoraRank: self.rank))
    }

    /// Writes a rank-`rank` all-linear adapter of zeros (about 18 MB at rank 256) into `dir`.
    static func write(_ dir: String, rank: Int = LargeAdapter.rank) throws {
        let c = self.config
        var header: [String] = []
        var offset = 0
        for layer in 0..<c.numLayers {
            for module in LinearModule.allCases {
                let shape = module.shape(c)
                for (suffix, dims) in [("lora_A", [rank, shape[1]]), ("lora_B", [shape[0], rank])] {
                    let bytes = dims[0] * dims[1] * 4
                    header.append(
                        #""base_model.model.\#(module.path(layer: layer)).\#(suffix).weight":{"dtype":"F32","shape":[\#(dims[0]),\#(dims[1])],"data_offsets":[\#(offset),\#(offset + bytes)]}"#
                    )
                    offset += bytes
                }
            }
        }
        let h = Array(("{" + header.joined(separator: ",") + "}").utf8)
        let file = (0..<8).map { UInt8(truncatingIfNeeded: UInt64(h.count) >> (8 * UInt64($0))) } + h
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Data(#"{"peft_type":"LORA","r":\#(rank),"lora_alpha":16,"target_modules":"all-linear"}"#.utf8)
            .write(to: URL(fileURLWithPath: dir + "/adapter_config.json"))
        let path = dir + "/adapter_model.safetensors"
        try Data(file).write(to: URL(fileURLWithPath: path))
        // The tensor data: zeros, as a sparse extension (writing them would be slow).
        guard truncate(path, off_t(file.count + offset)) == 0 else {
            throw ServerFixture.Failure(description: "truncate \(path) failed")
        }
    }
}

@Suite("Engine channel: adapter loading off the connection", .serialized, .ownThreads)
struct AdapterLoadingOffTheConnectionTests {
    /// While a large adapter loads, `health`, `generate` and `abort` on the SAME connection
    /// and a generate on another connection are answered before the load finishes; the
    /// adapter calls stay serialized in arrival order (add, then remove, then list).
    @Test func callsOnTheSameConnectionAreServedDuringALoad() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lk-large-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try LargeAdapter.write(dir + "/big")
        let core = try LargeAdapter.engine()
        let server = EngineServer(core: core, logger: Logger(label: "test.engine"))
        let client = MultiplexEngineClient(fd: try await HostileChannelTests.connect(to: server))
        let other = MultiplexEngineClient(fd: try await HostileChannelTests.connect(to: server))

        let add = try client.send(.addAdapter(AddAdapterRequest(epoch: 1, name: "big", intID: 1, path: dir + "/big")))
        let remove = try client.send(.removeAdapter(RemoveAdapterRequest(epoch: 1, intID: 1)))
        let list = try client.send(.listAdapters)
        let health = try client.send(.health)
        let generate = try client.send(.generate(HostileChannelTests.prompt("same")))
        let otherGenerate = try other.send(.generate(HostileChannelTests.prompt("other")))

        #expect(client.reply(health) != nil)
        #expect(client.stream(generate)?.last?.finishReason == "length")
        #expect(other.stream(otherGenerate)?.last?.finishReason == "length")
        let addReply = try #require(client.reply(add, timeout: 120))
        #expect(addReply.status?.isOK == true, "\(String(describing: addReply.status))")
        #expect(try #require(client.firstSequence(health)) < addReply.sequence, "health waited for the load")
        #expect(try #require(client.firstSequence(generate)) < addReply.sequence, "generate waited for the load")
        // Serialized in arrival order: the remove sees the add, the list sees both.
        #expect(client.reply(remove)?.status?.isOK == true)
        guard case .adapterList(let adapters) = try #require(client.reply(list)).body else {
            Issue.record("no adapter list")
            return
        }
        #expect(adapters.adapters.isEmpty)
        #expect(try #require(client.firstSequence(remove)) > addReply.sequence)
    }

    /// A generate whose adapter was evicted reloads it off the event loop: a health
    /// sent after it is answered first, and an abort sent while the reload runs ends it.
    @Test func reloadOfAnEvictedAdapterDoesNotBlockTheConnection() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lk-reload-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try LargeAdapter.write(dir + "/big")
        try LargeAdapter.write(dir + "/small", rank: 4)
        let core = try LargeAdapter.engine(maxLoras: 1, maxCpuLoras: 1)
        let server = EngineServer(core: core, logger: Logger(label: "test.engine"))
        let client = MultiplexEngineClient(fd: try await HostileChannelTests.connect(to: server))
        let addBig = try client.send(.addAdapter(AddAdapterRequest(epoch: 1, name: "big", intID: 1, path: dir + "/big")))
        #expect(client.reply(addBig, timeout: 120)?.status?.isOK == true)
        let addSmall = try client.send(.addAdapter(AddAdapterRequest(epoch: 1, name: "small", intID: 2, path: dir + "/small")))
        #expect(client.reply(addSmall, timeout: 120)?.status?.isOK == true)
        #expect(core.adapters.needsReload(1), "max_cpu_loras=1: the big adapter was evicted")

        let generate = try client.send(
            .generate(
                GenerateRequest(
                    requestID: "g", promptTokens: [256, 65], sampling: LorikeetProto.SamplingParams(maxTokens: 200, ignoreEOS: true),
                    adapter: AdapterRef(intID: 1))))
        let health = try client.send(.health)
        #expect(client.reply(health) != nil)
        #expect(core.adapters.needsReload(1), "health was answered only after the reload")
        let abort = try client.send(.abort(AbortRequest(requestID: "g")))
        #expect(client.reply(abort)?.status?.isOK == true)
        let chunks = try #require(client.stream(generate, timeout: 120))
        #expect(chunks.last?.finishReason == "abort")
        for _ in 0..<200 where core.runningRequests > 0 { usleep(10_000) }
        #expect(core.runningRequests == 0)
        _ = server
    }
}
