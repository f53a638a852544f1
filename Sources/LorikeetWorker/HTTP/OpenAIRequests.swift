package import LorikeetJSON
package import LorikeetProto

/// The prompt of a generation, as the engine channel takes it.
package enum PromptInput: Sendable, Equatable {
    case text(String)
    case tokens([UInt32])
    case messages([ChatMessage])
}

/// A validated `POST /v1/completions` or `POST /v1/chat/completions` body.
///
/// Fields follow OpenAI's API as vLLM serves it: `model`, `prompt` / `messages`,
/// `max_tokens` (`max_completion_tokens`), `temperature`, `top_p`, `seed`, `stop`,
/// `presence_penalty`, `frequency_penalty`, `logit_bias`, `logprobs` (completions: top N;
/// chat: a boolean with `top_logprobs`), `echo` (completions), `stream`,
/// `stream_options.include_usage`, `n`, `user` (ignored); and vLLM's extensions
/// `top_k`, `min_p`, `repetition_penalty`, `min_tokens`, `bad_words`, `ignore_eos`, `stop_token_ids`,
/// `include_stop_str_in_output`, `skip_special_tokens`, `prompt_logprobs`,
/// `return_token_ids`. Unknown fields are ignored, as vLLM does; features this server
/// cannot honour (`tools`, regex or grammar guided decoding)
/// are refused with a 400 naming the field. Structured output (`response_format`,
/// `structured_outputs`, `guided_json`, `guided_choice`): `OpenAIRequests+StructuredOutput`.
package struct GenerationParameters: Sendable, Equatable {
    package var model: String?
    package var prompt: PromptInput
    package var sampling: SamplingParams
    package var stream: Bool
    package var includeUsage: Bool
    package var returnTokenIDs: Bool
    /// Alternatives per generated token when log probabilities were asked for (completions
    /// `logprobs: N`; chat `logprobs: true` with `top_logprobs`, 0 when absent).
    package var logprobs: Int?
    /// Completions `echo`: the prompt is repeated before the completion.
    package var echo: Bool
    /// Choices to generate per prompt (`n`, 1–`Limits.choices`).
    package var n: Int
    /// Completions `best_of`: candidates generated per prompt, of which the `n` with the
    /// highest cumulative log probability are returned (vLLM V0's rule); `n` when absent.
    package var bestOf: Int = 1
    /// Completions with several prompts: the ones after `prompt`. Choices are indexed
    /// prompt by prompt (`prompt index × n + choice`), as vLLM's.
    package var morePrompts: [PromptInput] = []
}

/// The two generation routes.
package enum GenerationRoute: Sendable {
    case completions
    case chatCompletions

    /// `max_tokens` when the request gives none (vLLM: 16 for completions; for chat, the
    /// rest of the context, which the wire says with 0).
    var defaultMaxTokens: UInt32 {
        switch self {
        case .completions: 16
        case .chatCompletions: 0
        }
    }
}

/// Validation of request bodies into typed values; every failure is a 400 `APIError`
/// whose `param` names the field. As in vLLM's Rust frontend, a body that is not JSON,
/// not an object, lacks a required field or has a field of the wrong JSON type is
/// `json_parse_error` (serde's rejection there); a range or semantic check is
/// `invalid_request_error`.
package enum RequestValidation {
    /// Parses a body as a JSON object.
    package static func object(_ body: [UInt8]) throws(APIError) -> JSONValue {
        let value: JSONValue
        do {
            value = try JSONParser.parse(body, maximumValues: Limits.jsonValues)
        } catch {
            throw APIError.jsonParse("Failed to parse the request body as JSON: \(error)")
        }
        guard case .object = value else {
            throw APIError.jsonParse(
                "Failed to deserialize the JSON body into the target type: the request body must be a JSON object, not \(value.typeName).")
        }
        return value
    }

    static func wrongType(_ field: String, expected: String, got: JSONValue) -> APIError {
        .jsonParse("'\(field)' must be \(expected), not \(got.typeName).", param: field)
    }

    /// A required string.
    package static func string(_ body: JSONValue, _ field: String) throws(APIError) -> String {
        guard let value = body[field], value != .null else {
            throw APIError.jsonParse("'\(field)' is a required property.", param: field)
        }
        guard case .string(let text) = value else { throw Self.wrongType(field, expected: "a string", got: value) }
        return text
    }

    /// An optional string (`null` = absent).
    package static func optionalString(_ body: JSONValue, _ field: String) throws(APIError) -> String? {
        guard let value = body[field], value != .null else { return nil }
        guard case .string(let text) = value else { throw Self.wrongType(field, expected: "a string", got: value) }
        return text
    }

    /// An optional boolean (`null` = absent).
    package static func optionalBool(_ body: JSONValue, _ field: String, name: String? = nil) throws(APIError) -> Bool? {
        guard let value = body[field], value != .null else { return nil }
        guard case .bool(let flag) = value else {
            throw Self.wrongType(name ?? field, expected: "a boolean", got: value)
        }
        return flag
    }

    /// An optional integer within `range` (`null` = absent). `2.0` is accepted as 2.
    package static func optionalInt(
        _ body: JSONValue, _ field: String, in range: ClosedRange<Int64>
    ) throws(APIError) -> Int64? {
        guard let value = body[field], value != .null else { return nil }
        let number: Int64
        switch value {
        case .int(let integer): number = integer
        case .double(let real) where real == real.rounded() && abs(real) < 9e18: number = Int64(real)
        default: throw Self.wrongType(field, expected: "an integer", got: value)
        }
        guard range.contains(number) else {
            throw APIError.invalidRequest(
                "'\(field)' must be between \(range.lowerBound) and \(range.upperBound), got \(number).", param: field)
        }
        return number
    }

    /// An optional number within `range` (`null` = absent).
    package static func optionalNumber(
        _ body: JSONValue, _ field: String, in range: ClosedRange<Double>
    ) throws(APIError) -> Double? {
        guard let value = body[field], value != .null else { return nil }
        let number: Double
        switch value {
        case .int(let integer): number = Double(integer)
        case .double(let real): number = real
        default: throw Self.wrongType(field, expected: "a number", got: value)
        }
        guard range.contains(number) else {
            throw APIError.invalidRequest(
                "'\(field)' must be between \(range.lowerBound) and \(range.upperBound), got \(number).", param: field)
        }
        return number
    }

    /// Parses a generation body for `route`.
    package static func generation(_ body: JSONValue, route: GenerationRoute) throws(APIError) -> GenerationParameters {
        let model = try Self.optionalString(body, "model")
        let prompts: [PromptInput]
        switch route {
        case .completions: prompts = try Self.completionPrompts(body)
        case .chatCompletions: prompts = [.messages(try Self.messages(body))]
        }

        // Fields left out are nil: the engine applies the model's generation defaults,
        // else vLLM's (temperature 1).
        var sampling = SamplingParams(
            maxTokens: route.defaultMaxTokens, temperature: nil, topP: nil, topK: nil, minP: nil, repetitionPenalty: nil)
        let maxTokensField =
            route == .chatCompletions && body["max_completion_tokens"].map({ $0 != .null }) == true
            ? "max_completion_tokens" : "max_tokens"
        if let maxTokens = try Self.optionalInt(body, maxTokensField, in: 1...1_000_000) {
            sampling.maxTokens = UInt32(maxTokens)
        }
        if let temperature = try Self.optionalNumber(body, "temperature", in: 0...2) {
            sampling.temperature = Float(temperature)
        }
        if let topP = try Self.optionalNumber(body, "top_p", in: 0...1) {
            guard topP > 0 else { throw APIError.invalidRequest("'top_p' must be in (0, 1], got 0.", param: "top_p") }
            sampling.topP = Float(topP)
        }
        if let topK = try Self.optionalInt(body, "top_k", in: -1...1_000_000) {
            sampling.topK = topK <= 0 ? 0 : UInt32(topK)
        }
        try Self.processors(body, into: &sampling)
        if let seed = try Self.optionalInt(body, "seed", in: Int64.min...Int64.max) {
            sampling.seed = UInt64(bitPattern: seed)
        }
        sampling.stop = try Self.stop(body)
        sampling.badWords = try Self.badWords(body)
        sampling.cacheSalt = try Self.cacheSalt(body)
        if let ignoreEOS = try Self.optionalBool(body, "ignore_eos") { sampling.ignoreEOS = ignoreEOS }
        if let stopTokenIDs = body["stop_token_ids"], stopTokenIDs != .null {
            sampling.stopTokenIDs = try Self.tokenArray(
                stopTokenIDs, field: "stop_token_ids", allowEmpty: true, limit: Limits.stopTokenIDs)
        }

        let n = Int(try Self.optionalInt(body, "n", in: 1...Int64(Limits.choices)) ?? 1)
        guard n * prompts.count <= Limits.choices else {
            throw APIError.invalidRequest(
                "\(prompts.count) prompts × n=\(n) is \(n * prompts.count) choices; the limit is \(Limits.choices).", param: "n")
        }
        // best_of 1 (what some clients always send) means none.
        var bestOf = Int(try Self.optionalInt(body, "best_of", in: 1...Int64(Limits.choices)) ?? Int64(n))
        if bestOf == 1 { bestOf = n }
        if bestOf != n {
            // vLLM V0's checks (`SamplingParams._verify_args`); V1 refuses best_of altogether.
            guard bestOf > n else {
                throw APIError.invalidRequest(
                    "best_of must be greater than or equal to n, got n=\(n) and best_of=\(bestOf).", param: "best_of")
            }
            guard route == .completions else {
                throw APIError.invalidRequest("best_of is only supported on /v1/completions.", param: "best_of")
            }
            guard sampling.temperature != 0 else {
                // vLLM V0: greedy candidates are all the same.
                throw APIError.invalidRequest("best_of must be 1 when using greedy sampling. Got \(bestOf).", param: "best_of")
            }
            guard bestOf * prompts.count <= Limits.choices else {
                throw APIError.invalidRequest(
                    "\(prompts.count) prompts × best_of=\(bestOf) is \(bestOf * prompts.count) candidates; the limit is \(Limits.choices).",
                    param: "best_of")
            }
        }
        let (logprobs, echo) = try Self.logprobs(body, route: route)
        if echo { sampling.promptLogprobs = UInt32(logprobs ?? 0) }
        if let promptLogprobs = try Self.optionalInt(body, "prompt_logprobs", in: -1...Int64(Limits.topLogprobs)) {
            guard route == .completions, echo else {
                throw APIError.invalidRequest(
                    "'prompt_logprobs' is only supported with 'echo' on /v1/completions (the prompt's log probabilities are returned in place of the echoed prompt's).",
                    param: "prompt_logprobs")
            }
            sampling.promptLogprobs = UInt32(max(0, promptLogprobs))
        }
        sampling.logprobs = logprobs.map { UInt32($0) }
        try Self.refuseUnsupported(body)
        if let structured = try Self.structuredOutput(body) {
            sampling.jsonSchema = structured.jsonSchema
            sampling.choices = structured.choices
        }
        _ = try Self.optionalString(body, "user")  // accepted and ignored

        let stream = try Self.optionalBool(body, "stream") ?? false
        var includeUsage = false
        if let options = body["stream_options"], options != .null {
            guard case .object = options else {
                throw Self.wrongType("stream_options", expected: "an object", got: options)
            }
            guard stream else {
                throw APIError.invalidRequest(
                    "stream_options are only supported when stream=true.", param: "stream_options")
            }
            includeUsage =
                try Self.optionalBool(options, "include_usage", name: "stream_options.include_usage") ?? false
        }
        if stream, bestOf > n {
            // OpenAI: "Results cannot be streamed" (the best are known only at the end).
            throw APIError.invalidRequest(
                "best_of > n cannot be streamed: the best candidates are known only at the end.", param: "best_of")
        }
        let returnTokenIDs = try Self.optionalBool(body, "return_token_ids") ?? false
        var parameters = GenerationParameters(
            model: model, prompt: prompts[0], sampling: sampling, stream: stream, includeUsage: includeUsage,
            returnTokenIDs: returnTokenIDs, logprobs: logprobs, echo: echo, n: n, morePrompts: Array(prompts.dropFirst()))
        parameters.bestOf = bestOf
        return parameters
    }

    /// The logits processors and stop options (vLLM's `SamplingParams` fields), each
    /// range-checked here as vLLM's `_verify_args` does, with the field named.
    static func processors(_ body: JSONValue, into sampling: inout SamplingParams) throws(APIError) {
        if let minP = try Self.optionalNumber(body, "min_p", in: 0...1) { sampling.minP = Float(minP) }
        if let penalty = try Self.optionalNumber(body, "presence_penalty", in: -2...2) {
            sampling.presencePenalty = Float(penalty)
        }
        if let penalty = try Self.optionalNumber(body, "frequency_penalty", in: -2...2) {
            sampling.frequencyPenalty = Float(penalty)
        }
        if let penalty = try Self.optionalNumber(
            body, "repetition_penalty", in: 0...Double(Limits.repetitionPenalty))
        {
            guard penalty > 0 else {
                throw APIError.invalidRequest("'repetition_penalty' must be greater than zero, got 0.", param: "repetition_penalty")
            }
            sampling.repetitionPenalty = Float(penalty)
        }
        if let minTokens = try Self.optionalInt(body, "min_tokens", in: 0...1_000_000) {
            if sampling.maxTokens != 0, minTokens > Int64(sampling.maxTokens) {
                throw APIError.invalidRequest(
                    "'min_tokens' must be less than or equal to max_tokens=\(sampling.maxTokens), got \(minTokens).",
                    param: "min_tokens")
            }
            sampling.minTokens = UInt32(minTokens)
        }
        sampling.logitBias = try Self.logitBias(body)
        if let include = try Self.optionalBool(body, "include_stop_str_in_output") {
            sampling.includeStopStrInOutput = include
        }
        if let skip = try Self.optionalBool(body, "skip_special_tokens") { sampling.skipSpecialTokens = skip }
        // Byte-level tokenizers join special tokens' text as it is (no spaces are added).
        _ = try Self.optionalBool(body, "spaces_between_special_tokens")
    }

    /// `logit_bias`: an object mapping token ids (as strings, OpenAI's form) to a bias,
    /// clamped to [−100, 100] as vLLM does; ids are checked against the vocabulary by the
    /// engine.
    static func logitBias(_ body: JSONValue) throws(APIError) -> [LogitBias] {
        guard let value = body["logit_bias"], value != .null else { return [] }
        guard case .object(let members) = value else {
            throw Self.wrongType("logit_bias", expected: "an object mapping token ids to numbers", got: value)
        }
        guard members.count <= Limits.logitBiasEntries else {
            throw APIError.invalidRequest(
                "'logit_bias' has \(members.count) entries; the limit is \(Limits.logitBiasEntries).", param: "logit_bias")
        }
        var entries: [LogitBias] = []
        entries.reserveCapacity(members.count)
        for (key, bias) in members {
            guard let id = UInt32(key) else {
                throw APIError.invalidRequest(
                    "'logit_bias' keys must be token ids (non-negative integers), got '\(key.echoed(limit: 32))'.",
                    param: "logit_bias")
            }
            let number: Double
            switch bias {
            case .int(let integer): number = Double(integer)
            case .double(let real) where real.isFinite: number = real
            default:
                throw APIError.jsonParse(
                    "'logit_bias[\"\(key.echoed(limit: 32))\"]' must be a number, not \(bias.typeName).", param: "logit_bias")
            }
            entries.append(LogitBias(tokenID: id, bias: Float(min(100, max(-100, number)))))
        }
        return entries
    }

    /// `logprobs` (and chat's `top_logprobs`) and completions' `echo`: the alternatives per
    /// token (nil = none) and whether to echo.
    static func logprobs(_ body: JSONValue, route: GenerationRoute) throws(APIError) -> (Int?, Bool) {
        let limit = Int64(Limits.topLogprobs)
        switch route {
        case .completions:
            let logprobs = try Self.optionalInt(body, "logprobs", in: 0...limit).map { Int($0) }
            let echo = try Self.optionalBool(body, "echo") ?? false
            return (logprobs, echo)
        case .chatCompletions:
            if try Self.optionalBool(body, "echo") == true {
                throw APIError.invalidRequest("'echo' is not supported on /v1/chat/completions.", param: "echo")
            }
            let wanted = try Self.optionalBool(body, "logprobs") ?? false
            let top = try Self.optionalInt(body, "top_logprobs", in: 0...limit).map { Int($0) }
            if let top, top > 0, !wanted {
                // vLLM's message (`ChatCompletionRequest.check_logprobs`).
                throw APIError.invalidRequest(
                    "when using `top_logprobs`, `logprobs` must be set to true.", param: "top_logprobs")
            }
            return (wanted ? top ?? 0 : nil, false)
        }
    }

    /// Fields whose features the built-in engine does not have: refused rather than
    /// silently ignored.
    static func refuseUnsupported(_ body: JSONValue) throws(APIError) {
        if case .array(let tools)? = body["tools"], !tools.isEmpty {
            throw APIError.invalidRequest(
                "'tools' is not supported: the built-in engine has no tool-call parser for this model family.", param: "tools")
        }
        if let choice = body["tool_choice"], choice != .null, choice != .string("none") {
            throw APIError.invalidRequest(
                "'tool_choice' is not supported: the built-in engine has no tool-call parser for this model family.",
                param: "tool_choice")
        }
        // vLLM's answer (`serving_completion.py`): a fill-in-the-middle client falls back on
        // it instead of taking a plain continuation for an infill.
        if let suffix = body["suffix"], suffix != .null {
            throw APIError.invalidRequest("suffix is not currently supported", param: "suffix")
        }
    }

    /// The channels carry text as C strings (protobuf-c), which end at the first NUL: a
    /// prompt with U+0000 would be cut silently, so it is refused instead.
    static func refuseNUL(_ text: String, param: String) throws(APIError) {
        guard !text.utf8.contains(0) else {
            throw APIError.invalidRequest("'\(param)' must not contain the NUL character (U+0000).", param: param)
        }
    }

    /// vLLM's `cache_salt`: a non-empty string (null = none), at most
    /// `Limits.cacheSaltBytes` bytes.
    static func cacheSalt(_ body: JSONValue) throws(APIError) -> String? {
        guard let value = body["cache_salt"], value != .null else { return nil }
        guard case .string(let salt) = value, !salt.isEmpty else {
            throw APIError.invalidRequest("Parameter 'cache_salt' must be a non-empty string if provided.", param: "cache_salt")
        }
        try Self.refuseNUL(salt, param: "cache_salt")
        guard salt.utf8.count <= Limits.cacheSaltBytes else {
            throw APIError.invalidRequest(
                "'cache_salt' is \(salt.utf8.count) bytes long; the limit is \(Limits.cacheSaltBytes) bytes.", param: "cache_salt")
        }
        return salt
    }

    /// vLLM's `bad_words`: a list of strings (a lone string is refused, as vLLM does).
    static func badWords(_ body: JSONValue) throws(APIError) -> [String] {
        guard let value = body["bad_words"], value != .null else { return [] }
        guard case .array(let entries) = value else { throw Self.wrongType("bad_words", expected: "an array of strings", got: value) }
        guard entries.count <= Limits.badWords else {
            throw APIError.invalidRequest(
                "'bad_words' has \(entries.count) entries; the limit is \(Limits.badWords).", param: "bad_words")
        }
        var words: [String] = []
        for entry in entries {
            guard case .string(let word) = entry else { throw Self.wrongType("bad_words", expected: "an array of strings", got: entry) }
            try Self.refuseNUL(word, param: "bad_words")
            guard word.utf8.count <= Limits.badWordBytes else {
                throw APIError.invalidRequest(
                    "A 'bad_words' entry is \(word.utf8.count) bytes long; the limit is \(Limits.badWordBytes) bytes.",
                    param: "bad_words")
            }
            words.append(word)
        }
        return words
    }

    static func stop(_ body: JSONValue) throws(APIError) -> [String] {
        guard let value = body["stop"], value != .null else { return [] }
        func checked(_ text: String, _ field: String) throws(APIError) -> String {
            try Self.refuseNUL(text, param: "stop")
            guard text.utf8.count <= Limits.stopSequenceBytes else {
                throw APIError.invalidRequest(
                    "'\(field)' is \(text.utf8.count) bytes long; the limit is \(Limits.stopSequenceBytes) bytes.", param: "stop")
            }
            return text
        }
        switch value {
        case .string(let text): return text.isEmpty ? [] : [try checked(text, "stop")]
        case .array(let elements):
            guard elements.count <= Limits.stopSequences else {
                throw APIError.invalidRequest(
                    "'stop' has \(elements.count) entries; the limit is \(Limits.stopSequences).", param: "stop")
            }
            var stops: [String] = []
            for (index, element) in elements.enumerated() {
                guard case .string(let text) = element else {
                    throw Self.wrongType("stop[\(index)]", expected: "a string", got: element)
                }
                if !text.isEmpty { stops.append(try checked(text, "stop[\(index)]")) }
            }
            return stops
        default:
            throw Self.wrongType("stop", expected: "a string or an array of strings", got: value)
        }
    }

    static func tokenArray(
        _ value: JSONValue, field: String, allowEmpty: Bool, limit: Int = Limits.promptTokens
    ) throws(APIError) -> [UInt32] {
        guard case .array(let elements) = value else {
            throw Self.wrongType(field, expected: "an array of token ids", got: value)
        }
        if !allowEmpty, elements.isEmpty { throw APIError.invalidRequest("'\(field)' must not be empty.", param: field) }
        guard elements.count <= limit else {
            throw APIError.invalidRequest("'\(field)' has \(elements.count) token ids; the limit is \(limit).", param: field)
        }
        var tokens: [UInt32] = []
        tokens.reserveCapacity(elements.count)
        for (index, element) in elements.enumerated() {
            guard case .int(let token) = element, token >= 0, token <= Int64(UInt32.max) else {
                throw APIError.invalidRequest("'\(field)[\(index)]' must be a non-negative integer token id.", param: field)
            }
            tokens.append(UInt32(token))
        }
        return tokens
    }

    /// `prompt`: a string, an array of token ids, or an array of either (several prompts,
    /// at most `Limits.choices`, their text and token ids together within the one-prompt
    /// limits).
    static func completionPrompts(_ body: JSONValue) throws(APIError) -> [PromptInput] {
        guard case .array(let elements)? = body["prompt"], elements.count > 1,
            !elements.contains(where: { if case .int = $0 { true } else { false } })
        else {
            return [try Self.completionPrompt(body)]
        }
        guard elements.count <= Limits.choices else {
            throw APIError.invalidRequest(
                "'prompt' has \(elements.count) prompts; the limit is \(Limits.choices).", param: "prompt")
        }
        var prompts: [PromptInput] = []
        var bytes = 0
        var tokens = 0
        for element in elements {
            let prompt = try Self.completionPrompt(.object([("prompt", .array([element]))]))
            switch prompt {
            case .text(let text): bytes += text.utf8.count
            case .tokens(let ids): tokens += ids.count
            case .messages: break
            }
            guard bytes <= Limits.promptBytes, tokens <= Limits.promptTokens else {
                throw APIError.invalidRequest(
                    "The prompts together exceed the limit of \(Limits.promptBytes) bytes or \(Limits.promptTokens) token ids.",
                    param: "prompt")
            }
            prompts.append(prompt)
        }
        return prompts
    }

    /// `prompt`: a string, an array of token ids, or a one-element array of either.
    static func completionPrompt(_ body: JSONValue) throws(APIError) -> PromptInput {
        guard let value = body["prompt"], value != .null else {
            throw APIError.jsonParse("'prompt' is a required property.", param: "prompt")
        }
        func checked(_ text: String) throws(APIError) -> PromptInput {
            try Self.refuseNUL(text, param: "prompt")
            guard text.utf8.count <= Limits.promptBytes else {
                throw APIError.invalidRequest(
                    "'prompt' is \(text.utf8.count) bytes long; the limit is \(Limits.promptBytes) bytes.", param: "prompt")
            }
            return .text(text)
        }
        switch value {
        case .string(let text):
            return try checked(text)
        case .array(let elements):
            if elements.isEmpty { throw APIError.invalidRequest("'prompt' must not be empty.", param: "prompt") }
            if case .int = elements[0] { return .tokens(try Self.tokenArray(value, field: "prompt", allowEmpty: false)) }
            guard elements.count == 1 else {
                throw APIError.invalidRequest(
                    "Only one prompt per request is supported, got \(elements.count).", param: "prompt")
            }
            switch elements[0] {
            case .string(let text): return try checked(text)
            case .array: return .tokens(try Self.tokenArray(elements[0], field: "prompt", allowEmpty: false))
            default:
                throw Self.wrongType("prompt", expected: "a string or an array of token ids", got: elements[0])
            }
        default:
            throw Self.wrongType("prompt", expected: "a string or an array of token ids", got: value)
        }
    }

    static let roles: Set<String> = ["system", "developer", "user", "assistant", "tool"]

    /// `messages`: a non-empty array of `{role, content}`; content is a string, null
    /// (assistant) or an array of `{"type": "text", "text"}` parts, joined with `"\n"` as
    /// vLLM joins them.
    static func messages(_ body: JSONValue) throws(APIError) -> [ChatMessage] {
        guard let value = body["messages"], value != .null else {
            throw APIError.jsonParse("'messages' is a required property.", param: "messages")
        }
        guard case .array(let elements) = value else {
            throw Self.wrongType("messages", expected: "an array", got: value)
        }
        guard !elements.isEmpty else { throw APIError.invalidRequest("'messages' must not be empty.", param: "messages") }
        guard elements.count <= Limits.messages else {
            throw APIError.invalidRequest(
                "'messages' has \(elements.count) entries; the limit is \(Limits.messages).", param: "messages")
        }
        var messages: [ChatMessage] = []
        var totalBytes = 0
        for (index, element) in elements.enumerated() {
            let field = "messages[\(index)]"
            guard case .object = element else { throw Self.wrongType(field, expected: "an object", got: element) }
            let role: String
            do {
                role = try Self.string(element, "role")
            } catch {
                throw APIError.jsonParse(error.message.replacingRole(field), param: "\(field).role")
            }
            guard Self.roles.contains(role) else {
                throw APIError.invalidRequest(
                    "'\(field).role' must be one of system, developer, user, assistant, tool; got '\(role.echoed(limit: 32))'.",
                    param: "\(field).role")
            }
            let content: String
            switch element["content"] {
            case .none, .null?:
                guard role == "assistant" else {
                    throw APIError.jsonParse("'\(field).content' is a required property.", param: "\(field).content")
                }
                content = ""
            case .string(let text)?:
                content = text
            case .array(let parts)?:
                // vLLM joins a message's text parts with "\n" (`chat_utils.py`,
                // `_parse_chat_message_content_parts`, for string-format templates).
                var pieces: [String] = []
                for (partIndex, part) in parts.enumerated() {
                    let partField = "\(field).content[\(partIndex)]"
                    guard case .string("text")? = part["type"], case .string(let piece)? = part["text"] else {
                        throw APIError.invalidRequest(
                            "'\(partField)' must be a text part {\"type\": \"text\", \"text\": ...}; other parts are not supported.",
                            param: "\(field).content")
                    }
                    pieces.append(piece)
                }
                content = pieces.joined(separator: "\n")
            case let other?:
                throw Self.wrongType("\(field).content", expected: "a string or an array of text parts", got: other)
            }
            try Self.refuseNUL(content, param: "\(field).content")
            totalBytes += content.utf8.count
            guard totalBytes <= Limits.promptBytes else {
                throw APIError.invalidRequest(
                    "The contents of 'messages' exceed the limit of \(Limits.promptBytes) bytes.", param: "messages")
            }
            messages.append(ChatMessage(role: role, content: content))
        }
        return messages
    }
}

extension String {
    fileprivate func replacingRole(_ field: String) -> String {
        self.replacing("'role'", with: "'\(field).role'")
    }
}
