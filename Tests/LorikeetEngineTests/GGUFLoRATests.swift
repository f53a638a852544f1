import Foundation
import LorikeetGGUF
import LorikeetTestSupport
import Testing

@testable import LorikeetCLI
@testable import LorikeetEngine

@Suite("LoRA on GGUF weights against a numpy reference", .ownThreads)
struct GGUFLoRATests {
    /// Runs Tests/Fixtures/gguf_lora_reference.py (cached by script and tokens) and returns its directory.
    static func reference(tokens: [UInt32]) throws -> URL {
        let root = URL(fileURLWithPath: Fixture.repoRoot)
        let script = root.appendingPathComponent("Tests/Fixtures/gguf_lora_reference.py")
        var key = Array(try Data(contentsOf: script))
        key += Array(tokens.map(String.init).joined(separator: ",").utf8)
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in key { hash = (hash ^ UInt64(b)) &* 0x100_0000_01b3 }
        let dir = ModelDownload().cacheDirectory.appendingPathComponent("test-fixtures/gguf-lora-\(String(hash, radix: 16))")
        if FileManager.default.fileExists(atPath: dir.appendingPathComponent("info.json").path) { return dir }
        let python = root.appendingPathComponent(".venv/bin/python")
        guard FileManager.default.isExecutableFile(atPath: python.path) else {
            throw Fixture.Failure(
                description: "\(python.path) is missing: run bin/test (it creates .venv from Tests/Fixtures/requirements.txt)")
        }
        let tmp = dir.deletingLastPathComponent().appendingPathComponent(dir.lastPathComponent + ".tmp-\(getpid())")
        try? FileManager.default.removeItem(at: tmp)
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        try RealModel.runPython(python, script: script, [ModelDownload().defaultModelURL.path, tmp.path] + tokens.map(String.init))
        if rename(tmp.path, dir.path) != 0 { try? FileManager.default.removeItem(at: tmp) }
        return dir
    }

    static func floats(_ url: URL) throws -> [Float] {
        let data = try Data(contentsOf: url)
        return data.withUnsafeBytes { raw in
            (0..<(data.count / 4)).map {
                Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self)))
            }
        }
    }

    /// max |a - b| / max |b|.
    static func relativeError(_ a: [Float], _ b: [Float]) -> Float {
        var diff: Float = 0
        var scale: Float = 0
        for (x, y) in zip(a, b) {
            diff = max(diff, abs(x - y))
            scale = max(scale, abs(y))
        }
        return diff / scale
    }

    @Test("a q/k/v/o_proj adapter changes the logits exactly as the dequantized numpy model says (fp32 activations)")
    func adapterMatchesNumpy() throws {
        let core = try SmolLM.exactEngine()
        let tokens = core.tokenizer.encode("The quick brown fox jumps over")
        #expect(tokens.count == 6)
        let dir = try Self.reference(tokens: tokens)
        let refBase = try Self.floats(dir.appendingPathComponent("base_logits.f32"))
        let refLoRA = try Self.floats(dir.appendingPathComponent("lora_logits.f32"))
        #expect(refBase.count == 49152 && refLoRA.count == 49152)

        _ = try core.adapters.add(name: "gguf-qkvo", intID: 41, path: dir.appendingPathComponent("adapter").path, epoch: 1)
        defer { try? core.adapters.remove(intID: 41, epoch: 1) }
        let adapter = try core.adapters.weightsForRequest(41).weights
        #expect(adapter.rank == 4 && adapter.scaling == 2)
        #expect(adapter.targetedModules == [.qProj, .kProj, .vProj, .oProj])

        let base = core.model.lastLogits(tokens)
        let lora = core.model.lastLogits(tokens, adapter: adapter)
        let baseError = Self.relativeError(base, refBase)
        let loraError = Self.relativeError(lora, refLoRA)
        // The adapter's own effect, and how well the engine reproduces it.
        let refDelta = zip(refLoRA, refBase).map { $0 - $1 }
        let delta = zip(lora, base).map { $0 - $1 }
        let deltaError = Self.relativeError(delta, refDelta)
        let effect = Self.relativeError(refLoRA, refBase)
        print(
            "GGUF LoRA: base rel. error \(baseError), adapter rel. error \(loraError), delta rel. error \(deltaError), adapter effect \(effect)"
        )
        #expect(baseError < 1e-2)
        #expect(loraError < 1e-2)
        #expect(deltaError < 2e-2)
        #expect(effect > 0.1, "the adapter must change the logits meaningfully")
        let argmax = { (v: [Float]) in v.indices.max { v[$0] < v[$1] }! }
        #expect(argmax(base) == argmax(refBase))
        #expect(argmax(lora) == argmax(refLoRA))
        #expect(deltaError * 100 < effect, "the reproduced effect must dwarf the numerical error")
    }
}

extension GGUFLoRATests {
    /// Log-softmax in Double.
    static func logProbabilities(_ logits: [Float]) -> [Double] {
        let top = Double(logits.max()!)
        let total = logits.reduce(0.0) { $0 + exp(Double($1) - top) }
        return logits.map { Double($0) - top - log(total) }
    }

    @Test("adapter products split over the pool's threads give the one-thread logits, bit for bit")
    func threadedAdapterRows() throws {
        let core = try SmolLM.engine()
        let dir = try Self.reference(tokens: core.tokenizer.encode("The quick brown fox jumps over"))
        _ = try core.adapters.add(name: "gguf-qkvo-threads", intID: 43, path: dir.appendingPathComponent("adapter").path, epoch: 1)
        defer { try? core.adapters.remove(intID: 43, epoch: 1) }
        let adapter = try core.adapters.weightsForRequest(43).weights
        // 40 rows: enough adapter work per module for a pool region (WorkerPool.minimumParallelWork).
        let tokens = core.tokenizer.encode(String(repeating: "The quick brown fox jumps over the lazy dog. ", count: 4))
        #expect(tokens.count >= 36)
        let one = LlamaModel(weights: core.model.weights, threads: 1)
        let two = LlamaModel(weights: core.model.weights, threads: 2)
        #expect(one.lastLogits(tokens, adapter: adapter) == two.lastLogits(tokens, adapter: adapter))
        #expect(one.lastLogits(tokens, adapter: adapter) != one.lastLogits(tokens))
    }

    @Test("8-bit activations (the default): the next-token distribution stays close to the dequantized numpy model's")
    func int8MatchesNumpy() throws {
        let core = try SmolLM.engine()
        _ = try core.adapters.add(
            name: "gguf-qkvo-int8", intID: 42,
            path: try Self.reference(tokens: core.tokenizer.encode("The quick brown fox jumps over")).appendingPathComponent("adapter")
                .path,
            epoch: 1)
        defer { try? core.adapters.remove(intID: 42, epoch: 1) }
        let adapter = try core.adapters.weightsForRequest(42).weights
        for text in ["The quick brown fox jumps over", "The capital of France is", "def fibonacci(n):"] {
            let tokens = core.tokenizer.encode(text)
            let dir = try Self.reference(tokens: tokens)
            for (file, logits) in [
                ("base_logits.f32", core.model.lastLogits(tokens)), ("lora_logits.f32", core.model.lastLogits(tokens, adapter: adapter)),
            ] {
                let expected = Self.logProbabilities(try Self.floats(dir.appendingPathComponent(file)))
                let got = Self.logProbabilities(logits)
                // KL(numpy || lorikeet): 0.0003-0.005 nats measured on these prompts, and the
                // top 5 within 0.36 nats, as llama.cpp's (which quantizes activations the same
                // way); a wrong code or scale gives whole nats.
                var divergence = 0.0
                for i in expected.indices { divergence += exp(expected[i]) * (expected[i] - got[i]) }
                let best = expected.indices.max { expected[$0] < expected[$1] }!
                let top = expected.indices.sorted { expected[$0] > expected[$1] }.prefix(5)
                print(
                    "8-bit activations, \(text) \(file): KL \(divergence), numpy's top 5 lorikeet - numpy "
                        + top.map { String(format: "%.3f", got[$0] - expected[$0]) }.joined(separator: " "))
                #expect(divergence < 0.02, "\(text) \(file): KL \(divergence)")
                #expect(got.indices.max { got[$0] < got[$1] } == best, "\(text) \(file): another most likely token")
                #expect(abs(got[best] - expected[best]) < 0.1, "\(text) \(file): \(got[best]) vs \(expected[best])")
            }
        }
    }
}
