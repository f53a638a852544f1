// Fuzz target `gguf`: the GGUF reader, the Llama metadata mapping and the tokenizer
// built from GGUF metadata.
import Foundation
import LorikeetGGUF

/// Parses a GGUF file; reads every tensor's bytes, maps the metadata to a Llama config,
/// builds the tokenizer and round-trips a short text through it.
func fuzzGGUF(_ bytes: [UInt8]) {
    guard let file = try? GGUFFile(bytes: Data(bytes)) else { return }
    var checksum: UInt8 = 0
    for tensor in file.tensors {
        file.withTensorBytes(tensor) { raw in
            if raw.count != tensor.byteCount { fatalError("tensor \(tensor.name) has \(raw.count) bytes, not \(tensor.byteCount)") }
            if let last = raw.last { checksum &+= last }
        }
        if tensor.elementCount <= 1 << 14 { _ = try? LlamaGGUF.dequantize(file, tensor) }
    }
    _ = checksum
    _ = try? LlamaGGUF.config(from: file)
    if let tokenizer = try? BPETokenizer(gguf: file) {
        let ids = tokenizer.encode("Hello, world! <|im_start|>user\n1234 ünï", addBOS: nil, parseSpecial: true)
        _ = tokenizer.decode(ids)
        _ = tokenizer.renderChat([ChatMessage(role: "user", content: "hi")])
    }
}
