/// Why a parsed GGUF file could not be turned into a Llama model or a tokenizer.
///
/// The file itself was well formed (`GGUFError` covers that); these say which metadata key
/// or tensor is missing or unusable, so the message points at the conversion that went wrong.
package enum GGUFModelError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A required metadata key is absent.
    case missingMetadata(String)
    /// A metadata key has an unusable type.
    case wrongMetadataType(key: String, expected: String, found: String)
    /// `general.architecture` is not one this loader maps.
    case unsupportedArchitecture(String)
    /// A metadata value is out of range or inconsistent with another.
    case invalidMetadata(key: String, reason: String)
    /// The metadata gives hyper-parameters a Llama model cannot have.
    case invalidConfig(LlamaConfigError)
    /// A required tensor is absent.
    case missingTensor(String)
    /// A tensor's shape is not what the config implies.
    case unexpectedShape(tensor: String, expected: [Int], found: [Int])
    /// A tensor uses a ggml type that cannot be dequantized.
    case unsupportedTensorType(tensor: String, type: GGMLType)
    /// A buffer handed to the dequantizer does not match the element count.
    case sizeMismatch(type: GGMLType, elements: Int, bytes: Int)
    /// The tokenizer model is not GPT-2 byte-level BPE.
    case unsupportedTokenizer(model: String, pre: String)

    package var description: String {
        switch self {
        case .missingMetadata(let key):
            return "GGUF metadata '\(key)' is missing; the file was not converted for this architecture"
        case .wrongMetadataType(let key, let expected, let found):
            return "GGUF metadata '\(key)' is \(found), expected \(expected)"
        case .unsupportedArchitecture(let arch):
            return "GGUF architecture '\(arch)' is not supported; only 'llama' models load"
        case .invalidMetadata(let key, let reason):
            return "GGUF metadata '\(key)' is invalid: \(reason)"
        case .invalidConfig(let error):
            return "GGUF model hyper-parameter \(error)"
        case .missingTensor(let name):
            return "GGUF tensor '\(name)' is missing"
        case .unexpectedShape(let tensor, let expected, let found):
            return "GGUF tensor '\(tensor)' has row-major shape \(found), expected \(expected) from the model metadata"
        case .unsupportedTensorType(let tensor, let type):
            return "GGUF tensor '\(tensor)' has type \(type), which cannot be dequantized; supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0"
        case .sizeMismatch(let type, let elements, let bytes):
            return "\(bytes) bytes cannot hold exactly \(elements) elements of type \(type)"
        case .unsupportedTokenizer(let model, let pre):
            return
                "tokenizer model '\(model)' with pre-tokenizer '\(pre)' is not supported; only GPT-2 byte-level BPE ('gpt2') with pre-tokenizer 'smollm' (or 'gpt2', 'default') is"
        }
    }
}
