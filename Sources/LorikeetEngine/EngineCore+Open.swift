import Foundation
import LorikeetGGUF

extension EngineCore {
    /// Opens the model the `lorikeet engine` command serves (`--model PATH`): the one
    /// model-loading entry point, for the engine process, the benchmarks and the tests.
    ///
    /// - a directory: Hugging Face `config.json` + `model.safetensors` with the fixture
    ///   models' byte tokenizer (`init(modelDirectory:options:)`).
    /// - a `.gguf` file: a Llama GGUF with its byte-level BPE tokenizer and ChatML template;
    ///   weights stay quantized (`storage`), Q/K rows in HF order so PEFT adapters apply.
    ///
    /// Without `--model`, the command layer finds (and on first use downloads) the default
    /// model, SmolLM2-135M-Instruct, and passes its path here (`ModelDownload` in LorikeetCLI).
    /// The served model name defaults to the file or directory name (without `.gguf`).
    /// Throws `EngineError`: NOT_FOUND for a missing path, INVALID_ARGUMENT for a file that is
    /// not a loadable model. Loads synchronously (a second or two for the default model):
    /// call it before serving, not on the Swift concurrency pool.
    package static func open(
        modelPath: String, options: EngineOptions = EngineOptions(), storage: WeightStorage = .quantized
    ) throws(EngineError) -> EngineCore {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: modelPath, isDirectory: &isDirectory) else {
            throw EngineError(.notFound, "model path \(modelPath) does not exist")
        }
        if isDirectory.boolValue {
            return try EngineCore(modelDirectory: modelPath, options: options)
        }
        guard modelPath.lowercased().hasSuffix(".gguf") else {
            throw EngineError(
                .invalidArgument,
                "model path \(modelPath) is neither a directory (config.json + model.safetensors) nor a .gguf file")
        }
        return try Self.openGGUF(path: modelPath, options: options, storage: storage)
    }

    /// Loads a Llama GGUF file with its tokenizer.
    package static func openGGUF(
        path: String, options: EngineOptions, storage: WeightStorage = .quantized
    ) throws(EngineError) -> EngineCore {
        let weights: LlamaWeights
        let tokenizer: GGUFTokenizer
        do {
            let file = try GGUFFile(contentsOf: URL(fileURLWithPath: path))
            tokenizer = GGUFTokenizer(try BPETokenizer(gguf: file))
            weights = try LlamaGGUF.loadWeights(file, storage: storage, stopTokenIDs: tokenizer.eosTokenIDs)
        } catch {
            throw EngineError(.invalidArgument, "cannot load model from \(path): \(error)")
        }
        guard tokenizer.vocabSize <= weights.config.vocabSize else {
            throw EngineError(
                .invalidArgument,
                "cannot load model from \(path): the tokenizer has \(tokenizer.vocabSize) tokens but the model only \(weights.config.vocabSize)"
            )
        }
        var options = options
        if options.modelName == nil {
            let name = URL(fileURLWithPath: path).lastPathComponent
            options.modelName = name.lowercased().hasSuffix(".gguf") ? String(name.dropLast(5)) : name
        }
        return EngineCore(weights: weights, tokenizer: tokenizer, options: options)
    }
}
