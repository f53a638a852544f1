import CLorikeetProto

/// vLLM's `POST /tokenize` as an engine call (`lorikeet.v1.TokenizeRequest`): the text of
/// `promptText`, or `messages` rendered with the model's chat template.
package struct TokenizeRequest: Sendable, Equatable {
    package var promptText: String
    package var messages: [ChatMessage]
    /// Prepend BOS when the model adds one (vLLM's `add_special_tokens`).
    package var addSpecialTokens: Bool
    /// Chat form: end with the assistant turn opener (vLLM's `add_generation_prompt`).
    package var addGenerationPrompt: Bool
    /// Also return each token's vocabulary piece (vLLM's `return_token_strs`).
    package var returnTokenStrs: Bool

    package init(
        promptText: String = "", messages: [ChatMessage] = [], addSpecialTokens: Bool = true, addGenerationPrompt: Bool = true,
        returnTokenStrs: Bool = false
    ) {
        self.promptText = promptText
        self.messages = messages
        self.addSpecialTokens = addSpecialTokens
        self.addGenerationPrompt = addGenerationPrompt
        self.returnTokenStrs = returnTokenStrs
    }
}

extension TokenizeRequest: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("prompt_text", self.promptText)
        writer.set("messages", self.messages)
        writer.set("add_special_tokens", self.addSpecialTokens)
        writer.set("add_generation_prompt", self.addGenerationPrompt)
        writer.set("return_token_strs", self.returnTokenStrs)
    }
    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        self.init(
            promptText: reader.string("prompt_text"), messages: try reader.messages("messages"),
            addSpecialTokens: reader.bool("add_special_tokens"), addGenerationPrompt: reader.bool("add_generation_prompt"),
            returnTokenStrs: reader.bool("return_token_strs"))
    }
}

/// The answer to a `TokenizeRequest` (`lorikeet.v1.TokenizeReply`): vLLM's
/// `TokenizeResponse` less `count` (the worker adds it).
package struct TokenizeReply: Sendable, Equatable {
    package var status: Status
    package var tokens: [UInt32]
    /// One vocabulary piece per token, only when asked for.
    package var tokenStrs: [String]
    /// The engine's context length.
    package var maxModelLength: UInt32

    package init(status: Status = .ok, tokens: [UInt32] = [], tokenStrs: [String] = [], maxModelLength: UInt32 = 0) {
        self.status = status
        self.tokens = tokens
        self.tokenStrs = tokenStrs
        self.maxModelLength = maxModelLength
    }
}

extension TokenizeReply: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("status", self.status)
        writer.set("tokens", self.tokens)
        writer.set("token_strs", self.tokenStrs)
        writer.set("max_model_len", self.maxModelLength)
    }
    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        self.init(
            status: try reader.message("status") ?? .ok, tokens: reader.uint32s("tokens"), tokenStrs: reader.strings("token_strs"),
            maxModelLength: reader.uint32("max_model_len"))
    }
}

/// vLLM's `POST /detokenize` as an engine call (`lorikeet.v1.DetokenizeRequest`).
package struct DetokenizeRequest: Sendable, Equatable {
    package var tokens: [UInt32]
    package init(tokens: [UInt32] = []) { self.tokens = tokens }
}

extension DetokenizeRequest: CMessageConvertible {
    func write(to writer: CMessageWriter) { writer.set("tokens", self.tokens) }
    init(from reader: CMessageReader) { self.init(tokens: reader.uint32s("tokens")) }
}

/// The answer to a `DetokenizeRequest` (`lorikeet.v1.DetokenizeReply`).
package struct DetokenizeReply: Sendable, Equatable {
    package var status: Status
    package var prompt: String
    package init(status: Status = .ok, prompt: String = "") {
        self.status = status
        self.prompt = prompt
    }
}

extension DetokenizeReply: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("status", self.status)
        writer.set("prompt", self.prompt)
    }
    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        self.init(status: try reader.message("status") ?? .ok, prompt: reader.string("prompt"))
    }
}
