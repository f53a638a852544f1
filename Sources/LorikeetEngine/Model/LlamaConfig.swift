package import Foundation
import LorikeetJSON
import LorikeetLimits

/// Why a model could not be loaded.
package enum ModelLoadError: Error, Equatable, CustomStringConvertible, Sendable {
    /// `config.json` is missing or unreadable.
    case file(SecureFileError)
    /// `config.json` is not valid JSON.
    case invalidJSON(String)
    /// A config field is missing or out of range.
    case invalidConfig(field: String, reason: String)
    /// The architecture is not Llama-compatible.
    case unsupportedArchitecture(String)
    /// `model.safetensors` is malformed.
    case safetensors(SafetensorsError)
    /// A weight tensor is missing.
    case missingTensor(String)
    /// A weight tensor has the wrong shape.
    case shapeMismatch(tensor: String, expected: [Int], actual: [Int])

    package var description: String {
        switch self {
        case .file(let e): "cannot read model: \(e.fullDescription)"
        case .invalidJSON(let m): "config.json is not valid JSON: \(m)"
        case .invalidConfig(let field, let reason): "config.json field '\(field)' \(reason)"
        case .unsupportedArchitecture(let a): "unsupported model architecture '\(a)'; only Llama-style models are supported"
        case .safetensors(let e): "model.safetensors: \(e)"
        case .missingTensor(let n): "model weights lack tensor '\(n)'"
        case .shapeMismatch(let n, let expected, let actual):
            "model tensor '\(n)' has shape \(actual), expected \(expected)"
        }
    }
}

/// Hyper-parameters of a Llama-architecture model, mirroring the fields of a Hugging Face
/// `config.json` for `LlamaForCausalLM` (and compatible: Mistral-style, SmolLM, Qwen2
/// without biases).
package struct LlamaConfig: Sendable, Equatable {
    /// `hidden_size`.
    package var hiddenSize: Int
    /// `intermediate_size` (SwiGLU MLP width).
    package var intermediateSize: Int
    /// `num_hidden_layers`.
    package var numLayers: Int
    /// `num_attention_heads`.
    package var numHeads: Int
    /// `num_key_value_heads` (grouped-query attention; defaults to `num_attention_heads`).
    package var numKVHeads: Int
    /// `head_dim` (defaults to hidden_size / num_attention_heads).
    package var headDim: Int
    /// `vocab_size`.
    package var vocabSize: Int
    /// `max_position_embeddings`: the context length.
    package var maxPositionEmbeddings: Int
    /// `rms_norm_eps`.
    package var rmsNormEps: Float
    /// `rope_theta`.
    package var ropeTheta: Double
    /// `tie_word_embeddings`: the output projection reuses `embed_tokens`.
    package var tieWordEmbeddings: Bool
    /// `bos_token_id`, when given.
    package var bosTokenId: UInt32?
    /// `eos_token_id` (a number or a list in HF configs).
    package var eosTokenIds: [UInt32]

    /// Creates a config from explicit values (used by other loaders, e.g. GGUF).
    package init(
        hiddenSize: Int, intermediateSize: Int, numLayers: Int, numHeads: Int, numKVHeads: Int,
        headDim: Int? = nil, vocabSize: Int, maxPositionEmbeddings: Int, rmsNormEps: Float,
        ropeTheta: Double, tieWordEmbeddings: Bool, bosTokenId: UInt32?, eosTokenIds: [UInt32]
    ) throws(ModelLoadError) {
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.numLayers = numLayers
        self.numHeads = numHeads
        self.numKVHeads = numKVHeads
        self.headDim = headDim ?? (numHeads > 0 ? hiddenSize / numHeads : 0)
        self.vocabSize = vocabSize
        self.maxPositionEmbeddings = maxPositionEmbeddings
        self.rmsNormEps = rmsNormEps
        self.ropeTheta = ropeTheta
        self.tieWordEmbeddings = tieWordEmbeddings
        self.bosTokenId = bosTokenId
        self.eosTokenIds = eosTokenIds
        try self.validate()
    }

    /// Width of the query projection output (heads × head_dim).
    package var qDim: Int { self.numHeads * self.headDim }
    /// Width of the key/value projection output (kv heads × head_dim).
    package var kvDim: Int { self.numKVHeads * self.headDim }

    private func validate() throws(ModelLoadError) {
        let limit = 1 << 20
        func positive(_ v: Int, _ field: String) throws(ModelLoadError) {
            guard v > 0, v <= limit else {
                throw .invalidConfig(field: field, reason: "must be between 1 and \(limit), got \(v)")
            }
        }
        try positive(self.hiddenSize, "hidden_size")
        try positive(self.intermediateSize, "intermediate_size")
        try positive(self.numLayers, "num_hidden_layers")
        try positive(self.numHeads, "num_attention_heads")
        try positive(self.numKVHeads, "num_key_value_heads")
        try positive(self.headDim, "head_dim")
        try positive(self.vocabSize, "vocab_size")
        try positive(self.maxPositionEmbeddings, "max_position_embeddings")
        guard self.numHeads % self.numKVHeads == 0 else {
            throw .invalidConfig(
                field: "num_key_value_heads",
                reason: "(\(self.numKVHeads)) must divide num_attention_heads (\(self.numHeads))")
        }
        guard self.headDim % 2 == 0 else { throw .invalidConfig(field: "head_dim", reason: "must be even for RoPE") }
        guard self.rmsNormEps > 0, self.rmsNormEps.isFinite else {
            throw .invalidConfig(field: "rms_norm_eps", reason: "must be a positive number")
        }
        guard self.ropeTheta > 0, self.ropeTheta.isFinite else {
            throw .invalidConfig(field: "rope_theta", reason: "must be a positive number")
        }
        for id in self.eosTokenIds + (self.bosTokenId.map { [$0] } ?? []) where Int(id) >= self.vocabSize {
            throw .invalidConfig(field: "eos_token_id/bos_token_id", reason: "token id \(id) is outside the vocabulary")
        }
    }

    /// Parses a Hugging Face `config.json`.
    package init(json data: Data) throws(ModelLoadError) {
        let parsed: JSONValue
        do {
            parsed = try JSONParser.parse(Array(data))
        } catch {
            let member = error.member.map { " in '\($0.echoed(limit: 64))'" } ?? ""
            throw .invalidJSON("\(error)\(member)")
        }
        // Duplicate keys: the last one counts, as with Transformers' json.load.
        guard let root = parsed.objectValue else { throw .invalidJSON("top level is not an object") }
        if case .array(let archs) = root["architectures"] {
            let names = archs.compactMap(\.stringValue)
            let supported = ["LlamaForCausalLM", "MistralForCausalLM"]
            if let first = names.first, !names.contains(where: supported.contains) {
                throw .unsupportedArchitecture(first)
            }
        } else if let type = root["model_type"]?.stringValue, !["llama", "mistral"].contains(type) {
            throw .unsupportedArchitecture(type)
        }
        func int(_ key: String) throws(ModelLoadError) -> Int {
            guard let v = root[key] else { throw .invalidConfig(field: key, reason: "is missing") }
            guard let n = v.nonNegativeInt else { throw .invalidConfig(field: key, reason: "must be a non-negative integer") }
            return n
        }
        func optionalInt(_ key: String) throws(ModelLoadError) -> Int? {
            guard let v = root[key], v != .null else { return nil }
            guard let n = v.nonNegativeInt else { throw .invalidConfig(field: key, reason: "must be a non-negative integer") }
            return n
        }
        func number(_ key: String, default value: Double) throws(ModelLoadError) -> Double {
            guard let v = root[key], v != .null else { return value }
            guard let d = v.doubleValue else { throw .invalidConfig(field: key, reason: "must be a number") }
            return d
        }
        if let act = root["hidden_act"]?.stringValue, act != "silu" {
            throw .invalidConfig(field: "hidden_act", reason: "must be 'silu', got '\(act)'")
        }
        if let scaling = root["rope_scaling"], scaling != .null {
            throw .invalidConfig(field: "rope_scaling", reason: "is not supported by the reference engine")
        }
        for flag in ["attention_bias", "mlp_bias"] where root[flag]?.boolValue == true {
            throw .invalidConfig(field: flag, reason: "is not supported by the reference engine")
        }
        let heads = try int("num_attention_heads")
        var eos: [UInt32] = []
        switch root["eos_token_id"] {
        case .none, .some(.null): break
        case .some(.array(let ids)):
            for id in ids {
                guard let n = id.nonNegativeInt, n <= Int(UInt32.max) else {
                    throw .invalidConfig(field: "eos_token_id", reason: "must be token ids")
                }
                eos.append(UInt32(n))
            }
        case .some(let v):
            guard let n = v.nonNegativeInt, n <= Int(UInt32.max) else {
                throw .invalidConfig(field: "eos_token_id", reason: "must be a token id")
            }
            eos = [UInt32(n)]
        }
        let bos = try optionalInt("bos_token_id")
        try self.init(
            hiddenSize: try int("hidden_size"),
            intermediateSize: try int("intermediate_size"),
            numLayers: try int("num_hidden_layers"),
            numHeads: heads,
            numKVHeads: try optionalInt("num_key_value_heads") ?? heads,
            headDim: try optionalInt("head_dim"),
            vocabSize: try int("vocab_size"),
            maxPositionEmbeddings: try optionalInt("max_position_embeddings") ?? 2048,
            rmsNormEps: Float(try number("rms_norm_eps", default: 1e-6)),
            ropeTheta: try number("rope_theta", default: 10000),
            tieWordEmbeddings: root["tie_word_embeddings"]?.boolValue ?? false,
            bosTokenId: try bos.map { (b: Int) throws(ModelLoadError) -> UInt32 in
                guard b <= Int(UInt32.max) else { throw .invalidConfig(field: "bos_token_id", reason: "too large") }
                return UInt32(b)
            },
            eosTokenIds: eos)
    }
}
