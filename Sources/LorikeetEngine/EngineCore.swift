import Foundation
import LorikeetGGUF
import LorikeetJSON
import LorikeetKernelDispatch
import LorikeetLimits

/// Settings of an engine instance (the `lorikeet engine` flags).
package struct EngineOptions: Sendable, Equatable {
    /// Adapter limits (`--max-loras`, `--max-cpu-loras`, `--max-lora-rank`).
    package var adapters: AdapterStore.Options
    /// Threads for large matrix products (`--threads`).
    package var threads: Int
    /// Sequences stepped together at most (vLLM's `max_num_seqs`).
    package var maxBatchSize: Int
    /// Served model name; defaults to the model directory's last component.
    package var modelName: String?
    /// Bytes of finished sequences' key/value caches kept for prompts that start the same
    /// way (`--prefix-cache-mib`; 0 turns the prefix cache off).
    package var prefixCacheBytes: Int
    /// Prompt tokens one step reads at most while no sequence decodes (`--prefill-chunk`).
    package var prefillChunk: Int
    /// Prompt tokens one step reads at most while some sequence decodes: each running
    /// stream's next token waits for the whole step (`--prefill-chunk-decoding`).
    package var prefillChunkWhileDecoding: Int

    /// The default prompt chunks: 256 tokens, 16 while streams decode.
    package static let defaultPrefillChunk = 256
    /// See `defaultPrefillChunk`.
    package static let defaultPrefillChunkWhileDecoding = 16
    /// The largest chunk either option accepts.
    package static let maxPrefillChunk = 8192

    /// The default prefix cache: 256 MiB (5,600 positions of SmolLM2-135M).
    package static let defaultPrefixCacheMiB = 256

    /// Creates options.
    package init(
        maxLoras: Int = 4, maxCpuLoras: Int? = nil, maxLoraRank: Int = 16, threads: Int = 1, maxBatchSize: Int = 32,
        modelName: String? = nil, allowedAdapterPathPrefixes: [String] = [], prefixCacheMiB: Int = Self.defaultPrefixCacheMiB,
        prefillChunk: Int = Self.defaultPrefillChunk, prefillChunkWhileDecoding: Int = Self.defaultPrefillChunkWhileDecoding
    ) {
        self.prefixCacheBytes = max(0, prefixCacheMiB) << 20
        self.prefillChunk = min(max(1, prefillChunk), Self.maxPrefillChunk)
        self.prefillChunkWhileDecoding = min(max(1, prefillChunkWhileDecoding), Self.maxPrefillChunk)
        self.adapters = AdapterStore.Options(
            maxLoras: maxLoras, maxCpuLoras: maxCpuLoras, maxLoraRank: maxLoraRank,
            allowedPathPrefixes: allowedAdapterPathPrefixes)
        self.threads = max(1, threads)
        self.maxBatchSize = max(1, maxBatchSize)
        self.modelName = modelName
    }
}

/// What the engine serves (the engine channel's `ModelInfo`).
package struct EngineModelInfo: Sendable, Equatable {
    /// Served model name.
    package var modelName: String
    /// HF architecture name.
    package var architecture: String
    /// Vocabulary size.
    package var vocabSize: Int
    /// Context length (`max_position_embeddings`).
    package var contextLength: Int
    /// Ids that end generation.
    package var eosTokenIDs: [UInt32]
    /// Adapter limits.
    package var maxLoras: Int
    /// Adapter cache size.
    package var maxCpuLoras: Int
    /// Largest adapter rank.
    package var maxLoraRank: Int
    /// The model's sampling defaults (`generation_config.json`), for fields a request
    /// leaves out.
    package var generationDefaults = GenerationDefaults()
}

/// Sampling defaults a model ships in `generation_config.json` (what vLLM applies with its
/// default `--generation-config auto`): each used when a request leaves the field out,
/// else vLLM's own default.
package struct GenerationDefaults: Sendable, Equatable {
    /// `temperature`.
    package var temperature: Float?
    /// `top_p`.
    package var topP: Float?
    /// `top_k`.
    package var topK: Int?
    /// `min_p`.
    package var minP: Float?
    /// `repetition_penalty`.
    package var repetitionPenalty: Float?

    /// No defaults.
    package init() {}

    /// The keys vLLM reads from a `generation_config.json` body; unknown keys, and values
    /// of the wrong type or out of range, are ignored.
    package init(json bytes: [UInt8]) {
        guard case .object(let members)? = try? JSONParser.parse(bytes, maximumValues: 4096) else { return }
        func number(_ key: String) -> Double? {
            switch members.first(where: { $0.0 == key })?.1 {
            case .int(let value)?: Double(value)
            case .double(let value)?: value
            default: nil
            }
        }
        if let t = number("temperature"), t >= 0, t <= 2 { self.temperature = Float(t) }
        if let p = number("top_p"), p > 0, p <= 1 { self.topP = Float(p) }
        if let k = number("top_k"), k >= 0, k <= 1_000_000 { self.topK = Int(k) }
        if let m = number("min_p"), m >= 0, m <= 1 { self.minP = Float(m) }
        if let r = number("repetition_penalty"), r > 0, r <= 100 { self.repetitionPenalty = Float(r) }
    }
}

/// The built-in reference engine: a Llama model, its tokenizer, the adapter table and
/// the scheduler, behind one facade that the engine server maps the engine channel onto.
///
/// `submit` validates on the calling thread (and may reload an evicted adapter from disk
/// there); generation runs on the scheduler's own thread.
package final class EngineCore: Sendable {
    /// The kernel builds this process runs: the fp32 kernels' (`portable`, or `avx2` when the
    /// CPU has x86-64-v3) and the integer kernels' (`generic`, `avx2`, `avxvnni`,
    /// `avx512vnni`). `LORIKEET_KERNELS=portable` forces the portable ones, `=avx2` the AVX2
    /// integer kernels alone, `=avxvnni` rules AVX-512 out.
    package static var kernels: String { Kernels.description }

    /// A warning for a `LORIKEET_KERNELS` value the engine does not take (it is ignored).
    package static var kernelLimitProblem: String? {
        KernelVariant.unrecognizedLimit().map {
            "LORIKEET_KERNELS=\($0.echoed()) is not one of \(KernelVariant.recognizedLimits.joined(separator: ", ")): ignored, the fastest kernels this CPU runs are used"
        }
    }

    /// The model (shared, immutable).
    package let model: LlamaModel
    /// The tokenizer.
    package let tokenizer: any EngineTokenizer
    /// The adapter table.
    package let adapters: AdapterStore
    /// Static model facts.
    package let info: EngineModelInfo
    private let scheduler: Scheduler

    /// Loads `config.json` + `model.safetensors` from `modelDirectory`, with the byte-level
    /// tokenizer of the fixture models.
    package convenience init(modelDirectory: String, options: EngineOptions = EngineOptions()) throws(EngineError) {
        let dir = modelDirectory.hasSuffix("/") && modelDirectory.count > 1 ? String(modelDirectory.dropLast()) : modelDirectory
        let weights: LlamaWeights
        do {
            let configBytes: [UInt8]
            let modelBytes: [UInt8]
            do {
                configBytes = try SecureFile.read(dir + "/config.json", limit: 1 << 24, followSymlinks: true)
                modelBytes = try SecureFile.read(dir + "/model.safetensors", followSymlinks: true)
            } catch {
                throw ModelLoadError.file(error)
            }
            let config = try LlamaConfig(json: Data(configBytes))
            let file: SafetensorsFile
            do {
                file = try SafetensorsFile(bytes: modelBytes)
            } catch {
                throw ModelLoadError.safetensors(error)
            }
            weights = try LlamaWeights(config: config, safetensors: file)
        } catch {
            throw EngineError(.invalidArgument, "cannot load model from \(dir): \(error)")
        }
        let c = weights.config
        let tokenizer = ByteTokenizer(vocabSize: c.vocabSize, bosTokenID: c.bosTokenID, eosTokenIDs: c.eosTokenIDs)
        var options = options
        if options.modelName == nil { options.modelName = URL(fileURLWithPath: dir).lastPathComponent }
        self.init(
            weights: weights, tokenizer: tokenizer, architecture: "LlamaForCausalLM", options: options,
            generationDefaults: Self.generationDefaults(in: dir))
    }

    /// The defaults of `dir/generation_config.json`, if there is one (at most 1 MiB).
    package static func generationDefaults(in dir: String) -> GenerationDefaults {
        guard let bytes = try? SecureFile.read(dir + "/generation_config.json", limit: 1 << 20, followSymlinks: true) else {
            return GenerationDefaults()
        }
        return GenerationDefaults(json: bytes)
    }

    /// Builds an engine from weights loaded elsewhere (the GGUF path) and their tokenizer.
    package init(
        weights: LlamaWeights, tokenizer: any EngineTokenizer, architecture: String = "LlamaForCausalLM",
        options: EngineOptions, generationDefaults: GenerationDefaults = GenerationDefaults()
    ) {
        self.model = LlamaModel(weights: weights, threads: options.threads)
        self.tokenizer = tokenizer
        self.adapters = AdapterStore(model: weights.config, options: options.adapters)
        self.info = EngineModelInfo(
            modelName: options.modelName ?? "model", architecture: architecture, vocabSize: weights.config.vocabSize,
            contextLength: weights.config.maxPositionEmbeddings, eosTokenIDs: tokenizer.eosTokenIDs,
            maxLoras: options.adapters.maxLoras, maxCpuLoras: options.adapters.maxCpuLoras,
            maxLoraRank: options.adapters.maxLoraRank, generationDefaults: generationDefaults)
        self.scheduler = Scheduler(
            model: self.model, tokenizer: tokenizer, adapters: self.adapters, maxBatchSize: options.maxBatchSize,
            prefillBudget: options.prefillChunk, prefillBudgetWhileDecoding: options.prefillChunkWhileDecoding,
            prefixCacheBytes: options.prefixCacheBytes)
    }

    deinit {
        self.scheduler.shutdown()
    }

    /// Requests waiting or running.
    package var runningRequests: Int { self.scheduler.requestCount }

    /// Prompt positions taken from another sequence's cache (the `n` choices of a request
    /// share their prompt's prefill) instead of computed, since start.
    package var sharedPromptTokens: Int { self.scheduler.sharedPromptTokens }

    /// Prompt positions copied from the prefix cache instead of computed, since start.
    package var cachedPromptTokens: Int { self.scheduler.cachedPromptTokens }

    /// Prompt token ids for a request's prompt.
    package func promptTokens(_ prompt: PromptInput) -> [UInt32] {
        switch prompt {
        case .tokens(let ids): ids
        case .text(let text): self.tokenizer.encodePrompt(text)
        case .chat(let turns): self.tokenizer.encodePrompt(self.tokenizer.renderChat(turns))
        }
    }

    /// Validates and queues a request; events arrive on the scheduler thread.
    ///
    /// Throws (and sends no event) for an invalid request (INVALID_ARGUMENT), an unknown
    /// adapter (NOT_FOUND), a duplicate id (ALREADY_EXISTS), or when an evicted adapter
    /// cannot be reloaded. May block on adapter file I/O: call from a thread of your own,
    /// not the Swift concurrency pool.
    package func submit(_ request: GenerationRequest, onEvent: @escaping @Sendable (GenerationEvent) -> Void) throws(EngineError) {
        let context = self.info.contextLength
        // A text that cannot fit whatever it encodes to is refused before it is encoded
        // (megabytes of text would hold this thread for half a second).
        if let bytes = request.prompt.textBytes {
            let atLeast = (bytes + self.tokenizer.longestTokenBytes - 1) / self.tokenizer.longestTokenBytes
            guard atLeast < context else {
                throw EngineError(
                    .invalidArgument,
                    "This model's maximum context length is \(context) tokens. However, your prompt has at least \(atLeast) tokens.")
            }
        }
        let prompt = self.promptTokens(request.prompt)
        guard !request.id.isEmpty else { throw EngineError(.invalidArgument, "request id must not be empty") }
        guard !prompt.isEmpty else { throw EngineError(.invalidArgument, "the prompt is empty") }
        if let bad = prompt.first(where: { Int($0) >= self.info.vocabSize }) {
            throw EngineError(.invalidArgument, "prompt token id \(bad) is outside the vocabulary (size \(self.info.vocabSize))")
        }
        guard prompt.count < context else {
            throw EngineError(
                .invalidArgument,
                "This model's maximum context length is \(context) tokens. However, your prompt has \(prompt.count) tokens.")
        }
        let p = request.params
        try Self.check(p, vocabSize: self.info.vocabSize)
        if let maxTokens = p.maxTokens, maxTokens > context - prompt.count {
            // vLLM's Python server (`VLLMValidationError`, row C8 of docs/vllm-compat-spec.md).
            throw EngineError(
                .invalidArgument,
                "This model's maximum context length is \(context) tokens. However, you requested \(maxTokens) output tokens and your prompt contains at least \(prompt.count) input tokens, for a total of at least \(maxTokens + prompt.count) tokens. Please reduce the length of the input prompt or the number of requested output tokens. (parameter=max_tokens, value=\(maxTokens))",
                param: "max_tokens")
        }
        if let topN = p.promptLogprobs, prompt.count * (topN + 1) > Limits.promptLogprobEntries {
            throw EngineError(
                .invalidArgument,
                "Prompt log probabilities for \(prompt.count) tokens with \(topN) alternatives exceed the limit of \(Limits.promptLogprobEntries) entries.",
                param: "logprobs")
        }
        var adapter: (weights: LoRAWeights, generation: UInt64)?
        if let id = request.adapterID, id != 0 {
            adapter = try self.adapters.weightsForRequest(id)
        }
        try self.scheduler.submit(
            id: request.id, prompt: prompt, adapterID: adapter == nil ? nil : request.adapterID, adapter: adapter,
            params: p, onEvent: onEvent)
    }

    /// The engine's own check of sampling parameters (the worker checks the same ranges
    /// at the HTTP edge).
    package static func check(_ p: SamplingParams, vocabSize: Int) throws(EngineError) {
        func refuse(_ message: String, _ param: String) -> EngineError { EngineError(.invalidArgument, message, param: param) }
        if let maxTokens = p.maxTokens, maxTokens < 1 { throw refuse("max_tokens must be at least 1, got \(maxTokens)", "max_tokens") }
        guard p.temperature >= 0, p.temperature.isFinite else {
            throw refuse("temperature must be non-negative, got \(p.temperature)", "temperature")
        }
        guard p.topP >= 0, p.topP <= 1 else { throw refuse("top_p must be in [0, 1], got \(p.topP)", "top_p") }
        guard p.topK >= 0 else { throw refuse("top_k must be non-negative, got \(p.topK)", "top_k") }
        guard p.minP >= 0, p.minP <= 1 else { throw refuse("min_p must be in [0, 1], got \(p.minP)", "min_p") }
        guard abs(p.presencePenalty) <= 2 else {
            throw refuse("presence_penalty must be in [-2, 2], got \(p.presencePenalty)", "presence_penalty")
        }
        guard abs(p.frequencyPenalty) <= 2 else {
            throw refuse("frequency_penalty must be in [-2, 2], got \(p.frequencyPenalty)", "frequency_penalty")
        }
        guard p.repetitionPenalty > 0, p.repetitionPenalty <= Limits.repetitionPenalty else {
            throw refuse(
                "repetition_penalty must be in (0, \(Int(Limits.repetitionPenalty))], got \(p.repetitionPenalty)",
                "repetition_penalty")
        }
        guard p.logitBias.count <= Limits.logitBiasEntries else {
            throw refuse("logit_bias has \(p.logitBias.count) entries; the limit is \(Limits.logitBiasEntries)", "logit_bias")
        }
        for (id, bias) in p.logitBias {
            guard Int(id) < vocabSize else {
                throw refuse(
                    "token_id(s) [\(id)] in logit_bias contain out-of-vocab token ids. Vocabulary size: \(vocabSize)", "logit_bias")
            }
            guard abs(bias) <= 100 else { throw refuse("logit_bias values must be in [-100, 100], got \(bias)", "logit_bias") }
        }
        guard p.minTokens >= 0, p.minTokens <= p.maxTokens ?? Int.max else {
            throw refuse("min_tokens must be between 0 and max_tokens, got \(p.minTokens)", "min_tokens")
        }
        for (value, param) in [(p.logprobs, "logprobs"), (p.promptLogprobs, "prompt_logprobs")] {
            if let value, value < 0 || value > Limits.topLogprobs {
                throw refuse("\(param) must be between 0 and \(Limits.topLogprobs), got \(value)", param)
            }
        }
    }

    /// Events of a request as an `AsyncStream` (convenience over `submit`). A request
    /// refused by `submit` yields one final event with finish reason `error`.
    package func generate(_ request: GenerationRequest) -> AsyncStream<GenerationEvent> {
        let (stream, continuation) = AsyncStream.makeStream(of: GenerationEvent.self)
        let id = request.id
        continuation.onTermination = { [weak self] termination in
            if case .cancelled = termination { self?.abort(id) }
        }
        do {
            try self.submit(request) { event in
                continuation.yield(event)
                if event.finishReason != nil { continuation.finish() }
            }
        } catch {
            continuation.yield(GenerationEvent(requestID: request.id, finishReason: .error, error: error))
            continuation.finish()
        }
        return stream
    }

    /// Aborts a request; returns false if it is not in flight.
    @discardableResult
    package func abort(_ requestID: String) -> Bool {
        self.scheduler.abort(requestID)
    }

    /// Aborts all requests and stops the scheduler thread.
    package func shutdown() {
        self.scheduler.shutdown()
    }
}
