/// What a request's prompt is given as (the engine channel's `GenerateRequest` oneof).
package enum PromptInput: Sendable, Equatable {
    /// Token ids, used verbatim.
    case tokens([UInt32])
    /// Text, encoded with BOS added when the tokenizer adds one.
    case text(String)
    /// Chat messages, rendered with the model's chat template, then encoded as text.
    case chat([ChatTurn])

    /// UTF-8 bytes of the text the tokenizer will cover (all contents for chat: the
    /// template only adds to them); nil for token ids.
    package var textBytes: Int? {
        switch self {
        case .tokens: nil
        case .text(let text): text.utf8.count
        case .chat(let turns): turns.reduce(0) { $0 + $1.content.utf8.count }
        }
    }
}

/// One generation request.
package struct GenerationRequest: Sendable, Equatable {
    /// Caller-chosen id, unique among running requests (used by `abort`).
    package var id: String
    /// The prompt.
    package var prompt: PromptInput
    /// `lora_int_id` of a registered adapter, or nil for the base model.
    package var adapterID: UInt64?
    /// Sampling parameters.
    package var params: SamplingParams

    /// Creates a request.
    package init(id: String, prompt: PromptInput, adapterID: UInt64? = nil, params: SamplingParams = SamplingParams()) {
        self.id = id
        self.prompt = prompt
        self.adapterID = adapterID
        self.params = params
    }
}

/// Why generation ended (OpenAI `finish_reason`, plus vLLM's `abort` and `error`).
package enum FinishReason: String, Sendable, Equatable {
    /// EOS, a stop token id or a stop string.
    case stop
    /// `max_tokens` or the context length was reached.
    case length
    /// Aborted by `abort(requestID)` or shutdown.
    case abort
    /// The request failed; see the event's `error`.
    case error
}

/// Token counts (OpenAI `usage`).
package struct Usage: Sendable, Equatable {
    /// Prompt tokens.
    package var promptTokens: Int
    /// Generated tokens, including a final EOS/stop token.
    package var completionTokens: Int
    /// Prompt positions copied from another sequence's cache (the prefix cache, or a
    /// running sequence with the same start) instead of computed.
    package var cachedPromptTokens: Int

    /// Creates counts.
    package init(promptTokens: Int, completionTokens: Int, cachedPromptTokens: Int = 0) {
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.cachedPromptTokens = cachedPromptTokens
    }
}

/// One streamed piece of output (the engine channel's `GenerateChunk`). The last event of
/// a request has `finishReason` and `usage` set.
package struct GenerationEvent: Sendable, Equatable {
    /// The request this belongs to.
    package var requestID: String
    /// Token ids generated since the previous event.
    package var tokens: [UInt32]
    /// Text completed since the previous event (never a partial UTF-8 sequence, never
    /// part of a stop string).
    package var text: String
    /// Set on the last event.
    package var finishReason: FinishReason?
    /// Set on the last event.
    package var usage: Usage?
    /// Set when `finishReason == .error`.
    package var error: EngineError?
    /// One entry per id in `tokens`, when the request asked for `logprobs`.
    package var logprobs: [TokenLogprobs]
    /// On the first event of a request that asked for prompt log probabilities: one entry
    /// per prompt token. The first has no log probability (nothing precedes it): only its
    /// `chosen.tokenID` is meaningful.
    package var promptLogprobs: [TokenLogprobs]?
    /// On a last event with finish reason `stop`: the stop string that matched, or the
    /// `stopTokenIDs` token (vLLM's `stop_reason`); nil for EOS or a finished structured
    /// output.
    package var stopReason: StopReason?

    /// What stopped a generation besides EOS.
    package enum StopReason: Sendable, Equatable {
        case string(String)
        case token(UInt32)
    }

    /// Creates an event.
    package init(
        requestID: String, tokens: [UInt32] = [], text: String = "", finishReason: FinishReason? = nil,
        usage: Usage? = nil, error: EngineError? = nil, logprobs: [TokenLogprobs] = [],
        promptLogprobs: [TokenLogprobs]? = nil
    ) {
        self.requestID = requestID
        self.tokens = tokens
        self.text = text
        self.finishReason = finishReason
        self.usage = usage
        self.error = error
        self.logprobs = logprobs
        self.promptLogprobs = promptLogprobs
    }
}
