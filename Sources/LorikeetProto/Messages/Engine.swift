import CLorikeetProto

/// Sampling settings of one generation (`lorikeet.v1.SamplingParams`; vLLM's
/// `SamplingParams` fields). A nil temperature, top-p, top-k, min-p or repetition penalty
/// means the request left it out: the engine uses the model's generation defaults.
package struct SamplingParams: Sendable, Equatable {
    /// 0 = the rest of the context.
    package var maxTokens: UInt32
    /// Below 1e-5 = greedy; nil = the model's default (else 1).
    package var temperature: Float?
    /// 0 or 1 = off; nil = the model's default (else off).
    package var topP: Float?
    /// 0 = off; nil = the model's default (else off).
    package var topK: UInt32?
    /// 0 = off; nil = the model's default (else off).
    package var minP: Float?
    /// 1 = off; nil = the model's default (else off).
    package var repetitionPenalty: Float?
    /// OpenAI's `presence_penalty`.
    package var presencePenalty: Float
    /// OpenAI's `frequency_penalty`.
    package var frequencyPenalty: Float
    /// OpenAI's `logit_bias`, in request order.
    package var logitBias: [LogitBias]
    /// vLLM's `min_tokens`.
    package var minTokens: UInt32
    /// Same seed, same tokens; nil = random.
    package var seed: UInt64?
    package var stop: [String]
    /// vLLM's `include_stop_str_in_output`.
    package var includeStopStrInOutput: Bool
    package var stopTokenIDs: [UInt32]
    package var ignoreEOS: Bool
    /// Top log probabilities per generated token (0–20); nil = none.
    package var logprobs: UInt32?
    /// Top log probabilities per prompt token (0–20); nil = none.
    package var promptLogprobs: UInt32?
    /// Structured output: the JSON schema (as JSON text) the output must match; nil = none.
    package var jsonSchema: String?
    /// Structured output: the output is exactly one of these (vLLM's `guided_choice`);
    /// empty = none.
    package var choices: [String]
    /// vLLM's `bad_words`.
    package var badWords: [String]
    /// vLLM's `skip_special_tokens` (default true).
    package var skipSpecialTokens: Bool
    /// vLLM's `cache_salt`; nil = none.
    package var cacheSalt: String?

    package init(
        maxTokens: UInt32 = 16, temperature: Float? = 0, topP: Float? = 1, topK: UInt32? = 0, minP: Float? = 0,
        repetitionPenalty: Float? = 1, presencePenalty: Float = 0, frequencyPenalty: Float = 0,
        logitBias: [LogitBias] = [], minTokens: UInt32 = 0, seed: UInt64? = nil, stop: [String] = [],
        includeStopStrInOutput: Bool = false, stopTokenIDs: [UInt32] = [], ignoreEOS: Bool = false,
        logprobs: UInt32? = nil, promptLogprobs: UInt32? = nil, jsonSchema: String? = nil, choices: [String] = [],
        badWords: [String] = [], skipSpecialTokens: Bool = true, cacheSalt: String? = nil
    ) {
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.topP = topP
        self.topK = topK
        self.minP = minP
        self.repetitionPenalty = repetitionPenalty
        self.presencePenalty = presencePenalty
        self.frequencyPenalty = frequencyPenalty
        self.logitBias = logitBias
        self.minTokens = minTokens
        self.seed = seed
        self.stop = stop
        self.includeStopStrInOutput = includeStopStrInOutput
        self.stopTokenIDs = stopTokenIDs
        self.ignoreEOS = ignoreEOS
        self.logprobs = logprobs
        self.promptLogprobs = promptLogprobs
        self.jsonSchema = jsonSchema
        self.choices = choices
        self.badWords = badWords
        self.skipSpecialTokens = skipSpecialTokens
        self.cacheSalt = cacheSalt
    }
}

extension SamplingParams: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("max_tokens", self.maxTokens)
        writer.set("temperature", self.temperature ?? 0)
        writer.set("temperature_from_model", self.temperature == nil)
        writer.set("top_p", self.topP ?? 0)
        writer.set("top_p_from_model", self.topP == nil)
        writer.set("top_k", self.topK ?? 0)
        writer.set("top_k_from_model", self.topK == nil)
        writer.set("min_p", self.minP ?? 0)
        writer.set("min_p_from_model", self.minP == nil)
        writer.set("repetition_penalty", self.repetitionPenalty ?? 0)
        writer.set("repetition_penalty_from_model", self.repetitionPenalty == nil)
        writer.set("presence_penalty", self.presencePenalty)
        writer.set("frequency_penalty", self.frequencyPenalty)
        writer.set("logit_bias", self.logitBias)
        writer.set("min_tokens", self.minTokens)
        writer.set("has_seed", self.seed != nil)
        writer.set("seed", self.seed ?? 0)
        writer.set("stop", self.stop)
        writer.set("include_stop_str_in_output", self.includeStopStrInOutput)
        writer.set("stop_token_ids", self.stopTokenIDs)
        writer.set("ignore_eos", self.ignoreEOS)
        writer.set("has_logprobs", self.logprobs != nil)
        writer.set("logprobs", self.logprobs ?? 0)
        writer.set("has_prompt_logprobs", self.promptLogprobs != nil)
        writer.set("prompt_logprobs", self.promptLogprobs ?? 0)
        writer.set("json_schema", self.jsonSchema ?? "")
        writer.set("choices", self.choices)
        writer.set("bad_words", self.badWords)
        writer.set("keep_special_tokens", !self.skipSpecialTokens)
        writer.set("cache_salt", self.cacheSalt ?? "")
    }
    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        self.init(
            maxTokens: reader.uint32("max_tokens"),
            temperature: reader.bool("temperature_from_model") ? nil : reader.float("temperature"),
            topP: reader.bool("top_p_from_model") ? nil : reader.float("top_p"),
            topK: reader.bool("top_k_from_model") ? nil : reader.uint32("top_k"),
            minP: reader.bool("min_p_from_model") ? nil : reader.float("min_p"),
            repetitionPenalty: reader.bool("repetition_penalty_from_model") ? nil : reader.float("repetition_penalty"),
            presencePenalty: reader.float("presence_penalty"), frequencyPenalty: reader.float("frequency_penalty"),
            logitBias: try reader.messages("logit_bias"), minTokens: reader.uint32("min_tokens"),
            seed: reader.bool("has_seed") ? reader.uint64("seed") : nil, stop: reader.strings("stop"),
            includeStopStrInOutput: reader.bool("include_stop_str_in_output"),
            stopTokenIDs: reader.uint32s("stop_token_ids"), ignoreEOS: reader.bool("ignore_eos"),
            logprobs: reader.bool("has_logprobs") ? reader.uint32("logprobs") : nil,
            promptLogprobs: reader.bool("has_prompt_logprobs") ? reader.uint32("prompt_logprobs") : nil,
            jsonSchema: Self.nonEmpty(reader.string("json_schema")), choices: reader.strings("choices"),
            badWords: reader.strings("bad_words"), skipSpecialTokens: !reader.bool("keep_special_tokens"),
            cacheSalt: Self.nonEmpty(reader.string("cache_salt"))
        )
    }
}

extension SamplingParams {
    fileprivate static func nonEmpty(_ text: String) -> String? { text.isEmpty ? nil : text }
}

/// One `logit_bias` entry (`lorikeet.v1.LogitBias`).
package struct LogitBias: Sendable, Equatable {
    package var tokenID: UInt32
    package var bias: Float
    package init(tokenID: UInt32, bias: Float) {
        self.tokenID = tokenID
        self.bias = bias
    }
}

extension LogitBias: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("token_id", self.tokenID)
        writer.set("bias", self.bias)
    }
    init(from reader: CMessageReader) { self.init(tokenID: reader.uint32("token_id"), bias: reader.float("bias")) }
}

/// A token with its log probability and text (`lorikeet.v1.TokenLogprob`).
package struct TokenLogprob: Sendable, Equatable {
    package var tokenID: UInt32
    package var logprob: Float
    /// The token's bytes as UTF-8 (lossy).
    package var token: String
    package init(tokenID: UInt32, logprob: Float, token: String) {
        self.tokenID = tokenID
        self.logprob = logprob
        self.token = token
    }
}

extension TokenLogprob: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("token_id", self.tokenID)
        writer.set("logprob", self.logprob)
        writer.set("token", self.token)
    }
    init(from reader: CMessageReader) {
        self.init(tokenID: reader.uint32("token_id"), logprob: reader.float("logprob"), token: reader.string("token"))
    }
}

/// The log probabilities at one position (`lorikeet.v1.PositionLogprobs`): the chosen
/// token's (nil logprob for the first prompt token, which has none) and the most likely.
package struct PositionLogprobs: Sendable, Equatable {
    package var chosen: TokenLogprob
    package var top: [TokenLogprob]
    /// The first prompt token: `chosen.logprob` is meaningless and `top` empty.
    package var noLogprob: Bool
    package init(chosen: TokenLogprob, top: [TokenLogprob] = [], noLogprob: Bool = false) {
        self.chosen = chosen
        self.top = top
        self.noLogprob = noLogprob
    }
}

extension PositionLogprobs: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("chosen", self.chosen)
        writer.set("top", self.top)
        writer.set("no_logprob", self.noLogprob)
    }
    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        self.init(
            chosen: try reader.message("chosen") ?? TokenLogprob(tokenID: 0, logprob: 0, token: ""),
            top: try reader.messages("top"), noLogprob: reader.bool("no_logprob"))
    }
}

/// The adapter a request runs with.
package struct AdapterRef: Sendable, Equatable {
    package var name: String
    package var intID: UInt64
    package var path: String
    package init(name: String = "", intID: UInt64 = 0, path: String = "") {
        self.name = name
        self.intID = intID
        self.path = path
    }
}

extension AdapterRef: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("name", self.name)
        writer.set("int_id", self.intID)
        writer.set("path", self.path)
    }
    init(from reader: CMessageReader) {
        self.init(name: reader.string("name"), intID: reader.uint64("int_id"), path: reader.string("path"))
    }
}

/// One chat message (OpenAI `messages[]` entry), rendered by the engine's chat template.
package struct ChatMessage: Sendable, Equatable {
    package var role: String
    package var content: String
    package init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

extension ChatMessage: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("role", self.role)
        writer.set("content", self.content)
    }
    init(from reader: CMessageReader) { self.init(role: reader.string("role"), content: reader.string("content")) }
}

/// A generation request; the prompt is tokens, text, or chat messages.
package struct GenerateRequest: Sendable, Equatable {
    package var requestID: String
    package var promptTokens: [UInt32]
    package var promptText: String
    package var messages: [ChatMessage]
    package var sampling: SamplingParams
    /// nil = base model.
    package var adapter: AdapterRef?

    package init(
        requestID: String, promptTokens: [UInt32] = [], promptText: String = "", messages: [ChatMessage] = [],
        sampling: SamplingParams = SamplingParams(), adapter: AdapterRef? = nil
    ) {
        self.requestID = requestID
        self.promptTokens = promptTokens
        self.promptText = promptText
        self.messages = messages
        self.sampling = sampling
        self.adapter = adapter
    }
}

extension GenerateRequest: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("request_id", self.requestID)
        writer.set("prompt_tokens", self.promptTokens)
        writer.set("prompt_text", self.promptText)
        writer.set("messages", self.messages)
        writer.set("sampling", self.sampling)
        writer.set("adapter", self.adapter)
    }
    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        self.init(
            requestID: reader.string("request_id"), promptTokens: reader.uint32s("prompt_tokens"),
            promptText: reader.string("prompt_text"), messages: try reader.messages("messages"),
            sampling: try reader.message("sampling") ?? SamplingParams(), adapter: try reader.message("adapter")
        )
    }
}

/// Token counts of a finished request.
package struct Usage: Sendable, Equatable {
    package var promptTokens: UInt32
    package var completionTokens: UInt32
    /// Prompt positions the engine copied from a cache instead of computing (prefix caching).
    package var cachedPromptTokens: UInt32
    package init(promptTokens: UInt32 = 0, completionTokens: UInt32 = 0, cachedPromptTokens: UInt32 = 0) {
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.cachedPromptTokens = cachedPromptTokens
    }
}

extension Usage: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("prompt_tokens", self.promptTokens)
        writer.set("completion_tokens", self.completionTokens)
        writer.set("cached_prompt_tokens", self.cachedPromptTokens)
    }
    init(from reader: CMessageReader) {
        self.init(
            promptTokens: reader.uint32("prompt_tokens"), completionTokens: reader.uint32("completion_tokens"),
            cachedPromptTokens: reader.uint32("cached_prompt_tokens"))
    }
}

/// A piece of a generation stream; the last one has a non-empty `finishReason`.
package struct GenerateChunk: Sendable, Equatable {
    package var requestID: String
    package var tokens: [UInt32]
    package var text: String
    /// "" while running; then "stop", "length", "abort" or "error".
    package var finishReason: String
    package var usage: Usage?
    package var status: Status
    /// One per token, when the request asked for log probabilities.
    package var logprobs: [PositionLogprobs]
    /// On the first chunk, when the request asked for prompt log probabilities.
    package var promptLogprobs: [PositionLogprobs]
    /// On the last chunk of finish reason "stop": the stop string that matched, or the stop
    /// token id (vLLM's `stop_reason`); nil for EOS.
    package var stopReason: StopReason?

    /// What stopped a generation besides EOS (vLLM's `stop_reason`).
    package enum StopReason: Sendable, Equatable {
        case string(String)
        case token(UInt32)
    }

    package init(
        requestID: String = "", tokens: [UInt32] = [], text: String = "", finishReason: String = "", usage: Usage? = nil,
        status: Status = .ok, logprobs: [PositionLogprobs] = [], promptLogprobs: [PositionLogprobs] = [],
        stopReason: StopReason? = nil
    ) {
        self.requestID = requestID
        self.tokens = tokens
        self.text = text
        self.finishReason = finishReason
        self.usage = usage
        self.status = status
        self.logprobs = logprobs
        self.promptLogprobs = promptLogprobs
        self.stopReason = stopReason
    }
}

extension GenerateChunk: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("request_id", self.requestID)
        writer.set("tokens", self.tokens)
        writer.set("text", self.text)
        writer.set("finish_reason", self.finishReason)
        writer.set("usage", self.usage)
        writer.set("status", self.status)
        writer.set("logprobs", self.logprobs)
        writer.set("prompt_logprobs", self.promptLogprobs)
        switch self.stopReason {
        case .string(let text): writer.set("stop_string", text)
        case .token(let id):
            writer.set("stop_by_token", true)
            writer.set("stop_token_id", id)
        case nil: break
        }
    }
    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        self.init(
            requestID: reader.string("request_id"), tokens: reader.uint32s("tokens"), text: reader.string("text"),
            finishReason: reader.string("finish_reason"), usage: try reader.message("usage"),
            status: try reader.message("status") ?? .ok, logprobs: try reader.messages("logprobs"),
            promptLogprobs: try reader.messages("prompt_logprobs")
        )
        let stopString = reader.string("stop_string")
        if reader.bool("stop_by_token") {
            self.stopReason = .token(reader.uint32("stop_token_id"))
        } else if !stopString.isEmpty {
            self.stopReason = .string(stopString)
        }
    }
}

/// Abort a running generation.
package struct AbortRequest: Sendable, Equatable {
    package var requestID: String
    package init(requestID: String) { self.requestID = requestID }
}

extension AbortRequest: CMessageConvertible {
    func write(to writer: CMessageWriter) { writer.set("request_id", self.requestID) }
    init(from reader: CMessageReader) { self.init(requestID: reader.string("request_id")) }
}

/// Load adapter weights into the engine (leader only; carries the leader epoch).
package struct AddAdapterRequest: Sendable, Equatable {
    package var epoch: UInt64
    package var name: String
    package var intID: UInt64
    package var path: String
    package var pinned: Bool
    /// Replace the weights of an adapter already loaded under this id.
    package var replace: Bool
    package init(epoch: UInt64 = 0, name: String = "", intID: UInt64 = 0, path: String = "", pinned: Bool = false, replace: Bool = false) {
        self.epoch = epoch
        self.name = name
        self.intID = intID
        self.path = path
        self.pinned = pinned
        self.replace = replace
    }
}

extension AddAdapterRequest: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("epoch", self.epoch)
        writer.set("name", self.name)
        writer.set("int_id", self.intID)
        writer.set("path", self.path)
        writer.set("pinned", self.pinned)
        writer.set("replace", self.replace)
    }
    init(from reader: CMessageReader) {
        self.init(
            epoch: reader.uint64("epoch"), name: reader.string("name"), intID: reader.uint64("int_id"),
            path: reader.string("path"), pinned: reader.bool("pinned"), replace: reader.bool("replace")
        )
    }
}

/// Remove adapter weights from the engine (leader only).
package struct RemoveAdapterRequest: Sendable, Equatable {
    package var epoch: UInt64
    package var intID: UInt64
    package init(epoch: UInt64 = 0, intID: UInt64 = 0) {
        self.epoch = epoch
        self.intID = intID
    }
}

extension RemoveAdapterRequest: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("epoch", self.epoch)
        writer.set("int_id", self.intID)
    }
    init(from reader: CMessageReader) { self.init(epoch: reader.uint64("epoch"), intID: reader.uint64("int_id")) }
}

/// Pin (exempt from eviction) or unpin an adapter (leader only).
package struct PinAdapterRequest: Sendable, Equatable {
    package var epoch: UInt64
    package var intID: UInt64
    package var pinned: Bool
    package init(epoch: UInt64 = 0, intID: UInt64 = 0, pinned: Bool = false) {
        self.epoch = epoch
        self.intID = intID
        self.pinned = pinned
    }
}

extension PinAdapterRequest: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("epoch", self.epoch)
        writer.set("int_id", self.intID)
        writer.set("pinned", self.pinned)
    }
    init(from reader: CMessageReader) {
        self.init(epoch: reader.uint64("epoch"), intID: reader.uint64("int_id"), pinned: reader.bool("pinned"))
    }
}

/// An adapter as the engine holds it.
package struct EngineAdapter: Sendable, Equatable {
    package var name: String
    package var intID: UInt64
    package var path: String
    package var pinned: Bool
    package var active: Bool
    package var rank: UInt32
    package init(name: String = "", intID: UInt64 = 0, path: String = "", pinned: Bool = false, active: Bool = false, rank: UInt32 = 0) {
        self.name = name
        self.intID = intID
        self.path = path
        self.pinned = pinned
        self.active = active
        self.rank = rank
    }
}

extension EngineAdapter: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("name", self.name)
        writer.set("int_id", self.intID)
        writer.set("path", self.path)
        writer.set("pinned", self.pinned)
        writer.set("active", self.active)
        writer.set("rank", self.rank)
    }
    init(from reader: CMessageReader) {
        self.init(
            name: reader.string("name"), intID: reader.uint64("int_id"), path: reader.string("path"),
            pinned: reader.bool("pinned"), active: reader.bool("active"), rank: reader.uint32("rank")
        )
    }
}

/// The engine's adapters.
package struct EngineAdapterList: Sendable, Equatable {
    package var adapters: [EngineAdapter]
    package init(adapters: [EngineAdapter] = []) { self.adapters = adapters }
}

extension EngineAdapterList: CMessageConvertible {
    func write(to writer: CMessageWriter) { writer.set("adapters", self.adapters) }
    init(from reader: CMessageReader) throws(ProtoDecodingError) { self.init(adapters: try reader.messages("adapters")) }
}

/// Engine health.
package struct HealthReply: Sendable, Equatable {
    package var status: Status
    package var maxEpoch: UInt64
    package var runningRequests: UInt32
    package init(status: Status = .ok, maxEpoch: UInt64 = 0, runningRequests: UInt32 = 0) {
        self.status = status
        self.maxEpoch = maxEpoch
        self.runningRequests = runningRequests
    }
}

extension HealthReply: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("status", self.status)
        writer.set("max_epoch", self.maxEpoch)
        writer.set("running_requests", self.runningRequests)
    }
    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        self.init(
            status: try reader.message("status") ?? .ok, maxEpoch: reader.uint64("max_epoch"),
            runningRequests: reader.uint32("running_requests")
        )
    }
}

/// What model the engine serves and its limits.
package struct ModelInfo: Sendable, Equatable {
    package var modelName: String
    package var architecture: String
    package var vocabSize: UInt32
    package var contextLength: UInt32
    package var maxLoras: UInt32
    package var maxCPULoras: UInt32
    package var maxLoraRank: UInt32
    package var eosTokenIDs: [UInt32]

    package init(
        modelName: String = "", architecture: String = "", vocabSize: UInt32 = 0, contextLength: UInt32 = 0,
        maxLoras: UInt32 = 0, maxCPULoras: UInt32 = 0, maxLoraRank: UInt32 = 0, eosTokenIDs: [UInt32] = []
    ) {
        self.modelName = modelName
        self.architecture = architecture
        self.vocabSize = vocabSize
        self.contextLength = contextLength
        self.maxLoras = maxLoras
        self.maxCPULoras = maxCPULoras
        self.maxLoraRank = maxLoraRank
        self.eosTokenIDs = eosTokenIDs
    }
}

extension ModelInfo: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("model_name", self.modelName)
        writer.set("architecture", self.architecture)
        writer.set("vocab_size", self.vocabSize)
        writer.set("context_length", self.contextLength)
        writer.set("max_loras", self.maxLoras)
        writer.set("max_cpu_loras", self.maxCPULoras)
        writer.set("max_lora_rank", self.maxLoraRank)
        writer.set("eos_token_ids", self.eosTokenIDs)
    }
    init(from reader: CMessageReader) {
        self.init(
            modelName: reader.string("model_name"), architecture: reader.string("architecture"),
            vocabSize: reader.uint32("vocab_size"), contextLength: reader.uint32("context_length"),
            maxLoras: reader.uint32("max_loras"), maxCPULoras: reader.uint32("max_cpu_loras"),
            maxLoraRank: reader.uint32("max_lora_rank"), eosTokenIDs: reader.uint32s("eos_token_ids")
        )
    }
}

/// One frame of the engine channel (`lorikeet.v1.EngineEnvelope`).
package struct EngineEnvelope: Sendable, Equatable {
    package var callID: UInt64
    package var deadlineUnixMs: UInt64
    package var body: Body?

    /// The message the envelope carries.
    package enum Body: Sendable, Equatable {
        case generate(GenerateRequest)
        case chunk(GenerateChunk)
        case abort(AbortRequest)
        case addAdapter(AddAdapterRequest)
        case removeAdapter(RemoveAdapterRequest)
        case pinAdapter(PinAdapterRequest)
        case listAdapters
        case adapterList(EngineAdapterList)
        case health
        case healthReply(HealthReply)
        case modelInfo
        case modelInfoReply(ModelInfo)
        case result(CallResult)
        case tokenize(TokenizeRequest)
        case tokenizeReply(TokenizeReply)
        case detokenize(DetokenizeRequest)
        case detokenizeReply(DetokenizeReply)
    }

    package init(callID: UInt64 = 0, deadlineUnixMs: UInt64 = 0, body: Body?) {
        self.callID = callID
        self.deadlineUnixMs = deadlineUnixMs
        self.body = body
    }
}

extension EngineEnvelope: DescribedWireMessage {
    static var cDescriptor: UnsafePointer<ProtobufCMessageDescriptor> { lorikeet_engine_envelope_descriptor() }

    func write(to writer: CMessageWriter) {
        writer.set("call_id", self.callID)
        writer.set("deadline_unix_ms", self.deadlineUnixMs)
        switch self.body {
        case .none: break
        case .generate(let value): writer.set("generate", value)
        case .chunk(let value): writer.set("chunk", value)
        case .abort(let value): writer.set("abort", value)
        case .addAdapter(let value): writer.set("add_adapter", value)
        case .removeAdapter(let value): writer.set("remove_adapter", value)
        case .pinAdapter(let value): writer.set("pin_adapter", value)
        case .listAdapters: writer.set("list_adapters", EmptyRequest())
        case .adapterList(let value): writer.set("adapter_list", value)
        case .health: writer.set("health", EmptyRequest())
        case .healthReply(let value): writer.set("health_reply", value)
        case .modelInfo: writer.set("model_info", EmptyRequest())
        case .modelInfoReply(let value): writer.set("model_info_reply", value)
        case .result(let value): writer.set("result", value)
        case .tokenize(let value): writer.set("tokenize", value)
        case .tokenizeReply(let value): writer.set("tokenize_reply", value)
        case .detokenize(let value): writer.set("detokenize", value)
        case .detokenizeReply(let value): writer.set("detokenize_reply", value)
        }
    }

    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        let body: Body?
        switch reader.oneofCase("generate") {
        case "generate": body = .generate(try reader.member("generate"))
        case "chunk": body = .chunk(try reader.member("chunk"))
        case "abort": body = .abort(try reader.member("abort"))
        case "add_adapter": body = .addAdapter(try reader.member("add_adapter"))
        case "remove_adapter": body = .removeAdapter(try reader.member("remove_adapter"))
        case "pin_adapter": body = .pinAdapter(try reader.member("pin_adapter"))
        case "list_adapters": body = .listAdapters
        case "adapter_list": body = .adapterList(try reader.member("adapter_list"))
        case "health": body = .health
        case "health_reply": body = .healthReply(try reader.member("health_reply"))
        case "model_info": body = .modelInfo
        case "model_info_reply": body = .modelInfoReply(try reader.member("model_info_reply"))
        case "result": body = .result(try reader.member("result"))
        case "tokenize": body = .tokenize(try reader.member("tokenize"))
        case "tokenize_reply": body = .tokenizeReply(try reader.member("tokenize_reply"))
        case "detokenize": body = .detokenize(try reader.member("detokenize"))
        case "detokenize_reply": body = .detokenizeReply(try reader.member("detokenize_reply"))
        default: body = nil
        }
        self.init(callID: reader.uint64("call_id"), deadlineUnixMs: reader.uint64("deadline_unix_ms"), body: body)
    }
}
