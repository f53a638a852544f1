import HTTPTypes
import HummingbirdCore
import LorikeetJSON
import LorikeetProto

extension WorkerRoutes {
    /// `POST /tokenize` (vLLM's `TokenizeCompletionRequest` / `TokenizeChatRequest`, told
    /// apart by `messages`): `{"count", "max_model_len", "tokens", "token_strs"}`, through
    /// the engine's tokenizer. Prompt form: `prompt` (a string), `add_special_tokens`
    /// (default true). Chat form: `messages` (as in chat completions, text parts joined
    /// with "\n"), `add_generation_prompt` (default true), `add_special_tokens` (default
    /// false). Both: `return_token_strs` (default false; `token_strs` is null otherwise).
    /// `model` is resolved as for generations (absent or `""`: the default model; an
    /// adapter uses its base's tokenizer). A prompt beyond the context length is a 400.
    func tokenize(_ body: JSONValue, on engine: any GenerationBackend) async throws -> Reply {
        _ = try self.resolveModel(try RequestValidation.optionalString(body, "model"))
        var request = TokenizeRequest()
        if let messages = body["messages"], messages != .null {
            request.messages = try RequestValidation.messages(body)
            request.addGenerationPrompt = try RequestValidation.optionalBool(body, "add_generation_prompt") ?? true
            request.addSpecialTokens = try RequestValidation.optionalBool(body, "add_special_tokens") ?? false
            let continueFinal = try RequestValidation.optionalBool(body, "continue_final_message") ?? false
            if continueFinal, request.addGenerationPrompt {
                throw APIError.invalidRequest(
                    "Cannot set both `continue_final_message` and `add_generation_prompt` to True.", param: "continue_final_message")
            }
            if continueFinal {
                throw APIError.invalidRequest("'continue_final_message' is not supported.", param: "continue_final_message")
            }
            if let template = body["chat_template"], template != .null {
                throw APIError.invalidRequest(
                    "Chat templates from requests are not accepted; the model's own template is used.", param: "chat_template")
            }
            if case .array(let tools) = body["tools"], !tools.isEmpty {
                throw APIError.invalidRequest("'tools' is not supported.", param: "tools")
            }
        } else {
            let prompt = try RequestValidation.string(body, "prompt")
            try RequestValidation.refuseNUL(prompt, param: "prompt")
            guard prompt.utf8.count <= Limits.promptBytes else {
                throw APIError.invalidRequest(
                    "'prompt' is \(prompt.utf8.count) bytes long; the limit is \(Limits.promptBytes) bytes.", param: "prompt")
            }
            request.promptText = prompt
            request.addSpecialTokens = try RequestValidation.optionalBool(body, "add_special_tokens") ?? true
        }
        request.returnTokenStrs = try RequestValidation.optionalBool(body, "return_token_strs") ?? false
        let reply: TokenizeReply
        do {
            reply = try await engine.tokenize(request)
        } catch {
            throw APIError(error)
        }
        return .json(
            .ok,
            .object([
                ("count", .int(Int64(reply.tokens.count))), ("max_model_len", .int(Int64(reply.maxModelLength))),
                ("tokens", .array(reply.tokens.map { .int(Int64($0)) })),
                ("token_strs", request.returnTokenStrs ? .array(reply.tokenStrs.map { .string($0) }) : .null),
            ]))
    }

    /// `POST /detokenize` (vLLM's `DetokenizeRequest`): `{"model", "tokens"}` →
    /// `{"prompt"}`. An id outside the vocabulary is a 400 naming `tokens`.
    func detokenize(_ body: JSONValue, on engine: any GenerationBackend) async throws -> Reply {
        _ = try self.resolveModel(try RequestValidation.optionalString(body, "model"))
        guard let value = body["tokens"], value != .null else {
            throw APIError.jsonParse("'tokens' is a required property.", param: "tokens")
        }
        let tokens = try RequestValidation.tokenArray(value, field: "tokens", allowEmpty: true, limit: Limits.promptTokens)
        let reply: DetokenizeReply
        do {
            reply = try await engine.detokenize(DetokenizeRequest(tokens: tokens))
        } catch {
            throw APIError(error)
        }
        return .json(.ok, .object([("prompt", .string(reply.prompt))]))
    }

    /// `GET /load`: `{"server_load": N}`, the requests the engine is running or queueing
    /// (from all workers; vLLM counts in-flight generation requests). In upstream mode,
    /// the requests this worker has outstanding at the replicas.
    func serverLoad() async -> Reply {
        let running: UInt32
        do {
            running = try await self.status.health().runningRequests
        } catch {
            running = 0
        }
        return .json(.ok, .object([("server_load", .int(Int64(running)))]))
    }
}
