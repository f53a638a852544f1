package import LorikeetGGUF

/// A host-side tensor handed to `LlamaWeights` by a loader: fp32 values with a shape.
package struct HostTensor: Sendable {
    /// Dimensions, outermost first (`[out, in]` for a linear weight, HF layout).
    package var shape: [Int]
    /// Row-major fp32 values.
    package var values: [Float]

    /// Creates a tensor; `values.count` must equal the product of `shape`.
    package init(shape: [Int], values: [Float]) {
        self.shape = shape
        self.values = values
    }
}

/// The linear projections of a Llama decoder layer, named as in Hugging Face modules and
/// PEFT `target_modules`.
package enum LinearModule: String, CaseIterable, Sendable, Hashable {
    case qProj = "q_proj"
    case kProj = "k_proj"
    case vProj = "v_proj"
    case oProj = "o_proj"
    case gateProj = "gate_proj"
    case upProj = "up_proj"
    case downProj = "down_proj"

    /// The parent module in the HF path (`self_attn` or `mlp`).
    package var parent: String {
        switch self {
        case .qProj, .kProj, .vProj, .oProj: "self_attn"
        case .gateProj, .upProj, .downProj: "mlp"
        }
    }

    /// The module path, e.g. `model.layers.3.self_attn.q_proj`.
    package func path(layer: Int) -> String { "model.layers.\(layer).\(self.parent).\(self.rawValue)" }

    /// `[out, in]` of the weight for a config.
    package func shape(_ c: LlamaConfig) -> [Int] {
        switch self {
        case .qProj: [c.qDim, c.hiddenSize]
        case .kProj, .vProj: [c.kvDim, c.hiddenSize]
        case .oProj: [c.hiddenSize, c.qDim]
        case .gateProj, .upProj: [c.intermediateSize, c.hiddenSize]
        case .downProj: [c.hiddenSize, c.intermediateSize]
        }
    }

    /// Dense index for per-layer tables.
    package var index: Int {
        switch self {
        case .qProj: 0
        case .kProj: 1
        case .vProj: 2
        case .oProj: 3
        case .gateProj: 4
        case .upProj: 5
        case .downProj: 6
        }
    }
}

/// fp32 weights of a Llama model, keyed by Hugging Face tensor names and validated
/// against a `LlamaConfig`.
///
/// Any loader can build one: the safetensors loader (`init(config:safetensors:)`), or a
/// GGUF loader that dequantizes to fp32 and un-permutes Q/K rows to the HF layout
/// (`init(config:tensors:)`). Names: `model.embed_tokens.weight`,
/// `model.layers.N.self_attn.{q,k,v,o}_proj.weight`, `model.layers.N.mlp.{gate,up,down}_proj.weight`,
/// `model.layers.N.{input,post_attention}_layernorm.weight`, `model.norm.weight`,
/// `lm_head.weight` (absent when `tie_word_embeddings`).
package final class LlamaWeights: Sendable {
    /// One decoder layer.
    package struct Layer: Sendable {
        /// Linear weights indexed by `LinearModule.index`, each `[out, in]`.
        package let linear: [WeightMatrix]
        /// `input_layernorm.weight`.
        package let inputNorm: FloatTensor
        /// `post_attention_layernorm.weight`.
        package let postAttentionNorm: FloatTensor
    }

    /// The hyper-parameters these weights were validated against.
    package let config: LlamaConfig
    /// `model.embed_tokens.weight`, `[vocab, hidden]`.
    package let embedTokens: WeightMatrix
    /// Decoder layers.
    package let layers: [Layer]
    /// `model.norm.weight`.
    package let finalNorm: FloatTensor
    /// `lm_head.weight` (`embed_tokens` when tied), `[vocab, hidden]`.
    package let lmHead: WeightMatrix
    /// Floats of matmul scratch one input row needs: the most any matrix of any layer
    /// (or the output projection) needs, since layers may use different block types.
    package let scratchPerRow: Int

    /// Builds weights from fp32 tensors keyed by HF names; checks every shape.
    /// Extra tensors (e.g. `rotary_emb.inv_freq`) are ignored.
    package convenience init(config: LlamaConfig, tensors: [String: HostTensor]) throws(ModelLoadError) {
        try self.init(config: config) { (name, shape) throws(ModelLoadError) -> WeightMatrix in
            guard let t = tensors[name] else { throw .missingTensor(name) }
            guard t.shape == shape, t.values.count == shape.reduce(1, *) else {
                throw .shapeMismatch(tensor: name, expected: shape, actual: t.shape)
            }
            return WeightMatrix(dense: FloatTensor(shape: shape, values: t.values))
        }
    }

    /// Builds weights from a provider that returns the tensor of a HF name as a matrix
    /// (1-D norm weights as `[n, 1]` fp32 matrices), after checking it against `shape`.
    package init<E: Error>(
        config: LlamaConfig, tensor: (_ name: String, _ shape: [Int]) throws(E) -> WeightMatrix
    ) throws(E) {
        func vector(_ name: String, _ n: Int) throws(E) -> FloatTensor {
            FloatTensor(shape: [n], values: try tensor(name, [n]).values)
        }
        let c = config
        self.config = config
        self.embedTokens = try tensor("model.embed_tokens.weight", [c.vocabSize, c.hiddenSize])
        var layers: [Layer] = []
        for l in 0..<c.numLayers {
            var linear: [WeightMatrix] = []
            for m in LinearModule.allCases {
                linear.append(try tensor(m.path(layer: l) + ".weight", m.shape(c)))
            }
            layers.append(
                Layer(
                    linear: linear,
                    inputNorm: try vector("model.layers.\(l).input_layernorm.weight", c.hiddenSize),
                    postAttentionNorm: try vector("model.layers.\(l).post_attention_layernorm.weight", c.hiddenSize)))
        }
        self.layers = layers
        self.finalNorm = try vector("model.norm.weight", c.hiddenSize)
        if c.tieWordEmbeddings {
            self.lmHead = self.embedTokens
        } else {
            self.lmHead = try tensor("lm_head.weight", [c.vocabSize, c.hiddenSize])
        }
        self.scratchPerRow = (layers.flatMap(\.linear) + [self.lmHead]).map { $0.scratchCount(batch: 1) }.max() ?? 0
    }

    /// Builds weights from a parsed safetensors file (F32/F16/BF16 converted to fp32).
    package convenience init(config: LlamaConfig, safetensors file: SafetensorsFile) throws(ModelLoadError) {
        try self.init(config: config) { (name, shape) throws(ModelLoadError) -> WeightMatrix in
            guard let info = file.tensors[name] else { throw .missingTensor(name) }
            guard info.shape == shape else { throw .shapeMismatch(tensor: name, expected: shape, actual: info.shape) }
            do throws(SafetensorsError) {
                return WeightMatrix(dense: FloatTensor(shape: shape, values: try file.floats(name).values))
            } catch {
                throw .safetensors(error)
            }
        }
    }
}
