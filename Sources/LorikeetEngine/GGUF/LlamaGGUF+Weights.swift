package import LorikeetGGUF
import LorikeetKernelDispatch

/// How a GGUF model's linear weights are kept in memory.
package enum WeightStorage: String, Sendable {
    /// Keep Q4_1 / Q8_0 blocks and compute on them (about 92 MiB for SmolLM2-135M), with
    /// the input quantized to 8 bits per block of 32 and integer dot products, as llama.cpp
    /// does. Other types (F16, BF16, Q4_0, F32) are dequantized to fp32.
    case quantized
    /// Keep the blocks, multiply them with fp32 input: the dequantized model's results up to
    /// summation order (reference checks), 2-3x slower than `quantized`.
    case quantizedExact = "quantized-exact"
    /// Dequantize everything to fp32 at load (about 513 MiB for SmolLM2-135M).
    case float32
}

extension LlamaGGUF {
    /// Loads a Llama GGUF file as engine weights with Hugging Face names and layout: the one
    /// GGUF loader (`EngineCore.openGGUF` for serving, the tests for the reference checks).
    ///
    /// Q and K rows are un-permuted from llama.cpp's RoPE order to HF's (see
    /// `unpermuteQK`), so the engine's `rotate_half` RoPE and PEFT LoRA adapters for
    /// `q_proj` / `k_proj` apply unchanged. Tied embeddings share one matrix. The config
    /// comes from `llama.*` metadata (rope theta, RMS eps, GQA heads, head dim); the EOS
    /// ids are `stopTokenIDs` (for ChatML models, `<|im_end|>` as well as EOS).
    package static func loadWeights(
        _ file: GGUFFile, storage: WeightStorage = .quantized, stopTokenIDs: [UInt32]
    ) throws -> LlamaWeights {
        let config = try Self.config(from: file, stopTokenIDs: stopTokenIDs)
        var plan: [String: (gguf: String, shape: [Int])] = [:]
        for entry in Self.tensorPlan(config) { plan[entry.hf] = (entry.gguf, entry.shape) }
        return try LlamaWeights(config: config) { (name, shape) throws -> WeightMatrix in
            guard let entry = plan[name], let info = file.tensor(named: entry.gguf) else { throw GGUFModelError.missingTensor(name) }
            guard info.shape == entry.shape, entry.shape == shape else {
                throw GGUFModelError.unexpectedShape(tensor: entry.gguf, expected: shape, found: info.shape)
            }
            return try Self.matrix(file, info, shape: shape, storage: storage, heads: Self.qkHeads(entry.gguf, config))
        }
    }

    /// Heads for the Q/K un-permutation, or 0 for other tensors.
    private static func qkHeads(_ ggufName: String, _ config: LlamaConfig) -> Int {
        if ggufName.hasSuffix(".attn_q.weight") { return config.numHeads }
        if ggufName.hasSuffix(".attn_k.weight") { return config.numKVHeads }
        return 0
    }

    private static func matrix(
        _ file: GGUFFile, _ info: GGUFTensorInfo, shape: [Int], storage: WeightStorage, heads: Int
    ) throws -> WeightMatrix {
        let rows = shape[0]
        let columns = shape.count > 1 ? shape[1] : 1
        let format: WeightMatrix.Format? =
            switch info.type {
            case .q4_1: .q4_1
            case .q8_0: .q8_0
            default: nil
            }
        if storage != .float32, let format, shape.count == 2, columns % 32 == 0 {
            let product: QuantizedProduct = storage == .quantized ? .int8 : .fp32
            return try file.withTensorBytes(info) { raw throws -> WeightMatrix in
                guard raw.count == info.byteCount, raw.count % rows == 0 else {
                    throw GGUFModelError.sizeMismatch(type: info.type, elements: info.elementCount, bytes: raw.count)
                }
                guard heads > 0 else { return WeightMatrix(ggml: format, rows: rows, columns: columns, bytes: raw, product: product) }
                // Reorder whole rows (ggml blocks never straddle rows) from GGUF to HF order.
                let rowBytes = raw.count / rows
                let headDim = rows / heads
                let half = headDim / 2
                var reordered = [UInt8](repeating: 0, count: raw.count)
                reordered.withUnsafeMutableBytes { dst in
                    for h in 0..<heads {
                        for s in 0..<2 {
                            for i in 0..<half {
                                let to = (h * headDim + s * half + i) * rowBytes
                                let from = (h * headDim + 2 * i + s) * rowBytes
                                dst.baseAddress!.advanced(by: to).copyMemory(from: raw.baseAddress! + from, byteCount: rowBytes)
                            }
                        }
                    }
                }
                return reordered.withUnsafeBytes { WeightMatrix(ggml: format, rows: rows, columns: columns, bytes: $0, product: product) }
            }
        }
        var values = try Self.dequantize(file, info)
        if heads > 0 { Self.unpermuteQK(&values, rows: rows, columns: columns, heads: heads) }
        return WeightMatrix(dense: FloatTensor(shape: shape, values: values))
    }
}
