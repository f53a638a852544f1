/// Which inference server the upstream replicas are: their adapter routes and how a
/// request names an adapter.
public enum UpstreamKind: String, Sendable, CaseIterable {
    /// vLLM's OpenAI server (`--enable-lora`, `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`):
    /// `POST /v1/load_lora_adapter` / `/v1/unload_lora_adapter`; an adapter is requested
    /// by its name.
    case vllm
    /// SGLang (`--enable-lora`): `POST /load_lora_adapter` / `/unload_lora_adapter`; an
    /// adapter is requested as `base-model:adapter-name`.
    case sglang

    var loadPath: String { self == .vllm ? "/v1/load_lora_adapter" : "/load_lora_adapter" }
    var unloadPath: String { self == .vllm ? "/v1/unload_lora_adapter" : "/unload_lora_adapter" }

    /// The `model` to send upstream for `adapter` on a replica serving `base`.
    func modelName(adapter: String?, base: String) -> String {
        guard let adapter else { return base }
        switch self {
        case .vllm: return adapter
        case .sglang: return base + ":" + adapter
        }
    }
}
