import Foundation
import LorikeetGGUF
import LorikeetTestSupport
import Testing

@testable import LorikeetEngine

@Suite("SmolLM2-135M-Instruct GGUF (downloaded once into the cache)", .ownThreads)
struct RealModelTests {
    @Test("metadata and config match the model card")
    func metadata() throws {
        let model = try RealModel.get()
        let file = model.file
        #expect(file.version == 3)
        #expect(file.tensors.count == 272)
        #expect(file.tensors.filter { $0.type == .q4_1 }.count == 210)
        #expect(file.tensors.filter { $0.type == .f32 }.count == 61)
        #expect(file.tensor(named: "token_embd.weight")?.type == .q8_0)
        let config = try LlamaGGUF.config(from: file)
        #expect(config.numLayers == 30)
        #expect(config.hiddenSize == 576)
        #expect(config.intermediateSize == 1536)
        #expect(config.numHeads == 9)
        #expect(config.numKVHeads == 3)
        #expect(config.headDim == 64)
        #expect(config.vocabSize == 49152)
        #expect(config.maxPositionEmbeddings == 8192)
        #expect(config.ropeTheta == 100_000)
        #expect(abs(config.rmsNormEps - 1e-5) < 1e-9)
        #expect(config.tieWordEmbeddings)
        #expect(config.bosTokenID == 1 && config.eosTokenIDs == [2])
        #expect(file["tokenizer.ggml.merges"]?.arrayValue?.count == 48900)
        #expect(file["tokenizer.ggml.pre"]?.stringValue == "smollm")
        let tok = model.tokenizer
        #expect(tok.vocabularySize == 49152)
        #expect(tok.bosTokenID == 1 && tok.eosTokenID == 2)
        #expect(tok.tokenID("<|im_start|>") == 1 && tok.tokenID("<|im_end|>") == 2)
        #expect(tok.stopTokenIDs == [0, 2])
        #expect(!tok.addBOSByDefault)
        #expect(tok.preTokenizer == .smollm)
    }

    @Test("the declared chat template is ChatML with a default system prompt, rendered exactly as jinja2 renders it")
    func chatTemplate() throws {
        let model = try RealModel.get()
        let reference = try RealModel.getReference()
        let template = try #require(model.tokenizer.chatTemplate)
        print("tokenizer.chat_template = \(template.debugDescription)")
        #expect(template == reference.template)
        #expect(model.tokenizer.defaultSystemPrompt == "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        #expect(reference.chats.count >= 5)
        for chat in reference.chats {
            #expect(model.tokenizer.renderChat(chat.messages) == chat.withPrompt)
            #expect(model.tokenizer.renderChat(chat.messages, addGenerationPrompt: false) == chat.withoutPrompt)
        }
        let prompt = model.tokenizer.encode(model.tokenizer.renderChat([ChatMessage(role: "user", content: "Hi")]))
        #expect(prompt.first == 1 && prompt.filter { $0 == 2 }.count == 2)
        let generationPrompt = [1] + model.tokenizer.encode("assistant\n")
        #expect(Array(prompt.suffix(generationPrompt.count)) == generationPrompt)
    }

    @Test("token ids equal Hugging Face tokenizers' on the 200+ string corpus")
    func matchesReference() throws {
        let tok = try RealModel.get().tokenizer
        let reference = try RealModel.getReference()
        #expect(reference.encodings.count >= 200)
        var mismatches = 0
        for (text, ids) in reference.encodings {
            let mine = tok.encode(text)
            if mine != ids {
                mismatches += 1
                Issue.record("\(text.debugDescription): got \(mine), tokenizers gives \(ids)")
            }
        }
        #expect(mismatches == 0)
        // Throughput, for the record: the first 40 corpus strings repeated (about 170 KB).
        let text = String(repeating: reference.encodings.map(\.text).prefix(40).joined(separator: " "), count: 400)
        let clock = ContinuousClock()
        var count = 0
        let elapsed = clock.measure { count = tok.encode(text).count }
        print("encoded \(text.utf8.count) bytes into \(count) tokens in \(elapsed)")
    }

    @Test("decode(encode(s)) == s on a varied corpus, and tokenBytes concatenate to the text")
    func roundTrip() throws {
        let tok = try RealModel.get().tokenizer
        let reference = try RealModel.getReference()
        let extra = [
            "Plain ASCII sentence.", "Punctuation!?;:,.()[]{}<>\"'", "Digits 0123456789 and 3.14", "Emoji 🦜🎉👩‍💻🇯🇵",
            "CJK 中文字符 日本語 한국어", "Whitespace   runs\t\t\tand\n\n\nnewlines\r\n", "    ", "\n", "Mixed: café, naïve, Ωμέγα, Привет",
        ]
        // SmolLM2 has no token for 21 bytes (6 control characters and bytes that valid UTF-8
        // never or almost never holds); encode drops them, as llama.cpp and `tokenizers` do.
        let missing = Set((0..<256).map(UInt8.init).filter { tok.tokenID(String(Character(ByteLevel.byteToUnicode[Int($0)]))) == nil })
        #expect(
            missing == [
                0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE,
                0xFF,
            ])
        var exact = 0
        for text in reference.encodings.map(\.text) + extra {
            let ids = tok.encode(text)
            let encodable = Array(text.utf8).filter { !missing.contains($0) }
            #expect(ids.flatMap(tok.tokenBytes) == encodable, "bytes of \(text.debugDescription)")
            if encodable.count == text.utf8.count {
                #expect(Array(tok.decode(ids).utf8) == Array(text.utf8), "round trip of \(text.debugDescription)")
                exact += 1
            }
        }
        #expect(exact >= 300)
        // A token cut inside a multi-byte character: tokenBytes gives raw bytes, decode repairs.
        let parrot = tok.encode("🦜")
        #expect(parrot.flatMap(tok.tokenBytes) == Array("🦜".utf8))
        #expect(tok.decode([parrot[0]]).contains("\u{FFFD}") || parrot.count == 1)
    }

    @Test("streaming token bytes through UTF8StreamDecoder reproduces text cut inside characters")
    func streaming() throws {
        let tok = try RealModel.get().tokenizer
        let text = "Emoji 🦜🎉👩‍💻 and CJK 中文字符 日本語 done"
        let ids = tok.encode(text)
        var decoder = UTF8StreamDecoder()
        var out = ""
        var cutInside = 0
        for id in ids {
            if String(bytes: tok.tokenBytes(id), encoding: .utf8) == nil { cutInside += 1 }
            let piece = decoder.append(tok.tokenBytes(id))
            #expect(!piece.contains("\u{FFFD}"))
            out += piece
        }
        out += decoder.finish()
        #expect(out == text)
        #expect(cutInside > 0, "the text should contain tokens that end inside a character")
    }

    @Test("special tokens: parsed in text when allowed, plain text otherwise")
    func specials() throws {
        let tok = try RealModel.get().tokenizer
        #expect(tok.encode("<|im_start|>user\nHi<|im_end|>") == [1] + tok.encode("user\nHi") + [2])
        let asText = tok.encode("<|im_end|>", parseSpecial: false)
        #expect(!asText.contains(2) && tok.decode(asText) == "<|im_end|>")
        #expect(tok.decode([1, 2], skipSpecial: true) == "")
        #expect(tok.encode("Hi", addBOS: true) == [1] + tok.encode("Hi"))
    }

    @Test(
        "the GGUF loader's fp32 weights equal the numpy reference, its quantized weights give the same products; time and memory reported")
    func wholeModelWeights() throws {
        let model = try RealModel.get()
        let reference = try RealModel.getReference()
        let before = RealModel.memoryMiB()
        let clock = ContinuousClock()
        var loaded: LlamaWeights?
        let elapsed = try clock.measure { loaded = try LlamaGGUF.loadWeights(model.file, storage: .float32, stopTokenIDs: []) }
        let after = RealModel.memoryMiB()
        let weights = try #require(loaded)
        let tensors = Self.tensors(weights)
        let parameters = tensors.values.reduce(0) { $0 + $1.values.count }
        print(
            "loaded \(tensors.count) tensors, \(parameters) parameters (\(parameters * 4 / 1_048_576) MiB fp32) in \(elapsed);"
                + " RSS before \(before?.current ?? -1) MiB, after \(after?.current ?? -1) MiB, peak \(after?.peak ?? -1) MiB")
        #expect(tensors.count == 2 + 9 * 30)
        #expect(parameters == 134_515_008)
        #expect(weights.lmHead === weights.embedTokens)
        #expect(tensors["model.embed_tokens.weight"]?.shape == [49152, 576])
        #expect(tensors["model.layers.0.self_attn.q_proj.weight"]?.shape == [576, 576])
        #expect(tensors["model.layers.0.self_attn.k_proj.weight"]?.shape == [192, 576])
        #expect(tensors["model.layers.0.self_attn.o_proj.weight"]?.shape == [576, 576])
        #expect(tensors["model.layers.29.mlp.down_proj.weight"]?.shape == [576, 1536])
        #expect(tensors["model.layers.29.mlp.gate_proj.weight"]?.shape == [1536, 576])
        #expect(tensors["model.norm.weight"]?.shape == [576])
        for entry in LlamaGGUF.tensorPlan(weights.config) {
            #expect(tensors[entry.hf]?.values.count == entry.shape.reduce(1, *), "\(entry.hf)")
        }
        #expect(reference.tensors.count == 8)
        for (name, expected) in reference.tensors {
            let mine = try #require(tensors[name], "\(name)").values
            let cols = expected.shape.count == 2 ? expected.shape[1] : 1
            let n = expected.savedRows * cols
            #expect(expected.values.count == n)
            var maxDiff: Float = 0
            for i in 0..<n { maxDiff = max(maxDiff, abs(mine[i] - expected.values[i])) }
            #expect(maxDiff <= 1e-6, "\(name): max |swift - numpy| = \(maxDiff)")
        }
        // The quantized storage reorders Q/K rows at the byte level to the same values.
        let quantized = Self.matrices(try LlamaGGUF.loadWeights(model.file, storage: .quantized, stopTokenIDs: []))
        for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.29.self_attn.k_proj.weight", "model.embed_tokens.weight"] {
            let matrix = try #require(quantized[name])
            #expect(matrix.format != .f32, "\(name)")
            let expected = try #require(tensors[name]).values
            let values = matrix.values
            var maxDiff: Float = 0
            for i in 0..<values.count { maxDiff = max(maxDiff, abs(values[i] - expected[i])) }
            #expect(values.count == expected.count && maxDiff <= 1e-6, "\(name): max |quantized - fp32| = \(maxDiff)")
        }
        // The un-permutation must matter: the raw GGUF row order differs from HF's.
        let info = try #require(model.file.tensor(named: "blk.0.attn_q.weight"))
        let raw = try LlamaGGUF.dequantize(model.file, info)
        #expect(raw != tensors["model.layers.0.self_attn.q_proj.weight"]?.values)
    }

    /// Every weight of `weights` by Hugging Face name.
    static func matrices(_ weights: LlamaWeights) -> [String: WeightMatrix] {
        var out = ["model.embed_tokens.weight": weights.embedTokens]
        for (l, layer) in weights.layers.enumerated() {
            for module in LinearModule.allCases { out[module.path(layer: l) + ".weight"] = layer.linear[module.index] }
        }
        return out
    }

    /// Every tensor of `weights` as fp32 (row-major shape, values) by Hugging Face name.
    static func tensors(_ weights: LlamaWeights) -> [String: (shape: [Int], values: [Float])] {
        var out = Self.matrices(weights).mapValues { (shape: $0.shape, values: $0.values) }
        out["model.norm.weight"] = (weights.finalNorm.shape, weights.finalNorm.values)
        for (l, layer) in weights.layers.enumerated() {
            out["model.layers.\(l).input_layernorm.weight"] = (layer.inputNorm.shape, layer.inputNorm.values)
            out["model.layers.\(l).post_attention_layernorm.weight"] = (layer.postAttentionNorm.shape, layer.postAttentionNorm.values)
        }
        return out
    }
}
