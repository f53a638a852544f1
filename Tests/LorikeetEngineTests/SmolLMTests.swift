import Foundation
import LorikeetGGUF
import LorikeetTestSupport
import Testing

@testable import LorikeetCLI
@testable import LorikeetEngine

/// The default model (SmolLM2-135M-Instruct, Q4_1 GGUF), opened once per test process
/// as `lorikeet engine` without `--model` opens it (`EngineCore.open(modelOption: nil)`):
/// downloaded into the cache on first use.
enum SmolLM {
    private static let opened: Result<EngineCore, EngineError> = Result { () throws(EngineError) -> EngineCore in
        let clock = ContinuousClock()
        let start = clock.now
        let core = try EngineCore.open(modelOption: nil, options: EngineOptions(threads: 2))
        print("opened the default model in \(clock.now - start)")
        return core
    }

    static func engine() throws -> EngineCore { try self.opened.get() }

    private static let openedExact: Result<EngineCore, EngineError> = Result { () throws(EngineError) -> EngineCore in
        let url: URL
        do { url = try ModelDownload().resolveDefaultModel() } catch { throw EngineError(.unavailable, "\(error)") }
        return try EngineCore.open(modelPath: url.path, options: EngineOptions(threads: 2), storage: .quantizedExact)
    }

    /// The default model with fp32 activations (`WeightStorage.quantizedExact`): the
    /// dequantized model's results up to summation order, for checks against numpy.
    static func exactEngine() throws -> EngineCore { try self.openedExact.get() }
}

@Suite("SmolLM2-135M-Instruct from GGUF (the default model)", .ownThreads)
struct SmolLMTests {
    @Test("config, tokenizer and weights as the GGUF declares them")
    func loaded() throws {
        let core = try SmolLM.engine()
        let c = core.model.config
        #expect(c.numLayers == 30 && c.hiddenSize == 576 && c.intermediateSize == 1536)
        #expect(c.numHeads == 9 && c.numKVHeads == 3 && c.headDim == 64)
        #expect(c.ropeTheta == 100_000 && abs(c.rmsNormEps - 1e-5) < 1e-9)
        #expect(c.vocabSize == 49152 && c.tieWordEmbeddings)
        #expect(core.model.weights.lmHead === core.model.weights.embedTokens)
        #expect(core.model.weights.embedTokens.format == .q8_0)
        #expect(core.model.weights.layers[0].linear[LinearModule.qProj.index].format == .q4_1)
        #expect(core.info.eosTokenIDs == [0, 2])
        #expect(core.info.modelName == "SmolLM2-135M-Instruct.Q4_1")
        #expect(core.tokenizer.bosTokenID == 1 && !core.tokenizer.addBosToken)
        let prompt = core.promptTokens(.chat([ChatTurn(role: "user", content: "Hi")]))
        // <|im_start|>system\n...<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n
        #expect(prompt.first == 1 && prompt.filter { $0 == 1 }.count == 3 && prompt.filter { $0 == 2 }.count == 2)
        #expect(core.tokenizer.tokenBytes(2).isEmpty && core.tokenizer.tokenBytes(1).isEmpty)
        #expect(String(decoding: core.tokenizer.tokenBytes(core.tokenizer.encode(" Paris")[0]), as: UTF8.self) == " Paris")
    }

    @Test("a ChatML chat request gets a coherent English answer")
    func capitalOfFrance() async throws {
        let core = try SmolLM.engine()
        let clock = ContinuousClock()
        let start = clock.now
        let c = await core.complete(
            GenerationRequest(
                // "What is the capital of France?" gets "L'Étoile, la Marseillaise," at greedy, from
                // llama.cpp (llama-server 11434) too: with 8-bit activations "L" beats "The" by
                // 0.3 nats there. This phrasing is answered "The capital of France is Paris.".
                id: "paris", prompt: .chat([ChatTurn(role: "user", content: "Which city is the capital of France?")]),
                params: SamplingParams(maxTokens: 12, temperature: 0)))
        print(
            "answer \(c.text.debugDescription) (\(c.tokens.count) tokens, \(c.finishReason.map { "\($0)" } ?? "-")) in \(clock.now - start)"
        )
        #expect(c.error == nil)
        #expect(c.text.contains("Paris"))
        #expect(c.text.contains("capital") || c.text.contains("France"))
        #expect(!c.text.contains("<|im_end|>"))
        #expect(c.tokens.count >= 3)
    }
}
