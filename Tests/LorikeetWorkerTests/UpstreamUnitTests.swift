import Foundation
import HTTPTypes
import LorikeetJSON
import LorikeetProto
import LorikeetTestSupport
import NIOCore
import Testing

@testable import LorikeetUpstream
@testable import LorikeetWorker

/// The shapes Lorikeet sends to and reads from upstream servers, checked against vLLM's
/// documented request models (vllm/entrypoints/openai/protocol.py: LoadLoRAAdapterRequest
/// = {lora_name: str, lora_path: str, load_inplace: bool = False}; UnloadLoRAAdapterRequest
/// = {lora_name: str, lora_int_id: int | None}; ErrorResponse = {"error": {message, type,
/// param, code}}, formerly {object: "error", message, type, param, code}) and SGLang's
/// (LoadLoRAAdapterReqInput / UnloadLoRAAdapterReqInput, `base:adapter` model names).
@Suite("upstream contract", .ownThreads)
struct UpstreamContractTests {
    static func object(_ value: JSONValue) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(JSONWriter.encode(value)))) as? [String: Any] ?? [:]
    }

    @Test("load / unload bodies carry exactly the fields of vLLM's and SGLang's request models")
    func adapterBodies() {
        let vllmFields: Set<String> = ["lora_name", "lora_path", "load_inplace"]
        let load = Self.object(UpstreamBackend.loadBody("a", path: "/srv/a", replace: false, kind: .vllm))
        #expect(load as? [String: String] == ["lora_name": "a", "lora_path": "/srv/a"])
        let inplace = Self.object(UpstreamBackend.loadBody("a", path: "/srv/a", replace: true, kind: .vllm))
        #expect(Set(inplace.keys).isSubset(of: vllmFields) && inplace["load_inplace"] as? Bool == true)
        let sglang = Self.object(UpstreamBackend.loadBody("a", path: "/srv/a", replace: true, kind: .sglang))
        #expect(Set(sglang.keys) == ["lora_name", "lora_path"])
        #expect(Self.object(UpstreamBackend.unloadBody("a")) as? [String: String] == ["lora_name": "a"])
        #expect(UpstreamKind.vllm.loadPath == "/v1/load_lora_adapter" && UpstreamKind.vllm.unloadPath == "/v1/unload_lora_adapter")
        #expect(UpstreamKind.sglang.loadPath == "/load_lora_adapter" && UpstreamKind.sglang.unloadPath == "/unload_lora_adapter")
        #expect(UpstreamKind.vllm.modelName(adapter: "sql", base: "llama") == "sql")
        #expect(UpstreamKind.sglang.modelName(adapter: "sql", base: "llama") == "llama:sql")
        #expect(UpstreamKind.sglang.modelName(adapter: nil, base: "llama") == "llama")
    }

    @Test("upstream errors become our envelope with the right status")
    func errorMapping() {
        func map(_ status: Int, _ body: String) -> APIError {
            UpstreamBackend.mapError(status: status, body: ByteBuffer(string: body), replica: "http://r:1")
        }
        let current = map(400, #"{"error":{"message":"bad max_tokens","type":"BadRequestError","param":"max_tokens","code":400}}"#)
        #expect(current.status == .badRequest && current.message == "bad max_tokens" && current.param == "max_tokens")
        let legacy = map(
            404, #"{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError","param":null,"code":404}"#)
        #expect(legacy.status == .notFound && legacy.message == "The model `x` does not exist.")
        let fastAPI = map(422, #"{"detail":[{"loc":["body","prompt"],"msg":"field required"}]}"#)
        #expect(fastAPI.status == .badRequest && fastAPI.message.contains("field required"))
        #expect(map(503, "overloaded").status == .serviceUnavailable)
        #expect(map(429, "{}").status == .tooManyRequests)
        let crash = map(500, "Internal Server Error")
        #expect(crash.status == .badGateway && crash.message.contains("http://r:1") && crash.message.contains("Internal Server Error"))
    }

    @Test("upstream URLs")
    func urls() throws {
        let plain = try UpstreamEndpoint(parsing: "http://vllm-a:8000")
        #expect(plain == UpstreamEndpoint(host: "vllm-a", port: 8000))
        #expect(try UpstreamEndpoint(parsing: "http://gw/vllm/") == UpstreamEndpoint(host: "gw", port: 80, pathPrefix: "/vllm"))
        #expect(try UpstreamEndpoint(parsing: "http://[::1]:9000") == UpstreamEndpoint(host: "::1", port: 9000))
        #expect(throws: UpstreamURLError.self) { try UpstreamEndpoint(parsing: "https://x:1") }
        #expect(throws: UpstreamURLError.self) { try UpstreamEndpoint(parsing: "http://x:99999") }
        #expect(throws: UpstreamURLError.self) { try UpstreamEndpoint(parsing: "http://:80") }
    }
}
