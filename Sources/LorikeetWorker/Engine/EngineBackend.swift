package import Logging
package import LorikeetJSON
package import LorikeetProto
package import NIOCore
package import ServiceLifecycle

/// Health and the served model: what the worker asks of any engine, whatever serves its
/// generations (`GetHealth`, `GetModelInfo` of `proto/lorikeet/v1/engine.proto`, or an
/// upstream replica's `/health` and `/v1/models`).
///
/// Every failure is a `Status` with a gRPC code; an unreachable engine is `UNAVAILABLE`
/// (HTTP 503), reported at once rather than after a timeout.
package protocol EngineStatusReporting: Sendable {
    /// Engine health: OK status, newest epoch seen, running requests.
    func health() async throws(Status) -> HealthReply
    /// The served model and its limits.
    func modelInfo() async throws(Status) -> ModelInfo
}

/// Generations over the engine channel (`Generate` / `Abort`): the routes lower an OpenAI
/// request into a `GenerateRequest` and shape the chunks into OpenAI's answer.
/// `EngineClient` speaks it to the built-in engine process.
package protocol GenerationBackend: EngineStatusReporting {
    /// Starts a generation. The stream yields chunks and ends after the chunk that carries
    /// a `finishReason`; an engine-side failure ends it with a thrown `Status`. Dropping
    /// the stream before it ends aborts the request in the engine.
    func generate(_ request: GenerateRequest) async throws(Status) -> AsyncThrowingStream<GenerateChunk, any Error>
    /// Aborts a running generation (best effort; unknown ids are ignored).
    func abort(requestID: String) async
    /// Token ids of a prompt or chat through the engine's tokenizer (`Tokenize`; vLLM's
    /// `POST /tokenize`).
    func tokenize(_ request: TokenizeRequest) async throws(Status) -> TokenizeReply
    /// The text of token ids (`Detokenize`; vLLM's `POST /detokenize`).
    func detokenize(_ request: DetokenizeRequest) async throws(Status) -> DetokenizeReply
}

/// Adapter hosting (`AddLora` / `RemoveLora` / `PinLora` / `ListLoras`): what the leader
/// calls to make the engine hold the committed table. Mutations carry the leader's epoch.
package protocol AdapterHost: Sendable {
    /// Loads adapter weights (leader only; carries the epoch).
    func addAdapter(_ request: AddAdapterRequest) async throws(Status)
    /// Removes adapter weights (leader only; carries the epoch).
    func removeAdapter(_ request: RemoveAdapterRequest) async throws(Status)
    /// Pins or unpins an adapter (leader only; carries the epoch).
    func pinAdapter(_ request: PinAdapterRequest) async throws(Status)
    /// The adapters the engine holds.
    func listAdapters() async throws(Status) -> [EngineAdapter]
}

/// Adapter hosting spread over several replicas that each hold their own adapters
/// (upstream vLLM / SGLang): the leader's reconciliation is per replica, so the host does
/// it, and a replica that returns to rotation asks for a reconciliation at once.
package protocol ReplicatedAdapterHost: AdapterHost {
    /// Makes every healthy replica hold exactly `table`; `asDrift`: the reconcile loop's pass
    /// (what it changes is drift, logged and counted), not a committed change being applied.
    func reconcile(with table: AdapterTable, asDrift: Bool) async throws(Status) -> LeaderMutationService.Reconciliation
    /// How often the table is reconciled with the replicas.
    var reconcileInterval: Duration { get }
    /// Called (with the replica's name) when a replica comes back into rotation. Must not
    /// block: the worker only wakes its reconcile loop.
    func onReplicaRecovered(_ handler: @escaping @Sendable (String) -> Void)
}

/// An engine that serves OpenAI requests over HTTP itself (upstream vLLM / SGLang
/// replicas). The routes hand it the client's JSON body instead of lowering it into a
/// `GenerateRequest`: the replicas implement the whole OpenAI surface (tools, logprobs,
/// n, ...), so Lorikeet only resolves `model` against its adapter table and streams the
/// replica's answer back unchanged.
package protocol PassthroughBackend: EngineStatusReporting {
    /// Forwards one completion / chat completion. Errors are already HTTP errors (the
    /// replica's status mapped onto our envelope, or 503 when no replica can serve it).
    /// The caller must read the answer to its end or `cancel()` it.
    func forward(_ request: ForwardedRequest) async throws(APIError) -> any ForwardedResponse
}

/// A client request as the routes hand it to a `PassthroughBackend`.
package struct ForwardedRequest: Sendable {
    /// `/v1/completions`, `/v1/chat/completions`, or any route Lorikeet does not serve
    /// itself (with the query, as the client sent it).
    package var path: String
    /// The client's method (`POST` for the generation routes).
    package var method: String = "POST"
    /// The client's `Content-Type` (sent on unchanged; nil: none).
    package var contentType: String? = "application/json"
    /// Whether `model` is set to the replica's name for the resolved model (a JSON body
    /// that names a model); otherwise the body goes byte for byte.
    package var rewritesModel = true
    /// The client's body, byte for byte.
    package var body: [UInt8]
    /// The same body parsed (a JSON object).
    package var json: JSONValue
    /// The base model the request resolved to (our served name).
    package var baseModel: String
    /// The adapter it resolved to, if any.
    package var adapter: AdapterRecord?
    package var requestID: String

    package init(path: String, body: [UInt8], json: JSONValue, baseModel: String, adapter: AdapterRecord?, requestID: String) {
        self.path = path
        self.body = body
        self.json = json
        self.baseModel = baseModel
        self.adapter = adapter
        self.requestID = requestID
    }
}

/// A replica's 2xx answer, its body still arriving. Whoever holds it reads it to the end
/// (`next()` until nil, or `collect()`) or calls `cancel()`, which closes the upstream
/// request (the replica aborts it); either releases the replica's outstanding-request
/// slot. `cancel()` after the end does nothing.
package protocol ForwardedResponse: Sendable {
    /// The replica's status code (2xx).
    var status: Int { get }
    /// The replica's `Content-Type` (`application/json` when it sent none).
    var contentType: String { get }
    /// Which replica answered (`X-Lorikeet-Upstream`).
    var replica: String { get }
    /// The next chunk exactly as the replica sent it; nil at the end. A failure is a 502.
    func next() async throws(APIError) -> ByteBuffer?
    /// The whole body, at most the backend's cap on buffered bodies (a larger body is a
    /// 502 and closes the upstream request).
    func collect() async throws(APIError) -> ByteBuffer
    /// The client went away: close the upstream request.
    func cancel()
}

/// How adapters are hosted, as the leader needs to know it.
package enum AdapterHosting: Sendable {
    /// One engine holds them (the built-in engine): the leader reconciles it itself.
    case engine(any AdapterHost)
    /// Several replicas each hold their own: the host reconciles replica by replica.
    case replicas(any ReplicatedAdapterHost)

    /// The host, whichever kind.
    package var host: any AdapterHost {
        switch self {
        case .engine(let host): host
        case .replicas(let host): host
        }
    }
}

/// The engine a worker serves, as the typed capabilities its parts need, fixed when the
/// worker is built: the routes get how generations are served, the leader how adapters
/// are hosted, the service what must run in the background. Nothing casts at run time.
package struct WorkerEngine: Sendable {
    /// How completions and chat completions are served.
    package enum Generations: Sendable {
        /// Lowered into engine-channel generations.
        case engine(any GenerationBackend)
        /// Forwarded as OpenAI requests to replicas that serve them.
        case passthrough(any PassthroughBackend)
        /// Health and model info, from whichever serves generations.
        package var status: any EngineStatusReporting {
            switch self {
            case .engine(let backend): backend
            case .passthrough(let backend): backend
            }
        }
    }

    package var generations: Generations
    package var adapters: AdapterHosting
    /// Work that must run while the worker runs (upstream connection pools and replica
    /// probes). The worker runs it as a child task and cancels it after its HTTP server
    /// has stopped, so responses in flight during a drain keep their upstream connections.
    package var background: (any Service)?

    package init(generations: Generations, adapters: AdapterHosting, background: (any Service)? = nil) {
        self.generations = generations
        self.adapters = adapters
        self.background = background
    }

    /// Health and model info, from whatever serves generations.
    package var status: any EngineStatusReporting { self.generations.status }

    /// The built-in engine process behind one engine-channel client.
    package static func engineProcess(_ client: EngineClient) -> WorkerEngine {
        WorkerEngine(generations: .engine(client), adapters: .engine(client))
    }
}

/// Builds a worker's engine once the worker's table replica exists (an upstream backend
/// reads the committed table to tell which adapters each replica should hold).
package typealias WorkerEngineFactory = @Sendable (_ table: AdapterTableReplica, _ logger: Logger) -> WorkerEngine
