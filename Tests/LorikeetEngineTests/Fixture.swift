import Foundation
import LorikeetTestSupport
import Synchronization
import Testing

@testable import LorikeetEngine

/// The tiny Llama fixture written by `Tests/Fixtures/make_tiny_llama.py`, generated once
/// per script version into `/tmp/lorikeet-fixtures-<hash of the script>` and shared by
/// every test (and test process) after that.
enum Fixture {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Repository root.
    static var repoRoot: String { TestEnvironment.repoRoot }

    /// The fixture directory (model/, adapters/, broken/, reference.json), shared by every suite.
    static func directory() throws -> String { try TestEnvironment.fixtureDirectory() }

    struct Reference: Decodable {
        struct Case: Decodable {
            var logits: [Float]
            var greedy: [UInt32]
            var scale: Double?
        }
        var prompt: String
        var promptTokens: [UInt32]
        var greedySteps: Int
        var cases: [String: Case]

        enum CodingKeys: String, CodingKey {
            case prompt, cases
            case promptTokens = "prompt_tokens"
            case greedySteps = "greedy_steps"
        }
    }

    static func reference() throws -> Reference {
        let data = try Data(contentsOf: URL(fileURLWithPath: try self.directory() + "/reference.json"))
        return try JSONDecoder().decode(Reference.self, from: data)
    }

    static func modelDir() throws -> String { try self.directory() + "/model" }
    static func adapter(_ name: String) throws -> String { try self.directory() + "/adapters/" + name }
    static func broken(_ name: String) throws -> String { try self.directory() + "/broken/" + name }

    /// A fresh engine on the fixture model.
    static func engine(
        maxLoras: Int = 4, maxCpuLoras: Int? = nil, maxLoraRank: Int = 32, threads: Int = 1, maxBatchSize: Int = 32,
        prefixCacheMiB: Int = EngineOptions.defaultPrefixCacheMiB, prefillChunk: Int = EngineOptions.defaultPrefillChunk
    ) throws -> EngineCore {
        try EngineCore(
            modelDirectory: try self.modelDir(),
            options: EngineOptions(
                maxLoras: maxLoras, maxCpuLoras: maxCpuLoras, maxLoraRank: maxLoraRank, threads: threads,
                maxBatchSize: maxBatchSize, prefixCacheMiB: prefixCacheMiB, prefillChunk: prefillChunk))
    }
}

/// Collected output of one request.
struct Completion: Equatable {
    var tokens: [UInt32] = []
    var text = ""
    var finishReason: FinishReason?
    var usage: Usage?
    var error: EngineError?
    var events = 0
}

extension EngineCore {
    /// Calls `queue` while a one-token request on another prompt holds the scheduler thread
    /// in its last event, so every request `queue` submits is admitted in the same turn,
    /// whatever the machine's load (submitted one after another, the first could otherwise
    /// finish before the last is queued). Holds when the batch has room for them all and no
    /// adapter slot must be waited for; otherwise they are admitted over several turns.
    func admittedTogether<T>(_ queue: () throws -> T) async throws -> T {
        let held = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let blocker = GenerationRequest(
            id: "hold-\(UInt64.random(in: 0...UInt64.max))", prompt: .text("x"), params: SamplingParams(maxTokens: 1))
        try self.submit(blocker) { event in
            guard event.finishReason != nil else { return }
            held.signal()
            release.wait()
        }
        try await offPool { held.wait() }
        defer { release.signal() }
        return try queue()
    }

    /// Runs a request to completion and gathers its events.
    func complete(_ request: GenerationRequest) async -> Completion {
        var c = Completion()
        for await e in self.generate(request) {
            c.tokens += e.tokens
            c.text += e.text
            c.events += 1
            if let r = e.finishReason {
                c.finishReason = r
                c.usage = e.usage
                c.error = e.error
            }
        }
        return c
    }

    /// Greedy completion of the fixture prompt with `adapter`, ignoring EOS.
    func greedy(_ id: String, adapter: UInt64? = nil, maxTokens: Int = 16, prompt: [UInt32]? = nil) async throws -> Completion {
        let tokens = try prompt ?? Fixture.reference().promptTokens
        return await self.complete(
            GenerationRequest(
                id: id, prompt: .tokens(tokens), adapterID: adapter,
                params: SamplingParams(maxTokens: maxTokens, ignoreEOS: true)))
    }
}
