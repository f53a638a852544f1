/// Maps a Llama GGUF file to Hugging Face names and layout: its config, its tensor plan and
/// the Q/K row order. The engine's `LlamaGGUF.loadWeights` (LorikeetEngine) is the one
/// loader built on it.
///
/// GGUF → HF names: `token_embd` → `model.embed_tokens`, `blk.N.attn_{q,k,v,output}` →
/// `model.layers.N.self_attn.{q,k,v,o}_proj`, `blk.N.ffn_{gate,up,down}` →
/// `model.layers.N.mlp.{gate,up,down}_proj`, `blk.N.attn_norm` / `ffn_norm` →
/// `input_layernorm` / `post_attention_layernorm`, `output_norm` → `model.norm`,
/// `output` → `lm_head` (absent when embeddings are tied).
///
/// GGUF lists dimensions innermost first, so a GGUF `[in, out]` weight is row-major
/// `[out, in]` with no data movement. llama.cpp's `convert_hf_to_gguf.py` permutes the rows of
/// Q and K for its interleaved RoPE (`permute(w, n_head, n_head_kv)`); the loader inverts that,
/// so the result is exactly the HF checkpoint layout: HF's `rotate_half` RoPE and PEFT LoRA
/// adapters for `q_proj` / `k_proj` apply unchanged.
package enum LlamaGGUF {
    /// Dequantizes one tensor to `Float` in its stored (GGUF) row order.
    package static func dequantize(_ file: GGUFFile, _ info: GGUFTensorInfo) throws(GGUFModelError) -> [Float] {
        guard GGUFDequantizer.supports(info.type) else {
            throw .unsupportedTensorType(tensor: info.name, type: info.type)
        }
        return try file.withTensorBytes(info) { (raw) throws(GGUFModelError) -> [Float] in
            try GGUFDequantizer.dequantize(raw, type: info.type, count: info.elementCount)
        }
    }

    /// Reads the model hyper-parameters from `llama.*` metadata.
    ///
    /// - Parameter stopTokenIDs: the end-of-sequence ids (for ChatML models `<|im_end|>` as
    ///   well as EOS); when empty, `tokenizer.ggml.eos_token_id` if declared.
    package static func config(from file: GGUFFile, stopTokenIDs: [UInt32] = []) throws(GGUFModelError) -> LlamaConfig {
        let arch = try file.string("general.architecture")
        guard arch == "llama" else { throw .unsupportedArchitecture(arch) }
        let hidden = try file.int("llama.embedding_length")
        let heads = try file.int("llama.attention.head_count")
        let kvHeads = file["llama.attention.head_count_kv"] == nil ? heads : try file.int("llama.attention.head_count_kv")
        guard hidden > 0 else { throw .invalidMetadata(key: "llama.embedding_length", reason: "must be positive, is \(hidden)") }
        guard heads > 0 else { throw .invalidMetadata(key: "llama.attention.head_count", reason: "must be positive, is \(heads)") }
        guard kvHeads > 0, heads % kvHeads == 0 else {
            throw .invalidMetadata(
                key: "llama.attention.head_count_kv", reason: "\(kvHeads) must be positive and divide the head count \(heads)")
        }
        var headDim = hidden / heads
        if file["llama.attention.key_length"] != nil {
            headDim = try file.int("llama.attention.key_length")
        } else if file["llama.rope.dimension_count"] != nil {
            headDim = try file.int("llama.rope.dimension_count")
        }
        guard headDim > 0, headDim % 2 == 0 else {
            throw .invalidMetadata(key: "llama.rope.dimension_count", reason: "head dimension \(headDim) must be positive and even")
        }
        let embedding = file.tensor(named: "token_embd.weight")
        var vocab = embedding?.shape.first ?? 0
        if file["llama.vocab_size"] != nil { vocab = try file.int("llama.vocab_size") }
        guard vocab > 0 else { throw .missingMetadata("llama.vocab_size") }
        let layers = try file.int("llama.block_count")
        let intermediate = try file.int("llama.feed_forward_length")
        guard layers > 0, intermediate > 0 else {
            throw .invalidMetadata(
                key: "llama.block_count", reason: "block count \(layers) and feed-forward length \(intermediate) must be positive")
        }
        let ropeTheta = file["llama.rope.freq_base"] == nil ? 10000 : try file.double("llama.rope.freq_base")
        func tokenID(_ key: String) throws(GGUFModelError) -> UInt32? {
            guard let id = file[key]?.intValue else { return nil }
            guard id >= 0, id <= Int(UInt32.max) else { throw .invalidMetadata(key: key, reason: "\(id) is not a token id") }
            return UInt32(id)
        }
        let bos = try tokenID("tokenizer.ggml.bos_token_id")
        let eos = try tokenID("tokenizer.ggml.eos_token_id")
        let context = try file.int("llama.context_length")
        let eps = Float(try file.double("llama.attention.layer_norm_rms_epsilon"))
        do throws(LlamaConfigError) {
            return try LlamaConfig(
                hiddenSize: hidden, intermediateSize: intermediate, numLayers: layers, numHeads: heads,
                numKVHeads: kvHeads, headDim: headDim, vocabSize: vocab, maxPositionEmbeddings: context,
                rmsNormEps: eps, ropeTheta: ropeTheta, tieWordEmbeddings: file.tensor(named: "output.weight") == nil,
                bosTokenID: bos, eosTokenIDs: stopTokenIDs.isEmpty ? (eos.map { [$0] } ?? []) : stopTokenIDs)
        } catch {
            throw .invalidConfig(error)
        }
    }

    /// (GGUF name, HF name, expected row-major shape) for every tensor of `config`.
    package static func tensorPlan(_ config: LlamaConfig) -> [(gguf: String, hf: String, shape: [Int])] {
        let h = config.hiddenSize
        let q = config.qDim
        let kv = config.kvDim
        let f = config.intermediateSize
        var plan: [(gguf: String, hf: String, shape: [Int])] = [
            ("token_embd.weight", "model.embed_tokens.weight", [config.vocabSize, h]),
            ("output_norm.weight", "model.norm.weight", [h]),
        ]
        if !config.tieWordEmbeddings {
            plan.append(("output.weight", "lm_head.weight", [config.vocabSize, h]))
        }
        for n in 0..<config.numLayers {
            let b = "blk.\(n)."
            let l = "model.layers.\(n)."
            plan += [
                (b + "attn_norm.weight", l + "input_layernorm.weight", [h]),
                (b + "attn_q.weight", l + "self_attn.q_proj.weight", [q, h]),
                (b + "attn_k.weight", l + "self_attn.k_proj.weight", [kv, h]),
                (b + "attn_v.weight", l + "self_attn.v_proj.weight", [kv, h]),
                (b + "attn_output.weight", l + "self_attn.o_proj.weight", [h, q]),
                (b + "ffn_norm.weight", l + "post_attention_layernorm.weight", [h]),
                (b + "ffn_gate.weight", l + "mlp.gate_proj.weight", [f, h]),
                (b + "ffn_up.weight", l + "mlp.up_proj.weight", [f, h]),
                (b + "ffn_down.weight", l + "mlp.down_proj.weight", [h, f]),
            ]
        }
        return plan
    }

    /// Applies llama.cpp's Q/K row permutation (HF layout → GGUF layout) to a row-major
    /// `[rows, columns]` matrix: `w.reshape(heads, 2, rows/heads/2, columns).swapaxes(1, 2)`.
    ///
    /// Within each head, HF row `s * half + i` (s in 0...1, i < half) becomes row `2 * i + s`.
    /// Use it on PEFT `lora_B` for `q_proj` / `k_proj` when working in GGUF layout.
    package static func permuteQK(_ values: inout [Float], rows: Int, columns: Int, heads: Int) {
        Self.reorderRows(&values, rows: rows, columns: columns, heads: heads, toGGUF: true)
    }

    /// Inverts `permuteQK`: GGUF (llama.cpp RoPE) row order → HF row order.
    ///
    /// Within each head, GGUF row `2 * i + s` becomes HF row `s * half + i`.
    package static func unpermuteQK(_ values: inout [Float], rows: Int, columns: Int, heads: Int) {
        Self.reorderRows(&values, rows: rows, columns: columns, heads: heads, toGGUF: false)
    }

    private static func reorderRows(_ values: inout [Float], rows: Int, columns: Int, heads: Int, toGGUF: Bool) {
        precondition(heads > 0 && rows % (2 * heads) == 0, "rows \(rows) must split into \(heads) heads of even size")
        precondition(values.count == rows * columns, "values hold \(values.count) elements, not \(rows) x \(columns)")
        let headDim = rows / heads
        let half = headDim / 2
        let source = values
        source.withUnsafeBufferPointer { srcBuffer in
            values.withUnsafeMutableBufferPointer { dstBuffer in
                guard let src = srcBuffer.baseAddress, let dst = dstBuffer.baseAddress else { return }
                for h in 0..<heads {
                    for s in 0..<2 {
                        for i in 0..<half {
                            let hfRow = h * headDim + s * half + i
                            let ggufRow = h * headDim + 2 * i + s
                            let (from, to) = toGGUF ? (hfRow, ggufRow) : (ggufRow, hfRow)
                            (dst + to * columns).update(from: src + from * columns, count: columns)
                        }
                    }
                }
            }
        }
    }
}
