public import LorikeetProto

/// What the worker needs from an inference engine (the engine channel,
/// `proto/lorikeet/v1/engine.proto`). `EngineClient` speaks it to the built-in engine
/// process; an upstream-HTTP backend (vLLM) can conform later.
///
/// Every failure is a `Status` with a gRPC code; an unreachable engine is `UNAVAILABLE`
/// (HTTP 503), reported at once rather than after a timeout.
public protocol EngineBackend: Sendable {
    /// Starts a generation. The stream yields chunks and ends after the chunk that carries
    /// a `finishReason`; an engine-side failure ends it with a thrown `Status`. Dropping
    /// the stream before it ends aborts the request in the engine.
    func generate(_ request: GenerateRequest) async throws(Status) -> AsyncThrowingStream<GenerateChunk, any Error>
    /// Aborts a running generation (best effort; unknown ids are ignored).
    func abort(requestID: String) async
    /// Loads adapter weights (leader only; carries the epoch).
    func addAdapter(_ request: AddAdapterRequest) async throws(Status)
    /// Removes adapter weights (leader only; carries the epoch).
    func removeAdapter(_ request: RemoveAdapterRequest) async throws(Status)
    /// Pins or unpins an adapter (leader only; carries the epoch).
    func pinAdapter(_ request: PinAdapterRequest) async throws(Status)
    /// The adapters the engine holds.
    func listAdapters() async throws(Status) -> [EngineAdapter]
    /// Engine health: OK status, newest epoch seen, running requests.
    func health() async throws(Status) -> HealthReply
    /// The served model and its limits.
    func modelInfo() async throws(Status) -> ModelInfo
}
