package import LorikeetProto
import LorikeetStructured

/// The engine's own check of the shared limits (`Limits`) on a well-framed call: the
/// worker checks them at the HTTP edge, the engine checks them again, and a call that
/// breaks one gets INVALID_ARGUMENT (with `param`) for itself alone; the connection and
/// every other stream on it go on.
package enum EngineRequestLimits {
    /// `request_id`, in UTF-8 bytes (the engine's own limit; workers send ~40-byte ids).
    package static let requestIDBytes = 1024
    /// One chat message's `role`, in UTF-8 bytes (the engine's own limit).
    package static let roleBytes = 256

    /// Why `request` may not run, or nil.
    package static func problem(_ request: GenerateRequest) -> Status? {
        func refuse(_ message: String, _ param: String) -> Status {
            Status(code: .invalidArgument, message: message, param: param)
        }
        if let problem = TextRules.problem(request.requestID, field: "request_id", maxBytes: self.requestIDBytes) {
            return refuse(problem, "request_id")
        }
        if request.promptTokens.count > Limits.promptTokens {
            return refuse(
                "The prompt has \(request.promptTokens.count) token ids; the limit is \(Limits.promptTokens).", "prompt")
        }
        let textBytes = request.promptText.utf8.count
        if textBytes > Limits.promptBytes {
            return refuse("The prompt is \(textBytes) bytes; the limit is \(Limits.promptBytes) bytes.", "prompt")
        }
        if request.messages.count > Limits.messages {
            return refuse("'messages' has \(request.messages.count) entries; the limit is \(Limits.messages).", "messages")
        }
        var contentBytes = 0
        for message in request.messages {
            contentBytes += message.content.utf8.count
            if message.role.utf8.count > self.roleBytes {
                return refuse(
                    "A message role is \(message.role.utf8.count) bytes; the limit is \(self.roleBytes) bytes.", "messages")
            }
        }
        if contentBytes > Limits.promptBytes {
            return refuse(
                "The messages' contents are \(contentBytes) bytes together; the limit is \(Limits.promptBytes) bytes.",
                "messages")
        }
        let sampling = request.sampling
        if sampling.stop.count > Limits.stopSequences {
            return refuse("'stop' has \(sampling.stop.count) entries; the limit is \(Limits.stopSequences).", "stop")
        }
        for stop in sampling.stop where stop.utf8.count > Limits.stopSequenceBytes {
            return refuse(
                "A 'stop' entry is \(stop.utf8.count) bytes; the limit is \(Limits.stopSequenceBytes) bytes.", "stop")
        }
        if sampling.badWords.count > Limits.badWords {
            return refuse("'bad_words' has \(sampling.badWords.count) entries; the limit is \(Limits.badWords).", "bad_words")
        }
        for word in sampling.badWords where word.utf8.count > Limits.badWordBytes {
            return refuse(
                "A 'bad_words' entry is \(word.utf8.count) bytes; the limit is \(Limits.badWordBytes) bytes.", "bad_words")
        }
        if let salt = sampling.cacheSalt, salt.utf8.count > Limits.cacheSaltBytes {
            return refuse("'cache_salt' is \(salt.utf8.count) bytes; the limit is \(Limits.cacheSaltBytes) bytes.", "cache_salt")
        }
        if sampling.stopTokenIDs.count > Limits.stopTokenIDs {
            return refuse(
                "'stop_token_ids' has \(sampling.stopTokenIDs.count) entries; the limit is \(Limits.stopTokenIDs).",
                "stop_token_ids")
        }
        if sampling.logitBias.count > Limits.logitBiasEntries {
            return refuse(
                "'logit_bias' has \(sampling.logitBias.count) entries; the limit is \(Limits.logitBiasEntries).", "logit_bias")
        }
        for (value, param) in [(sampling.logprobs, "logprobs"), (sampling.promptLogprobs, "prompt_logprobs")] {
            if let value, value > Limits.topLogprobs {
                return refuse("'\(param)' must be at most \(Limits.topLogprobs), got \(value).", param)
            }
        }
        do {
            _ = try StructuredConstraint.grammar(jsonSchema: sampling.jsonSchema, choices: sampling.choices)
        } catch {
            return refuse(error.description, "structured_outputs")
        }
        return nil
    }

    /// Why `request` may not run, or nil: the shared `AdapterFieldRules` on its name and
    /// path (an empty path is refused by the secure walk that opens it).
    package static func problem(_ request: AddAdapterRequest) -> Status? {
        AdapterFieldRules.problem(name: request.name, path: request.path)
    }
}
