import Foundation
import LorikeetGGUF
import LorikeetTestSupport
import Testing

@testable import LorikeetEngine

/// The Swift forward pass against the numpy reference in make_tiny_llama.py.
@Suite("Llama forward pass vs numpy reference", .ownThreads)
struct ModelTests {
    /// Adapter fixture name -> int id used in these tests.
    static let adapterIDs: [String: UInt64] = ["plain": 1, "rslora": 2, "rank32": 3]

    static func engineWithAdapters() throws -> EngineCore {
        let core = try Fixture.engine(maxLoraRank: 32)
        for (name, id) in Self.adapterIDs {
            _ = try core.adapters.add(name: name, intID: id, path: try Fixture.adapter(name), epoch: 1)
        }
        return core
    }

    @Test(arguments: ["base", "plain", "rslora", "rank32"])
    func logitsMatchReference(_ name: String) throws {
        let ref = try Fixture.reference()
        let expected = try #require(ref.cases[name])
        let core = try Self.engineWithAdapters()
        var adapter: LoRAWeights?
        if let id = Self.adapterIDs[name] {
            adapter = try core.adapters.weightsForRequest(id).weights
            #expect(abs(Double(adapter!.scaling) - expected.scale!) < 1e-6)
        }
        let logits = core.model.lastLogits(ref.promptTokens, adapter: adapter)
        #expect(logits.count == expected.logits.count)
        let maxDiff = zip(logits, expected.logits).map { abs($0 - $1) }.max() ?? .infinity
        #expect(maxDiff < 1e-3, "max |Δlogit| = \(maxDiff)")
    }

    @Test(arguments: ["base", "plain", "rslora", "rank32"])
    func greedyTokensMatchReference(_ name: String) async throws {
        let ref = try Fixture.reference()
        let expected = try #require(ref.cases[name])
        let core = try Self.engineWithAdapters()
        let out = try await core.greedy("g-\(name)", adapter: Self.adapterIDs[name], maxTokens: ref.greedySteps)
        #expect(out.tokens == expected.greedy)
        #expect(out.finishReason == .length)
        #expect(out.usage == Usage(promptTokens: ref.promptTokens.count, completionTokens: ref.greedySteps))
    }

    @Test func adaptersChangeTheOutput() throws {
        let ref = try Fixture.reference()
        let base = try #require(ref.cases["base"]).greedy
        for name in Self.adapterIDs.keys { #expect(try #require(ref.cases[name]).greedy != base, "\(name)") }
    }

    @Test func threadedMatmulGivesIdenticalLogits() throws {
        let ref = try Fixture.reference()
        let one = try Fixture.engine(threads: 1)
        let two = try Fixture.engine(threads: 2)
        #expect(one.model.lastLogits(ref.promptTokens) == two.model.lastLogits(ref.promptTokens))
    }

    @Test func tiedEmbeddingsAndConfigValidation() throws {
        let json =
            #"{"architectures":["LlamaForCausalLM"],"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"vocab_size":10,"tie_word_embeddings":true,"eos_token_id":[1,2]}"#
        let config = try LlamaConfig(json: Data(json.utf8))
        #expect(config.headDim == 4 && config.kvDim == 4 && config.eosTokenIDs == [1, 2])
        var tensors: [String: HostTensor] = [:]
        func add(_ name: String, _ shape: [Int]) {
            tensors[name] = HostTensor(shape: shape, values: (0..<shape.reduce(1, *)).map { Float($0 % 7) * 0.01 })
        }
        add("model.embed_tokens.weight", [10, 8])
        add("model.norm.weight", [8])
        add("model.layers.0.input_layernorm.weight", [8])
        add("model.layers.0.post_attention_layernorm.weight", [8])
        for m in LinearModule.allCases { add(m.path(layer: 0) + ".weight", m.shape(config)) }
        let weights = try LlamaWeights(config: config, tensors: tensors)
        #expect(weights.lmHead === weights.embedTokens)
        #expect(LlamaModel(weights: weights).lastLogits([3, 4, 5]).count == 10)

        tensors["model.norm.weight"] = HostTensor(shape: [7], values: [Float](repeating: 1, count: 7))
        #expect(throws: ModelLoadError.shapeMismatch(tensor: "model.norm.weight", expected: [8], actual: [7])) {
            try LlamaWeights(config: config, tensors: tensors)
        }
        tensors["model.norm.weight"] = nil
        #expect(throws: ModelLoadError.missingTensor("model.norm.weight")) {
            try LlamaWeights(config: config, tensors: tensors)
        }
        let gqaBad = json.replacingOccurrences(of: #""num_key_value_heads":1"#, with: #""num_key_value_heads":3"#)
        #expect(throws: ModelLoadError.self) { try LlamaConfig(json: Data(gqaBad.utf8)) }
        let arch = json.replacingOccurrences(of: "LlamaForCausalLM", with: "GPT2LMHeadModel")
        #expect(throws: ModelLoadError.unsupportedArchitecture("GPT2LMHeadModel")) { try LlamaConfig(json: Data(arch.utf8)) }
    }

    /// Model files may be symlinks (Hugging Face cache snapshots are); only adapter files
    /// are opened with O_NOFOLLOW.
    @Test func modelFilesMayBeSymlinks() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lorikeet-model-\(UUID())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for file in ["config.json", "model.safetensors"] {
            try FileManager.default.createSymbolicLink(atPath: dir + "/" + file, withDestinationPath: try Fixture.modelDir() + "/" + file)
        }
        let ref = try Fixture.reference()
        let core = try EngineCore(modelDirectory: dir)
        let logits = core.model.lastLogits(ref.promptTokens)
        #expect(zip(logits, ref.cases["base"]!.logits).map { abs($0 - $1) }.max()! < 1e-3)
    }

    @Test func missingModelDirectoryIsAClearError() {
        #expect(throws: EngineError.self) { try EngineCore(modelDirectory: "/nonexistent/model") }
    }
}
