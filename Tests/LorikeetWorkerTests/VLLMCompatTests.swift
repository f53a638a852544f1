import Foundation
import LorikeetJSON
import LorikeetProto
import LorikeetTestSupport
import LorikeetUpstream
import Testing

@testable import LorikeetWorker

/// The error bodies of vLLM's Rust frontend, golden (status and the whole envelope), with
/// the row of `docs/vllm-compat-spec.md` and the vLLM source each one comes from; the
/// Lorikeet-only routes `/ping`, `/load`, `/v1/models/{id}`. Against the scripted engine
/// process (`FakeEngine`).
@Suite("vLLM compatibility: error bodies and routes", .timeLimit(.minutes(1)), .ownThreads)
struct VLLMCompatTests {
    /// `{"error": {"message", "type", "param", "code"}}` as `error.rs` renders it.
    static func envelope(_ message: String, type: String = "invalid_request_error", param: String?, code: String) -> JSONValue {
        .object([
            (
                "error",
                .object([
                    ("message", .string(message)), ("type", .string(type)), ("param", param.map { .string($0) } ?? .null),
                    ("code", .string(code)),
                ])
            )
        ])
    }

    /// (row, path, body, status, envelope): the whole body must match.
    static func goldenCases(adapterPath: String) -> [(String, String, String, Int, JSONValue)] {
        let chat = #"[{"role":"user","content":"x"}]"#
        return [
            // C1: Rust `ModelNotFound` (error.rs@00d41917; chat_completions/validate.rs@088bb2c8).
            (
                "C1 completions", "/v1/completions", #"{"model":"nope","prompt":"x"}"#, 404,
                Self.envelope("The model `nope` does not exist.", param: "model", code: "model_not_found")
            ),
            (
                "C1 chat", "/v1/chat/completions", #"{"model":"nope","messages":\#(chat)}"#, 404,
                Self.envelope("The model `nope` does not exist.", param: "model", code: "model_not_found")
            ),
            // C4: Rust `JsonParseError` (validated_json.rs@15a3fd47), Lorikeet's tail.
            (
                "C4 not an object", "/v1/completions", "[1]", 400,
                Self.envelope(
                    "Failed to deserialize the JSON body into the target type: the request body must be a JSON object, not array.",
                    param: nil, code: "json_parse_error")
            ),
            // C5/C6: serde's missing field / wrong type → `json_parse_error`; param named (a difference).
            (
                "C5 wrong type", "/v1/completions", #"{"prompt":"x","max_tokens":"9"}"#, 400,
                Self.envelope("'max_tokens' must be an integer, not string.", param: "max_tokens", code: "json_parse_error")
            ),
            (
                "C6 missing prompt", "/v1/completions", #"{"model":"tiny-llama"}"#, 400,
                Self.envelope("'prompt' is a required property.", param: "prompt", code: "json_parse_error")
            ),
            (
                "C6 missing messages", "/v1/chat/completions", #"{"model":"tiny-llama"}"#, 400,
                Self.envelope("'messages' is a required property.", param: "messages", code: "json_parse_error")
            ),
            // C7: Rust `InvalidRequest` with validate.rs@088bb2c8's messages.
            (
                "C7 n", "/v1/completions", #"{"prompt":"x","n":17}"#, 400,
                Self.envelope("'n' must be between 1 and 16, got 17.", param: "n", code: "invalid_request_error")
            ),
            (
                "C7 stream_options", "/v1/chat/completions", #"{"messages":\#(chat),"stream_options":{"include_usage":true}}"#, 400,
                Self.envelope("stream_options are only supported when stream=true.", param: "stream_options", code: "invalid_request_error")
            ),
            // L2/L4: serde rejections of the load body (routes/lora.rs@0f17ee06:17-25).
            (
                "L2 missing lora_path", "/v1/load_lora_adapter", #"{"lora_name":"b"}"#, 400,
                Self.envelope("'lora_path' is a required property.", param: "lora_path", code: "json_parse_error")
            ),
            (
                "L4 wrong type", "/v1/load_lora_adapter", #"{"lora_name":"b","lora_path":"\#(adapterPath)","load_inplace":"yes"}"#, 400,
                Self.envelope("'load_inplace' must be a boolean, not string.", param: "load_inplace", code: "json_parse_error")
            ),
            // L3: lora.rs `register()` (after trim).
            (
                "L3 empty name", "/v1/load_lora_adapter", #"{"lora_name":"  ","lora_path":"\#(adapterPath)"}"#, 400,
                Self.envelope("lora_name must not be empty", param: "lora_name", code: "invalid_request_error")
            ),
            (
                "L3 empty path", "/v1/load_lora_adapter", #"{"lora_name":"b","lora_path":""}"#, 400,
                Self.envelope("lora_path must not be empty", param: "lora_path", code: "invalid_request_error")
            ),
            // L5: routes/lora.rs@0f17ee06:49-54 + lora.rs `AlreadyLoaded`.
            (
                "L5 already loaded", "/v1/load_lora_adapter", #"{"lora_name":"a","lora_path":"\#(adapterPath)"}"#, 400,
                Self.envelope(
                    "LoRA adapter `a` is already loaded. If you want to load the adapter in place, set 'load_inplace' to true.",
                    param: "lora_name", code: "invalid_request_error")
            ),
            // L6: routes/lora.rs@0f17ee06:55-57.
            (
                "L6 base name", "/v1/load_lora_adapter", #"{"lora_name":"tiny-llama","lora_path":"\#(adapterPath)"}"#, 400,
                Self.envelope(
                    "LoRA adapter `tiny-llama` conflicts with a served base model", param: "lora_name", code: "invalid_request_error")
            ),
            // L15: routes/lora.rs@0f17ee06:68, `ModelNotFound`.
            (
                "L15 unload unknown", "/v1/unload_lora_adapter", #"{"lora_name":"zzz"}"#, 404,
                Self.envelope("The model `zzz` does not exist.", param: "model", code: "model_not_found")
            ),
            // L16: routes/lora.rs@0f17ee06:104-109.
            (
                "L16 unload empty", "/v1/unload_lora_adapter", #"{"lora_name":""}"#, 400,
                Self.envelope(
                    "'lora_name' needs to be provided to unload a LoRA adapter.", param: "lora_name", code: "invalid_request_error")
            ),
            // L17: lora.rs `IntIdMismatch`.
            (
                "L17 id mismatch", "/v1/unload_lora_adapter", #"{"lora_name":"a","lora_int_id":7}"#, 400,
                Self.envelope(
                    "requested lora_int_id 7 does not match loaded adapter `a` with id 1", param: "lora_int_id",
                    code: "invalid_request_error")
            ),
            // L18: a u64 in Rust, so a `json_parse_error` class; Lorikeet's message.
            (
                "L18 id zero", "/v1/unload_lora_adapter", #"{"lora_name":"a","lora_int_id":0}"#, 400,
                Self.envelope("'lora_int_id' must be a positive integer, got 0.", param: "lora_int_id", code: "json_parse_error")
            ),
        ]
    }

    /// A worker with runtime updating on, adapters allowed under `<root>/lora`, in front of
    /// the scripted engine; `body` gets the port and the tree's root.
    static func withAdapterWorker(
        maxBodyBytes: Int = Limits.defaultBodyBytes, _ body: @Sendable (_ port: Int, _ root: String) async throws -> Void
    ) async throws {
        let engine = try FakeEngine()
        defer { engine.stop() }
        let root = PathPolicyTests.makeTree()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let configuration = WorkerHarness.configuration(engine: engine) {
            $0.allowRuntimeLoraUpdating = true
            $0.pathPolicy = PathPolicy(allowedPrefixes: [root + "/lora"])
            $0.maxBodyBytes = maxBodyBytes
        }
        try await WorkerHarness.withWorker(configuration) { port, _ in try await body(port, root) }
    }

    @Test("every error row has the Rust frontend's status, type, code, param and message")
    func goldenErrors() async throws {
        try await Self.withAdapterWorker(maxBodyBytes: 4096) { port, root in
            let good = root + "/lora/good"
            #expect(
                try await TestHTTP.post(port: port, "/v1/load_lora_adapter", #"{"lora_name":"a","lora_path":"\#(good)"}"#).status == 200)
            for (row, path, body, status, expected) in Self.goldenCases(adapterPath: good) {
                let response = try await TestHTTP.post(port: port, path, body)
                #expect(response.status == status, "\(row)")
                #expect(response.json == expected, "\(row): \(response.text)")
                #expect(response.headers["content-type"] == "application/json", "\(row)")
            }
            // C3: not JSON; the tail is Lorikeet's parser's reason.
            let syntax = try await TestHTTP.post(port: port, "/v1/completions", "{")
            #expect(syntax.status == 400)
            #expect(syntax.errorMessage?.hasPrefix("Failed to parse the request body as JSON: ") == true)
            #expect(syntax.json?["error"]?["code"] == .string("json_parse_error") && syntax.json?["error"]?["param"] == .null)
            #expect(syntax.errorType == "invalid_request_error")
            // C2: "" (like absent and null) is the default model, echoed by name.
            for model in [#""model":"","#, #""model":null,"#, ""] {
                let response = try await TestHTTP.post(port: port, "/v1/completions", #"{\#(model)"prompt":"x","max_tokens":1}"#)
                #expect(response.status == 200, "\(model)")
                #expect(response.json?["model"] == .string("tiny-llama"), "\(model)")
            }
            // Deliberate differences (docs/vllm-compat.md): 405 with Allow, 415, 413, every code a string.
            let method = try await TestHTTP.get(port: port, "/v1/completions")
            #expect(method.status == 405 && method.headers["allow"] == "POST")
            #expect(method.json?["error"]?["code"] == .string("method_not_allowed"))
            let media = try await TestHTTP.request(
                port: port, "POST", "/v1/completions", headers: [("Content-Type", "text/plain")], body: Array("{}".utf8))
            #expect(media.status == 415 && media.json?["error"]?["code"] == .string("unsupported_media_type"))
            let huge = try await TestHTTP.post(port: port, "/v1/completions", String(repeating: " ", count: 10_000))
            #expect(huge.status == 413 && huge.json?["error"]?["code"] == .string("request_too_large"))
            let route = try await TestHTTP.post(port: port, "/v1/nothing", "{}")
            #expect(
                route.json == Self.envelope("No route for POST /v1/nothing", param: nil, code: "not_found") && route.status == 404)
        }
    }

    @Test("runtime updating off: the adapter routes are a 404 envelope (vLLM: not mounted)")
    func gateOff() async throws {
        let engine = try FakeEngine()
        defer { engine.stop() }
        try await WorkerHarness.withWorker(WorkerHarness.configuration(engine: engine)) { port, _ in
            let response = try await TestHTTP.post(port: port, "/v1/load_lora_adapter", #"{"lora_name":"a","lora_path":"/tmp"}"#)
            #expect(response.status == 404)
            #expect(response.json == Self.envelope("No route for POST /v1/load_lora_adapter", param: nil, code: "not_found"))
        }
    }

    @Test("/v1/models cards carry vLLM's fields; /v1/models/{id}; /ping; /load")
    func routes() async throws {
        try await Self.withAdapterWorker { port, root in
            #expect(
                try await TestHTTP.post(port: port, "/v1/load_lora_adapter", #"{"lora_name":"org/a","lora_path":"\#(root)/lora/good"}"#)
                    .status == 200)
            let list = try await TestHTTP.get(port: port, "/v1/models")
            guard case .array(let cards)? = list.json?["data"], cards.count == 2 else {
                Issue.record("cards: \(list.text)")
                return
            }
            for card in cards {
                #expect(card["max_model_len"] == .int(256), "the base's context, adapters too")
                guard case .array(let permissions)? = card["permission"], let permission = permissions.first else {
                    Issue.record("no permission")
                    continue
                }
                #expect(permission["object"] == .string("model_permission"))
                #expect(permission["allow_sampling"] == .bool(true) && permission["organization"] == .string("*"))
                if case .string(let id)? = permission["id"] {
                    #expect(id.hasPrefix("modelperm-") && id.count == "modelperm-".count + 32)
                }
            }
            #expect(cards[1]["parent"] == .string("tiny-llama") && cards[1]["root"] == .string(root + "/lora/good"))
            // Stable: the list is the same on the next call (vLLM draws new ids; Lorikeet caches).
            #expect(try await TestHTTP.get(port: port, "/v1/models").json == list.json)

            // GET /v1/models/{id}: the same card; ids with '/' raw or percent-encoded.
            #expect(try await TestHTTP.get(port: port, "/v1/models/tiny-llama").json == cards[0])
            #expect(try await TestHTTP.get(port: port, "/v1/models/org/a").json == cards[1])
            #expect(try await TestHTTP.get(port: port, "/v1/models/org%2Fa").json == cards[1])
            let missing = try await TestHTTP.get(port: port, "/v1/models/nope")
            #expect(missing.status == 404)
            #expect(missing.json == Self.envelope("The model `nope` does not exist.", param: "model", code: "model_not_found"))
            #expect(try await TestHTTP.post(port: port, "/v1/models/tiny-llama", "{}").status == 405)

            // /ping is /health (GET and POST), /load reports the engine's running requests.
            for method in ["GET", "POST"] {
                let ping = try await TestHTTP.request(port: port, method, "/ping")
                #expect(ping.status == 200 && ping.body.isEmpty, "\(method)")
            }
            #expect(try await TestHTTP.request(port: port, "PUT", "/ping").headers["allow"] == "GET, POST")
            let load = try await TestHTTP.get(port: port, "/load")
            #expect(load.status == 200 && load.json == .object([("server_load", .int(0))]))
        }
    }

    @Test("upstream mode: routes Lorikeet does not own go to a replica (method, path, query, body, model resolved)")
    func passthrough() async throws {
        let replica = try ScriptedReplica()
        defer { replica.stop() }
        let (configuration, engine) = UpstreamClientTests.configuration(replica)
        try await WorkerHarness.withWorker(configuration, engine: engine) { port, _ in
            let embeddings = try await TestHTTP.post(port: port, "/v1/embeddings?x=1", #"{"model":"","input":"hi"}"#)
            #expect(embeddings.status == 200, "\(embeddings.text)")
            #expect(embeddings.headers["x-lorikeet-upstream"] != nil)
            #expect(embeddings.json?["method"] == .string("POST") && embeddings.json?["target"] == .string("/v1/embeddings?x=1"))
            #expect(embeddings.json?["content_type"] == .string("application/json"))
            // `model` is resolved ("" → the default) and set to the replica's name.
            if case .string(let body)? = embeddings.json?["body"] {
                #expect(try JSONParser.parse(Array(body.utf8))["model"] == .string("tiny"))
            }
            // A body that is not JSON goes byte for byte, with its media type.
            let score = try await TestHTTP.request(
                port: port, "PUT", "/score", headers: [("Content-Type", "text/plain")], body: Array("raw bytes".utf8))
            #expect(score.json?["method"] == .string("PUT") && score.json?["body"] == .string("raw bytes"))
            #expect(score.json?["content_type"] == .string("text/plain"))
            // An unknown model is ours to refuse, before the replica.
            let missing = try await TestHTTP.post(port: port, "/v1/embeddings", #"{"model":"nope","input":"hi"}"#)
            #expect(missing.json == Self.envelope("The model `nope` does not exist.", param: "model", code: "model_not_found"))
            // Bodies keep our limit.
            let huge = try await TestHTTP.post(port: port, "/v1/embeddings", String(repeating: " ", count: 9 << 20))
            #expect(huge.status == 413)
            // The adapter routes stay ours (runtime updating off: 404, not forwarded).
            let load = try await TestHTTP.post(port: port, "/v1/load_lora_adapter", #"{"lora_name":"a","lora_path":"/x"}"#)
            #expect(load.status == 404 && load.headers["x-lorikeet-upstream"] == nil)
        }
    }
}
