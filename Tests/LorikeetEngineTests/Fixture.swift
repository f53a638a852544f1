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
