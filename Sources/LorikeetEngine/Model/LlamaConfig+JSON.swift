package import Foundation
package import LorikeetGGUF
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

extension ModelLoadError {
    /// A config value out of range, named by its `config.json` field.
    package init(_ error: LlamaConfigError) {
        self = .invalidConfig(field: error.field, reason: error.reason)
    }
}

extension LlamaConfig {
    /// Parses a Hugging Face `config.json` (safetensors models; GGUF models get theirs from
    /// `LlamaGGUF.config(from:)`).
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
        let hiddenSize = try int("hidden_size")
        let intermediateSize = try int("intermediate_size")
        let numLayers = try int("num_hidden_layers")
        let numKVHeads = try optionalInt("num_key_value_heads") ?? heads
        let headDim = try optionalInt("head_dim")
        let vocabSize = try int("vocab_size")
        let maxPositionEmbeddings = try optionalInt("max_position_embeddings") ?? 2048
        let rmsNormEps = Float(try number("rms_norm_eps", default: 1e-6))
        let ropeTheta = try number("rope_theta", default: 10000)
        let bosTokenID = try bos.map { (b: Int) throws(ModelLoadError) -> UInt32 in
            guard b <= Int(UInt32.max) else { throw .invalidConfig(field: "bos_token_id", reason: "too large") }
            return UInt32(b)
        }
        do throws(LlamaConfigError) {
            try self.init(
                hiddenSize: hiddenSize, intermediateSize: intermediateSize, numLayers: numLayers, numHeads: heads,
                numKVHeads: numKVHeads, headDim: headDim, vocabSize: vocabSize,
                maxPositionEmbeddings: maxPositionEmbeddings, rmsNormEps: rmsNormEps, ropeTheta: ropeTheta,
                tieWordEmbeddings: root["tie_word_embeddings"]?.boolValue ?? false,
                bosTokenID: bosTokenID, eosTokenIDs: eos)
        } catch {
            throw ModelLoadError(error)
        }
    }
}
