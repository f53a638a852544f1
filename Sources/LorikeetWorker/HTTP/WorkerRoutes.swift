import HTTPTypes
import HummingbirdCore
package import Logging
import LorikeetJSON
import LorikeetProto
import NIOCore
import Synchronization

/// Settings of the OpenAI-compatible routes.
package struct RouteConfiguration: Sendable {
    /// `--api-key`: when set, every `/v1/*` route needs `Authorization: Bearer <key>`.
    package var apiKey: String?
    /// Largest accepted request body (413 above); default 8 MiB.
    package var maxBodyBytes: Int
    /// The request body must arrive within this time (408 otherwise).
    package var bodyReadTimeout: Duration
    /// Mounts `/v1/load_lora_adapter` and `/v1/unload_lora_adapter`
    /// (`LORIKEET_ALLOW_RUNTIME_LORA_UPDATING` / `VLLM_ALLOW_RUNTIME_LORA_UPDATING`).
    package var allowRuntimeLoraUpdating: Bool
    /// `Server` header and `/version`.
    package var serverName: String
    package var version: String
    /// Context length reported as `max_model_len` in `/v1/models`.
    package var maxModelLength: UInt32
    /// This worker's slot (audit field of routed mutations); -1 when standalone.
    package var workerSlot: Int32
    /// Host names (besides loopback names and addresses) accepted in the `Host` header of
    /// a request that arrived on a loopback address: a page in a browser cannot reach a
    /// loopback server through DNS rebinding. Servers behind a proxy list its name here
    /// (`--allowed-hosts`); `*` turns the check off.
    package var allowedHosts: [String]
    /// Adapters the committed table may hold (`--max-adapters`).
    package var maxAdapters: Int
    /// `LORIKEET_METRICS_DIR` (set by the supervisor): the `vllm:` series are summed over
    /// the worker processes' files there (`VLLMMetrics`).
    package var metricsDirectory: String? = nil
    /// vLLM's LoRA filesystem resolver (`LoraFilesystemResolver`); nil = off.
    package var loraResolver: LoraResolverConfiguration.Setup? = nil
    /// vLLM's `--enable-prompt-tokens-details`: a usage whose prompt reused cached positions
    /// says how many in `prompt_tokens_details.cached_tokens`.
    package var enablePromptTokensDetails = false

    package init(
        apiKey: String? = nil, maxBodyBytes: Int = Limits.defaultBodyBytes, bodyReadTimeout: Duration = .seconds(30),
        allowRuntimeLoraUpdating: Bool = false, serverName: String = "lorikeet", version: String = "0.0.0",
        maxModelLength: UInt32 = 0, workerSlot: Int32 = -1, allowedHosts: [String] = [],
        maxAdapters: Int = Limits.defaultMaxAdapters
    ) {
        self.allowedHosts = allowedHosts
        self.maxAdapters = maxAdapters
        self.apiKey = apiKey
        self.maxBodyBytes = maxBodyBytes
        self.bodyReadTimeout = bodyReadTimeout
        self.allowRuntimeLoraUpdating = allowRuntimeLoraUpdating
        self.serverName = serverName
        self.version = version
        self.maxModelLength = maxModelLength
        self.workerSlot = workerSlot
    }

    /// Whether an environment flag is on, by vLLM's rule (`vllm/envs.py`:
    /// `value.strip().lower() in ("1", "true")`; the Rust frontend's
    /// `runtime_lora_updating_enabled` is the same): surrounding whitespace is ignored,
    /// case is not, and only `1` and `true` count (`yes`, `on`, `2` are off).
    package static func isEnabled(_ value: String?) -> Bool {
        guard let value else { return false }
        let flag = value.trimmingASCIIWhitespace().lowercased()
        return flag == "1" || flag == "true"
    }

    /// `LORIKEET_ALLOW_RUNTIME_LORA_UPDATING` or `VLLM_ALLOW_RUNTIME_LORA_UPDATING` is 1/true.
    package static func runtimeLoraUpdatingEnabled(_ environment: [String: String]) -> Bool {
        Self.isEnabled(environment["LORIKEET_ALLOW_RUNTIME_LORA_UPDATING"])
            || Self.isEnabled(environment["VLLM_ALLOW_RUNTIME_LORA_UPDATING"])
    }
}

/// Request counters the control channel's heartbeat reports.
package final class WorkerStats: Sendable {
    private let served = Atomic<UInt64>(0)
    private let running = Atomic<Int>(0)
    package init() {}
    /// Requests answered since start.
    package var requestsServed: UInt64 { self.served.load(ordering: .relaxed) }
    /// Requests being answered now.
    package var inFlight: UInt32 { UInt32(clamping: self.running.load(ordering: .relaxed)) }
    func begin() { self.running.add(1, ordering: .relaxed) }
    func end() {
        self.running.subtract(1, ordering: .relaxed)
        self.served.add(1, ordering: .relaxed)
    }
}

/// The worker's routes (vLLM's OpenAI server, drop-in):
///
/// - `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (JSON, or SSE
///   with `data: {...}` events and `data: [DONE]`),
/// - `POST /v1/load_lora_adapter`, `POST /v1/unload_lora_adapter` (only when runtime
///   updating is enabled; otherwise 404),
/// - `GET /health` (200 / 503), `GET /version`,
/// - beyond vLLM (`WorkerRoutes+Ops.swift`): `GET /v1/lora_adapters`,
///   `POST /v1/lora_adapters/batch`, `GET /metrics`.
///
/// Every failure is OpenAI's error envelope with the right status code.
package final class WorkerRoutes: Sendable {
    /// How completions are served, fixed at construction.
    let generations: WorkerEngine.Generations
    let replica: AdapterTableReplica
    let mutator: any AdapterMutator
    let configuration: RouteConfiguration
    private let logger: Logger
    private let dates = DateCache()
    private let startedAt: Int64
    private let maxModelLength: Atomic<UInt32>
    /// The last `/v1/models` body and what it was built from.
    private let modelListing: Mutex<(key: ModelListingKey, body: ByteBuffer)?>
    package let stats = WorkerStats()
    /// `GET /metrics` and the per-adapter usage of `GET /v1/lora_adapters`.
    package let metrics: WorkerMetrics
    /// Loads unknown models from the resolver directory (nil = off).
    let loraResolver: LoraFilesystemResolver?

    package init(
        generations: WorkerEngine.Generations, replica: AdapterTableReplica, mutator: any AdapterMutator,
        configuration: RouteConfiguration, logger: Logger
    ) {
        self.generations = generations
        self.replica = replica
        let metrics = WorkerMetrics(slot: configuration.workerSlot, multiprocessDirectory: configuration.metricsDirectory)
        self.metrics = metrics
        self.mutator = MeteredMutator(inner: mutator, metrics: metrics)
        self.configuration = configuration
        self.logger = logger
        self.loraResolver = LoraFilesystemResolver.make(configuration.loraResolver, slot: configuration.workerSlot, logger: logger)
        self.startedAt = LeaderMutationService.nowUnixMs() / 1000
        self.maxModelLength = Atomic(configuration.maxModelLength)
        self.modelListing = Mutex(nil)
    }

    /// Health and model info of whatever serves generations.
    var status: any EngineStatusReporting { self.generations.status }

    /// Sets the context length `/v1/models` reports (known once the engine answered).
    package func setMaxModelLength(_ length: UInt32) { self.maxModelLength.store(length, ordering: .relaxed) }

    /// The responder to give `WorkerServer`.
    package var responder: WorkerServer.Responder {
        { request, writer, channel in try await self.respond(to: request, writer: writer, channel: channel) }
    }

    /// Paths the metrics listener (`WorkerConfiguration.metricsListen`) answers.
    static let metricsListenerPaths: Set<String> = ["/metrics", "/health", "/ping", "/version"]

    /// The responder of the metrics listener: `GET /metrics`, `/health` and `/version` of
    /// this worker only; everything else is 404 there.
    package var metricsResponder: WorkerServer.Responder {
        { request, writer, channel in
            try await self.respond(to: request, writer: writer, channel: channel, only: Self.metricsListenerPaths)
        }
    }

    /// What a route answers: a head and a body (a buffer, or a streaming closure).
    struct Reply {
        var status: HTTPResponse.Status
        var headers: HTTPFields = [:]
        var body: ResponseBody
        /// Close the connection after this response (e.g. an unread oversized body).
        var closeConnection = false
        /// Runs once the response was written or its write failed (a relayed upstream
        /// answer ends its upstream request there if the body never ran).
        var release: (@Sendable () -> Void)? = nil

        static func json(_ status: HTTPResponse.Status, _ value: JSONValue) -> Reply {
            .json(status, encoded: ByteBuffer(bytes: JSONWriter.encode(value)))
        }

        static func json(_ status: HTTPResponse.Status, encoded body: ByteBuffer) -> Reply {
            var headers = HTTPFields()
            headers[.contentType] = "application/json"
            return Reply(status: status, headers: headers, body: ResponseBody(byteBuffer: body))
        }

        static func text(_ status: HTTPResponse.Status, _ text: String) -> Reply {
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; charset=utf-8"
            return Reply(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
        }

        static func error(_ error: APIError) -> Reply {
            var reply = Reply.json(error.status, error.json)
            if error.status == .unauthorized { reply.headers[.wwwAuthenticate] = "Bearer" }
            if let allow = error.allow { reply.headers[.allow] = allow }
            return reply
        }
    }

    func respond(
        to request: Request, writer: consuming ResponseWriter, channel: any Channel, only allowedPaths: Set<String>? = nil
    ) async throws {
        self.stats.begin()
        let record = RequestRecord(path: request.uri.path, vllm: self.metrics.vllm)
        var answeredStatus = 0
        defer {
            self.stats.end()
            self.metrics.requestFinished(record, status: answeredStatus, duration: .now - record.start)
        }
        // The engine request id is always generated here (unique per worker); a client's
        // X-Request-Id is only echoed and logged.
        let requestID = Self.makeID()
        let clientRequestID = request.headers[Self.requestIDHeader].flatMap { $0.isEmpty ? nil : String($0.prefix(128)) }
        var logger = self.logger
        logger[metadataKey: "request.id"] = "\(requestID)"
        if let clientRequestID { logger[metadataKey: "request.client_id"] = "\(clientRequestID)" }
        var request = request
        if request.headers[.expect]?.lowercased() == "100-continue" {
            let declared = request.headers[.contentLength].flatMap(Int.init) ?? 0
            if declared <= self.configuration.maxBodyBytes {
                try await writer.writeInformationalHead(HTTPResponse(status: .continue))
            }
        }
        var reply: Reply
        do {
            reply = try await RequestRecord.$current.withValue(record) {
                if let allowedPaths, !allowedPaths.contains(request.uri.path) {
                    throw APIError.routeNotFound(request.method, request.uri.path)
                }
                return try await self.route(&request, requestID: requestID, channel: channel, logger: logger)
            }
        } catch let error as APIError {
            reply = .error(error)
            if error.status == .contentTooLarge || error.status == .requestTimeout { reply.closeConnection = true }
        } catch {
            logger.error("unexpected error", metadata: ["error": "\(error)"])
            reply = .error(APIError.serverError("Internal server error."))
        }
        if reply.status.code >= 500 {
            logger.warning("request failed", metadata: ["http.status": "\(reply.status.code)", "http.path": "\(request.uri.path)"])
        } else {
            logger.debug("request answered", metadata: ["http.status": "\(reply.status.code)", "http.path": "\(request.uri.path)"])
        }
        reply.headers[.date] = self.dates.current
        reply.headers[.server] = self.configuration.serverName
        reply.headers[Self.requestIDHeader] = clientRequestID ?? requestID
        if reply.closeConnection { reply.headers[.connection] = "close" }
        if let length = reply.body.contentLength { reply.headers[.contentLength] = String(length) }
        let close = reply.closeConnection
        answeredStatus = reply.status.code
        let release = reply.release
        defer { release?() }
        try await writer.write(response: HTTPResponse(status: reply.status, headerFields: reply.headers), body: reply.body)
        if close { channel.close(mode: .all, promise: nil) }
    }

    // MARK: Routing

    private func route(_ request: inout Request, requestID: String, channel: any Channel, logger: Logger) async throws -> Reply {
        let path = request.uri.path
        let method = request.method
        if let local = channel.localAddress, Self.isLoopback(local),
            !RequestGuards.hostAllowed(request.head.authority, allowed: self.configuration.allowedHosts)
        {
            let host = (request.head.authority ?? "").echoed(limit: 100)
            throw APIError(
                status: .forbidden, kind: .invalidRequest,
                message:
                    "Host '\(host)' is not allowed: this server listens on a loopback address and answers only loopback host names. "
                    + "Add the name with --allowed-hosts if a proxy forwards it.",
                code: "host_not_allowed")
        }
        if path.hasPrefix("/v1/") { try self.authorize(request) }
        if method == .post, Self.jsonRoutes.contains(path), !RequestGuards.isJSON(request.headers[.contentType]) {
            throw APIError(
                status: .unsupportedMediaType, kind: .invalidRequest,
                message: "The request body must be JSON with 'Content-Type: application/json'.",
                code: "unsupported_media_type")
        }
        switch path {
        case "/health":
            try Self.require(method, .get, path)
            return await self.health()
        case "/ping":
            // vLLM's SageMaker alias of /health (GET and POST).
            guard method == .get || method == .post else { throw APIError.methodNotAllowed(method, path, allowed: [.get, .post]) }
            return await self.health()
        case "/load":
            try Self.require(method, .get, path)
            return await self.serverLoad()
        case "/version":
            try Self.require(method, .get, path)
            return .json(.ok, .object([("version", .string(self.configuration.version))]))
        case "/v1/models":
            try Self.require(method, .get, path)
            return self.models()
        case _ where path.hasPrefix("/v1/models/") && path.utf8.count > "/v1/models/".utf8.count:
            try Self.require(method, .get, path)
            return try self.retrieveModel(path.dropFirst("/v1/models/".count))
        case "/tokenize", "/detokenize":
            try Self.require(method, .post, path)
            let bytes = try await self.readBody(&request)
            let body = try RequestValidation.object(bytes)
            switch self.generations {
            case .passthrough(let upstream):
                return try await self.passthrough(
                    request, bytes: bytes, json: body, to: upstream, requestID: requestID, logger: logger)
            case .engine(let engine):
                return path == "/tokenize" ? try await self.tokenize(body, on: engine) : try await self.detokenize(body, on: engine)
            }
        case "/v1/completions", "/v1/chat/completions":
            try Self.require(method, .post, path)
            let bytes = try await self.readBody(&request)
            let body = try RequestValidation.object(bytes)
            switch self.generations {
            case .passthrough(let upstream):
                return try await self.forward(bytes, body, path: path, to: upstream, requestID: requestID, logger: logger)
            case .engine(let engine):
                let route: GenerationRoute = path == "/v1/completions" ? .completions : .chatCompletions
                return try await self.generate(body, route: route, on: engine, requestID: requestID, channel: channel, logger: logger)
            }
        case "/v1/load_lora_adapter" where self.configuration.allowRuntimeLoraUpdating:
            try Self.require(method, .post, path)
            let body = try await self.readJSON(&request)
            return try await self.loadAdapter(body, caller: Self.caller(channel))
        case "/v1/unload_lora_adapter" where self.configuration.allowRuntimeLoraUpdating:
            try Self.require(method, .post, path)
            let body = try await self.readJSON(&request)
            return try await self.unloadAdapter(body, caller: Self.caller(channel))
        case "/v1/lora_adapters":
            try Self.require(method, .get, path)
            return self.listAdapters()
        case "/v1/lora_adapters/batch" where self.configuration.allowRuntimeLoraUpdating:
            try Self.require(method, .post, path)
            let body = try await self.readJSON(&request)
            return try await self.batchAdapters(body, caller: Self.caller(channel))
        case "/metrics":
            try Self.require(method, .get, path)
            return await self.metricsExposition()
        default:
            if case .passthrough(let upstream) = self.generations, !Self.ownedPaths.contains(path) {
                // A route of the replicas Lorikeet does not serve itself (embeddings,
                // responses, score, ...): forwarded, body bounded as ours.
                let bytes = try await self.readBody(&request)
                return try await self.passthrough(request, bytes: bytes, json: nil, to: upstream, requestID: requestID, logger: logger)
            }
            throw APIError.routeNotFound(method, path)
        }
    }

    /// Paths Lorikeet answers itself (or refuses) in upstream mode too; every other path
    /// goes to a replica. The adapter routes stay ours with runtime updating off (404).
    static let ownedPaths: Set<String> = [
        "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/load_lora_adapter", "/v1/unload_lora_adapter",
        "/v1/lora_adapters", "/v1/lora_adapters/batch", "/health", "/ping", "/load", "/version", "/metrics",
    ]

    /// POST routes whose body is JSON (415 for any other media type).
    static let jsonRoutes: Set<String> = [
        "/v1/completions", "/v1/chat/completions", "/v1/load_lora_adapter", "/v1/unload_lora_adapter",
        "/v1/lora_adapters/batch", "/tokenize", "/detokenize",
    ]

    /// Whether a local address is loopback (127.0.0.0/8, ::1, or a Unix socket).
    static func isLoopback(_ address: SocketAddress) -> Bool {
        switch address {
        case .v4:
            return address.ipAddress?.hasPrefix("127.") ?? false
        case .v6:
            guard let ip = address.ipAddress else { return false }
            return ip == "::1" || ip.hasPrefix("::ffff:127.")
        case .unixDomainSocket:
            return true
        }
    }

    static func require(_ method: HTTPRequest.Method, _ expected: HTTPRequest.Method, _ path: String) throws(APIError) {
        guard method == expected else { throw APIError.methodNotAllowed(method, path, allowed: [expected]) }
    }

    /// The request's `model` resolved against the served names and the adapter table:
    /// absent, `null` and `""` all mean the first base model (vLLM: Rust
    /// `validate.rs`, `filter(|m| !m.is_empty())`; Python `_is_model_supported`); an
    /// unknown name is `ModelNotFound`. Returns the name the response echoes.
    func resolveModel(_ requested: String?) throws(APIError) -> (name: String, resolved: (base: String, adapter: AdapterRecord?)) {
        let name = self.modelName(requested)
        guard let resolved = self.replica.resolve(model: name) else { throw APIError.modelNotFound(name) }
        try self.checkFence(resolved.adapter)
        return (name, resolved)
    }

    /// Fleet mode: an adapter is not served while the node is fenced (503 "cluster
    /// unreachable"); base models always are.
    func checkFence(_ adapter: AdapterRecord?) throws(APIError) {
        if adapter != nil, let fenced = self.replica.fence.problem { throw APIError(fenced) }
    }

    /// The model a request names: absent, null or "" is the first served model (vLLM's rule).
    func modelName(_ requested: String?) -> String {
        requested.flatMap { $0.isEmpty ? nil : $0 } ?? self.replica.baseModels.first ?? ""
    }

    /// The client's `ip:port` (`[ip6]:port`), for the audit log.
    static func caller(_ channel: any Channel) -> String {
        guard let address = channel.remoteAddress else { return "" }
        guard let ip = address.ipAddress, let port = address.port else { return "\(address)" }
        return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }

    static let requestIDHeader = HTTPField.Name("X-Request-Id")!

    static func makeID() -> String {
        let value = UInt64.random(in: 0...UInt64.max)
        let hex = String(value, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    // MARK: Auth and body

    private func authorize(_ request: Request) throws(APIError) {
        guard let key = self.configuration.apiKey, !key.isEmpty else { return }
        let presented = RequestGuards.bearerToken(request.headers[.authorization])
        guard Self.constantTimeEquals(Array(presented.utf8), Array(key.utf8)) else {
            throw APIError(
                status: .unauthorized, kind: .authentication, message: "Invalid or missing API key.", code: "invalid_api_key")
        }
    }

    /// Compares in time that depends only on the lengths, not on where the bytes differ.
    static func constantTimeEquals(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
        var difference = UInt8(truncatingIfNeeded: lhs.count ^ rhs.count) | (lhs.count == rhs.count ? 0 : 1)
        let length = max(lhs.count, rhs.count)
        for index in 0..<length {
            let left = index < lhs.count ? lhs[index] : 0
            let right = index < rhs.count ? rhs[index] : 0
            difference |= left ^ right
        }
        return difference == 0
    }

    private func readJSON(_ request: inout Request) async throws -> JSONValue {
        try RequestValidation.object(try await self.readBody(&request))
    }

    func readBody(_ request: inout Request) async throws -> [UInt8] {
        let limit = self.configuration.maxBodyBytes
        let tooLarge = APIError(
            status: .contentTooLarge, kind: .invalidRequest,
            message: "The request body is larger than the limit of \(limit) bytes.", code: "request_too_large")
        if let declared = request.headers[.contentLength].flatMap(Int.init), declared > limit { throw tooLarge }
        let timeout = self.configuration.bodyReadTimeout
        let buffer: ByteBuffer
        do {
            buffer = try await withThrowingTaskGroup(of: ByteBuffer.self) { [request] group in
                var request = request
                group.addTask { try await request.collectBody(upTo: limit) }
                group.addTask {
                    try await Task.sleep(for: timeout)
                    throw APIError(
                        status: .requestTimeout, kind: .invalidRequest, message: "The request body did not arrive in time.")
                }
                defer { group.cancelAll() }
                return try await group.next()!
            }
        } catch is NIOTooManyBytesError {
            throw tooLarge
        }
        return Array(buffer.readableBytesView)
    }

    // MARK: Routes

    private func health() async -> Reply {
        if let fenced = self.replica.fence.problem { return .error(APIError(fenced)) }
        do throws(Status) {
            let health = try await self.status.health()
            guard health.status.isOK else { throw health.status }
            return Reply(status: .ok, body: ResponseBody())
        } catch {
            var status = error
            if status.code != .unavailable { status = Status(code: .unavailable, message: "engine unhealthy: \(error.message)") }
            return .error(APIError(status))
        }
    }

    /// What `/v1/models` depends on besides the start time (the replica's generation
    /// covers its table and base models): its body is encoded once per key.
    struct ModelListingKey: Equatable {
        var replicaGeneration: UInt64
        var maxModelLength: UInt32
    }

    /// `GET /v1/models`, encoded once per replica change (clients poll it; with a thousand
    /// adapters encoding it on every request would cost more than serving it).
    private func models() -> Reply {
        let (baseModels, adapters, generation) = self.replica.listing()
        let key = ModelListingKey(replicaGeneration: generation, maxModelLength: self.maxModelLength.load(ordering: .relaxed))
        if let cached = self.modelListing.withLock({ $0?.key == key ? $0?.body : nil }) {
            return .json(.ok, encoded: cached)
        }
        let body = ByteBuffer(
            bytes: JSONWriter.encode(self.modelListing(baseModels: baseModels, adapters: adapters, maxModelLength: key.maxModelLength)))
        self.modelListing.withLock { $0 = (key, body) }
        return .json(.ok, encoded: body)
    }

    private func modelListing(baseModels: [String], adapters: [AdapterRecord], maxModelLength: UInt32) -> JSONValue {
        let data =
            baseModels.map { self.baseCard($0, maxModelLength: maxModelLength) }
            + adapters.map { self.adapterCard($0, baseModels: baseModels, maxModelLength: maxModelLength) }
        return .object([("object", .string("list")), ("data", .array(data))])
    }

    /// A base model's card: vLLM's Python `ModelCard` (`id`, `object`, `created`,
    /// `owned_by`, `root`, `parent: null`, `max_model_len`, `permission`), a superset of the
    /// Rust frontend's. `root` is the served name (the engine does not report its path);
    /// `created` is the worker's start, stable across calls.
    private func baseCard(_ name: String, maxModelLength: UInt32) -> JSONValue {
        Self.card(
            id: name, created: self.startedAt, root: name, parent: .null, maxModelLength: maxModelLength)
    }

    /// An adapter's card: `root` is its canonical path, `parent` its base model, and
    /// `max_model_len` the base's (vLLM leaves it null on adapters; a deliberate difference).
    private func adapterCard(_ adapter: AdapterRecord, baseModels: [String], maxModelLength: UInt32) -> JSONValue {
        Self.card(
            id: adapter.name, created: adapter.loadedAtUnixMs > 0 ? adapter.loadedAtUnixMs / 1000 : self.startedAt,
            root: adapter.path, parent: .string(adapter.baseModel.isEmpty ? (baseModels.first ?? "") : adapter.baseModel),
            maxModelLength: maxModelLength)
    }

    private static func card(id: String, created: Int64, root: String, parent: JSONValue, maxModelLength: UInt32) -> JSONValue {
        .object([
            ("id", .string(id)), ("object", .string("model")), ("created", .int(created)), ("owned_by", .string("lorikeet")),
            ("root", .string(root)), ("parent", parent),
            ("max_model_len", maxModelLength > 0 ? .int(Int64(maxModelLength)) : .null),
            ("permission", .array([Self.permission(id: id, created: created)])),
        ])
    }

    /// vLLM's `ModelPermission` with its defaults; the id is derived from the card's id and
    /// creation time, so it is stable (vLLM draws a new one per call).
    private static func permission(id: String, created: Int64) -> JSONValue {
        func fnv(_ seed: UInt64) -> String {
            var hash = seed
            for byte in id.utf8 {
                hash ^= UInt64(byte)
                hash &*= 0x100_0000_01b3
            }
            hash ^= UInt64(bitPattern: created)
            hash &*= 0x100_0000_01b3
            let hex = String(hash, radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }
        return .object([
            ("id", .string("modelperm-" + fnv(0xcbf2_9ce4_8422_2325) + fnv(0x8422_2325_cbf2_9ce4))),
            ("object", .string("model_permission")), ("created", .int(created)), ("allow_create_engine", .bool(false)),
            ("allow_sampling", .bool(true)), ("allow_logprobs", .bool(true)), ("allow_search_indices", .bool(false)),
            ("allow_view", .bool(true)), ("allow_fine_tuning", .bool(false)), ("organization", .string("*")),
            ("group", .null), ("is_blocking", .bool(false)),
        ])
    }

    /// `GET /v1/models/{id}` (OpenAI's retrieve; vLLM has no such route): the card of a
    /// base model or a loaded adapter, or `ModelNotFound`. `{id}` is the rest of the path,
    /// percent-decoded once, so ids with `/` work.
    private func retrieveModel(_ rawID: Substring) throws(APIError) -> Reply {
        let id = Self.percentDecoded(rawID) ?? String(rawID)
        let (baseModels, adapters, _) = self.replica.listing()
        let length = self.maxModelLength.load(ordering: .relaxed)
        if baseModels.contains(id) { return .json(.ok, self.baseCard(id, maxModelLength: length)) }
        if let adapter = adapters.first(where: { $0.name == id }) {
            return .json(.ok, self.adapterCard(adapter, baseModels: baseModels, maxModelLength: length))
        }
        throw APIError.modelNotFound(id)
    }

    /// `text` with `%XX` escapes decoded; nil when an escape is malformed or the result is
    /// not UTF-8.
    static func percentDecoded(_ text: Substring) -> String? {
        var bytes: [UInt8] = []
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(Self.hexValue), let low = iterator.next().flatMap(Self.hexValue) else {
                return nil
            }
            bytes.append(high << 4 | low)
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    private func loadAdapter(_ body: JSONValue, caller: String) async throws -> Reply {
        let name = try RequestValidation.string(body, "lora_name")
        let path = try RequestValidation.string(body, "lora_path")
        let inplace = try RequestValidation.optionalBool(body, "load_inplace") ?? false
        _ = try RequestValidation.optionalBool(body, "is_3d_lora_weight")
        let base = try RequestValidation.optionalString(body, "base_model_name") ?? ""
        let pinned = try RequestValidation.optionalBool(body, "pinned") ?? false
        // The Rust frontend's checks and messages (`lora.rs`, `register()`, after `trim()`;
        // `routes/lora.rs`, `load_lora_api_error`), before the leader's own.
        if name.trimmingASCIIWhitespace().isEmpty {
            throw APIError.invalidRequest("lora_name must not be empty", param: "lora_name")
        }
        if path.trimmingASCIIWhitespace().isEmpty {
            throw APIError.invalidRequest("lora_path must not be empty", param: "lora_path")
        }
        if self.replica.baseModels.contains(name) {
            throw APIError.invalidRequest("LoRA adapter `\(name.echoed())` conflicts with a served base model", param: "lora_name")
        }
        let request = LoadAdapterRequest(
            name: name, path: path, loadInplace: inplace, pinned: pinned, baseModel: base,
            originSlot: self.configuration.workerSlot, caller: caller)
        do {
            try AdapterRequestRules.check(request)
        } catch {
            throw APIError(error)
        }
        let reply = await self.mutator.load(request)
        guard reply.status.isOK else { throw APIError.loadAdapter(name, reply.status) }
        return .text(.ok, "Success: LoRA adapter '\(name)' added successfully.")
    }

    private func unloadAdapter(_ body: JSONValue, caller: String) async throws -> Reply {
        let name = try RequestValidation.string(body, "lora_name")
        let intID = try RequestValidation.optionalInt(body, "lora_int_id", in: Int64.min...Int64.max)
        if let intID, intID <= 0 {
            // Rust deserialises it as a u64: a class of `json_parse_error`.
            throw APIError.jsonParse("'lora_int_id' must be a positive integer, got \(intID).", param: "lora_int_id")
        }
        // The Rust frontend's checks and messages (`routes/lora.rs`, `unload_lora_adapter`;
        // `lora.rs`, `IntIdMismatch`), before the leader's own.
        if name.isEmpty {
            throw APIError.invalidRequest("'lora_name' needs to be provided to unload a LoRA adapter.", param: "lora_name")
        }
        if let intID, let loaded = self.replica.snapshot().adapters.first(where: { $0.name == name }),
            loaded.intID != UInt64(intID)
        {
            throw APIError.invalidRequest(
                "requested lora_int_id \(intID) does not match loaded adapter `\(name.echoed())` with id \(loaded.intID)",
                param: "lora_int_id")
        }
        let request = UnloadAdapterRequest(
            name: name, intID: UInt64(intID ?? 0), originSlot: self.configuration.workerSlot, caller: caller)
        do {
            try AdapterRequestRules.check(request)
        } catch {
            throw APIError(error)
        }
        let reply = await self.mutator.unload(request)
        guard reply.status.isOK else { throw APIError.unloadAdapter(name, reply.status) }
        return .text(.ok, "Success: LoRA adapter '\(name)' removed successfully.")
    }

    // MARK: Generation

    private func generate(
        _ body: JSONValue, route: GenerationRoute, on engine: any GenerationBackend, requestID: String, channel: any Channel,
        logger: Logger
    ) async throws -> Reply {
        let parameters = try RequestValidation.generation(body, route: route)
        let (model, resolved) = try await self.resolveGenerationModel(parameters.model)
        let record = RequestRecord.current
        record?.resolved(model: model, adapterID: resolved.adapter?.intID)
        var logger = logger
        if let adapter = resolved.adapter { logger[metadataKey: "adapter.name"] = "\(adapter.name.echoed())" }
        var request = GenerateRequest(requestID: requestID, sampling: parameters.sampling)
        switch parameters.prompt {
        case .text(let text): request.promptText = text
        case .tokens(let tokens): request.promptTokens = tokens
        case .messages(let messages): request.messages = messages
        }
        request.adapter = resolved.adapter.map { AdapterRef(name: $0.name, intID: $0.intID, path: $0.path) }

        if parameters.n > 1 || parameters.bestOf > parameters.n || !parameters.morePrompts.isEmpty {
            return try await self.generateChoices(
                request, parameters: parameters, shape: shape(route, requestID: requestID, model: model, parameters),
                on: engine, channel: channel, record: record, logger: logger)
        }
        let stream: AsyncThrowingStream<GenerateChunk, any Error>
        do {
            stream = try await engine.generate(request)
        } catch {
            throw APIError(error)
        }
        // Until the answer's first bytes are written (all of it when not streamed), only the
        // connection's input tells that the client gave up.
        let watch = Self.abortWhenClientGone(channel, [requestID], on: engine, logger: logger)
        defer { watch.cancel() }
        let shape = self.shape(route, requestID: requestID, model: model, parameters)
        // Wait for the first chunk before answering, so that an engine refusal is a proper
        // HTTP error and not an error event inside a 200 stream.
        let iterator = SequentialIterator(stream.makeAsyncIterator())
        let first: GenerateChunk?
        do {
            first = try await iterator.next()
        } catch let status as Status where status.code == .notFound && request.adapter != nil {
            // The adapter is committed (we resolved it) but the engine does not hold it:
            // the engine restarted and the leader is re-adding the table (or its files no
            // longer load and the leader retries with backoff). Retryable either way.
            throw APIError(
                Status(
                    code: .unavailable,
                    message:
                        "The adapter '\(model)' is being restored in the engine; retry shortly. (If this persists, its files no longer load: see the leader's log and lorikeet_adapters_unavailable.)"
                ))
        } catch {
            throw Self.apiError(error)
        }
        record?.firstToken()
        if parameters.stream {
            return Self.streamReply(
                first: first, iterator: iterator, shape: shape, includeUsage: parameters.includeUsage, echo: parameters.echo,
                engine: engine, requestID: requestID, record: record, logger: logger)
        }
        var text = ""
        var tokens: [UInt32] = []
        var finishReason = ""
        var stopReason: GenerateChunk.StopReason?
        var usage: Usage?
        var positions: [PositionLogprobs] = []
        var echoed = false
        var next = first
        while let chunk = next {
            record?.output(tokens: chunk.tokens.count, finishReason: chunk.finishReason)
            if parameters.echo && !echoed {
                // The prompt (and its log probabilities) before the completion.
                echoed = true
                text += shape.echoed(chunk.promptLogprobs)
                if shape.logprobs != nil { positions += chunk.promptLogprobs }
            }
            text += chunk.text
            tokens += chunk.tokens
            positions += chunk.logprobs
            if !chunk.finishReason.isEmpty {
                finishReason = chunk.finishReason
                stopReason = chunk.stopReason
            }
            if let chunkUsage = chunk.usage { usage = chunkUsage }
            do {
                next = try await iterator.next()
            } catch {
                throw Self.apiError(error)
            }
        }
        let counted = usage ?? Usage(promptTokens: 0, completionTokens: UInt32(tokens.count))
        record?.tokens(prompt: counted.promptTokens, completion: counted.completionTokens, cached: counted.cachedPromptTokens)
        return .json(
            .ok,
            shape.final(
                [ChoiceOutput(text: text, tokens: tokens, logprobs: positions, finishReason: finishReason, stopReason: stopReason)],
                usage: counted))
    }

    /// Aborts `requestIDs` in the engine if the client goes away before `cancel`.
    private static func abortWhenClientGone(
        _ channel: any Channel, _ requestIDs: [String], on engine: any GenerationBackend, logger: Logger
    ) -> PeerClosedWatch.Registration {
        PeerClosedWatch.whenGone(channel) {
            logger.info("client disconnected before the answer was written; aborting the engine request")
            Task { for id in requestIDs { await engine.abort(requestID: id) } }
        }
    }

    private func shape(
        _ route: GenerationRoute, requestID: String, model: String, _ parameters: GenerationParameters
    ) -> ResponseShape {
        var shape = ResponseShape(
            route: route, id: (route == .completions ? "cmpl-" : "chatcmpl-") + requestID,
            created: LeaderMutationService.nowUnixMs() / 1000, model: model, returnTokenIDs: parameters.returnTokenIDs)
        shape.promptTokensDetails = self.configuration.enablePromptTokensDetails
        shape.logprobs = parameters.logprobs
        if parameters.echo, case .text(let text) = parameters.prompt { shape.echoText = text }
        return shape
    }

    /// `n` > 1: one engine request per choice, as vLLM's `ParentRequest` fans out
    /// (`vllm/v1/engine/parallel_sampling.py`): child `i` is `"\(i)_\(requestID)"` with seed
    /// `seed + i` when a seed is given. The choices run side by side in the engine's batch;
    /// usage counts the prompt once and sums the completions.
    private func generateChoices(
        _ request: GenerateRequest, parameters: GenerationParameters, shape: ResponseShape,
        on engine: any GenerationBackend, channel: any Channel, record: RequestRecord?, logger: Logger
    ) async throws -> Reply {
        // Several prompts: vLLM makes one request per prompt (`-{p}` appended to the id),
        // each fanned out to its n children.
        let prompts = [parameters.prompt] + parameters.morePrompts
        // best_of > n: best_of candidates per prompt, each with its tokens' log probabilities
        // (not shown unless asked for), ranked at the end.
        let candidates = max(parameters.n, parameters.bestOf)
        var children: [GenerateRequest] = []
        var echoTexts: [String?] = []
        var firstOfPrompt: [Bool] = []
        for (p, prompt) in prompts.enumerated() {
            for index in 0..<candidates {
                var child = request
                child.requestID = "\(index)_\(request.requestID)" + (prompts.count > 1 ? "-\(p)" : "")
                child.sampling.seed = request.sampling.seed.map { $0 &+ UInt64(index) }
                if candidates > parameters.n, child.sampling.logprobs == nil { child.sampling.logprobs = 0 }
                switch prompt {
                case .text(let text):
                    (child.promptText, child.promptTokens) = (text, [])
                    echoTexts.append(text)
                case .tokens(let tokens):
                    (child.promptText, child.promptTokens) = ("", tokens)
                    echoTexts.append(nil)
                case .messages:
                    echoTexts.append(nil)
                }
                firstOfPrompt.append(index == 0)
                children.append(child)
            }
        }
        var iterators: [SequentialIterator<GenerateChunk>] = []
        var firsts: [GenerateChunk?] = []
        let watch = Self.abortWhenClientGone(channel, children.map(\.requestID), on: engine, logger: logger)
        defer { watch.cancel() }
        do {
            // Every child is in the engine before any first token is awaited: their prompts
            // are computed together (and copied from each other), not one after another.
            for child in children {
                let stream: AsyncThrowingStream<GenerateChunk, any Error>
                do {
                    stream = try await engine.generate(child)
                } catch {
                    throw APIError(error)
                }
                iterators.append(SequentialIterator(stream.makeAsyncIterator()))
            }
            for iterator in iterators {
                do {
                    firsts.append(try await iterator.next())
                } catch {
                    throw Self.apiError(error)
                }
            }
        } catch {
            for (child, iterator) in zip(children, iterators) {
                iterator.cancel()
                await engine.abort(requestID: child.requestID)
            }
            throw error
        }
        record?.firstToken()
        let ids = children.map(\.requestID)
        if parameters.stream {
            return Self.streamChoices(
                firsts: firsts, iterators: iterators, shape: shape, includeUsage: parameters.includeUsage,
                echo: parameters.echo ? echoTexts : nil, firstOfPrompt: firstOfPrompt, engine: engine, requestIDs: ids,
                record: record, logger: logger)
        }
        var outputs = try await withThrowingTaskGroup(of: (Int, ChoiceOutput).self) { group in
            for (index, iterator) in iterators.enumerated() {
                let first = firsts[index]
                let echoText = echoTexts[index]
                group.addTask {
                    var output = ChoiceOutput()
                    var next = first
                    var echoed = false
                    while let chunk = next {
                        record?.output(tokens: chunk.tokens.count, finishReason: chunk.finishReason)
                        if parameters.echo && !echoed {
                            echoed = true
                            output.text += shape.echoed(chunk.promptLogprobs, text: echoText)
                            if shape.logprobs != nil { output.logprobs += chunk.promptLogprobs }
                        }
                        output.text += chunk.text
                        output.tokens += chunk.tokens
                        output.logprobs += chunk.logprobs
                        output.cumulativeLogprob += chunk.logprobs.reduce(0) { $0 + Double($1.chosen.logprob) }
                        if !chunk.finishReason.isEmpty {
                            output.finishReason = chunk.finishReason
                            output.stopReason = chunk.stopReason
                        }
                        if let usage = chunk.usage { output.usage = usage }
                        do {
                            next = try await iterator.next()
                        } catch {
                            throw Self.apiError(error)
                        }
                    }
                    return (index, output)
                }
            }
            var outputs = [ChoiceOutput](repeating: ChoiceOutput(), count: iterators.count)
            for try await (index, output) in group { outputs[index] = output }
            return outputs
        }
        // Prompt (and cached) tokens once per prompt, from the candidate that computed it.
        let promptTokens = zip(outputs, firstOfPrompt).reduce(0) { $0 + ($1.1 ? $1.0.usage?.promptTokens ?? 0 : 0) }
        let cachedTokens = zip(outputs, firstOfPrompt).reduce(0) { $0 + ($1.1 ? $1.0.usage?.cachedPromptTokens ?? 0 : 0) }
        func completionTokens(_ outputs: [ChoiceOutput]) -> UInt32 {
            outputs.reduce(0) { $0 + ($1.usage?.completionTokens ?? UInt32($1.tokens.count)) }
        }
        // Metrics count every candidate generated (the work done); the answer's usage
        // counts the choices returned, as vLLM V0's did.
        record?.tokens(prompt: promptTokens, completion: completionTokens(outputs), cached: cachedTokens)
        if candidates > parameters.n {
            outputs = Self.best(outputs, of: candidates, keeping: parameters.n)
        }
        let usage = Usage(promptTokens: promptTokens, completionTokens: completionTokens(outputs), cachedPromptTokens: cachedTokens)
        return .json(.ok, shape.final(outputs, usage: usage))
    }

    /// best_of: of each prompt's `candidates` outputs (in order), the `n` with the highest
    /// cumulative log probability of their generated tokens, best first (vLLM V0's
    /// `SequenceGroup` ranking; ties keep generation order).
    static func best(_ outputs: [ChoiceOutput], of candidates: Int, keeping n: Int) -> [ChoiceOutput] {
        stride(from: 0, to: outputs.count, by: candidates).flatMap { start in
            outputs[start..<min(start + candidates, outputs.count)].enumerated()
                .sorted { a, b in
                    a.element.cumulativeLogprob != b.element.cumulativeLogprob
                        ? a.element.cumulativeLogprob > b.element.cumulativeLogprob : a.offset < b.offset
                }
                .prefix(n).map(\.element)
        }
    }

    /// The SSE answer of `n` > 1 choices: every choice's chunks as they come, each with its
    /// `index` (OpenAI's interleaving), one finish chunk per choice, then usage and `[DONE]`.
    private static func streamChoices(
        firsts: [GenerateChunk?], iterators: [SequentialIterator<GenerateChunk>], shape: ResponseShape,
        includeUsage: Bool, echo echoTexts: [String?]?, firstOfPrompt: [Bool], engine: any GenerationBackend,
        requestIDs: [String], record: RequestRecord?, logger: Logger
    ) -> Reply {
        var headers = HTTPFields()
        headers[.contentType] = "text/event-stream"
        headers[.cacheControl] = "no-cache"
        let body = ResponseBody { writer in
            let (events, continuation) = AsyncStream.makeStream(of: (Int, GenerateChunk?, (any Error)?).self)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (index, iterator) in iterators.enumerated() {
                    let first = firsts[index]
                    group.addTask {
                        var next = first
                        while let chunk = next {
                            continuation.yield((index, chunk, nil))
                            do {
                                next = try await iterator.next()
                            } catch {
                                continuation.yield((index, nil, error))
                                next = nil
                            }
                        }
                        continuation.yield((index, nil, nil))
                    }
                }
                var offsets = [Int](repeating: 0, count: iterators.count)
                var echoPending = [Bool](repeating: echoTexts != nil, count: iterators.count)
                var usages = [Usage?](repeating: nil, count: iterators.count)
                var counted = [UInt32](repeating: 0, count: iterators.count)
                var running = iterators.count
                do {
                    if shape.route == .chatCompletions {
                        for index in iterators.indices { try await writer.write(Self.event(shape.roleChunk(index: index))) }
                    }
                    for await (index, chunk, error) in events {
                        if let error {
                            logger.warning("generation failed mid-stream", metadata: ["error": "\(error)"])
                            try await writer.write(Self.event(Self.apiError(error).json))
                            continue
                        }
                        guard let chunk else {
                            running -= 1
                            if running == 0 { break }
                            continue
                        }
                        record?.output(tokens: chunk.tokens.count, finishReason: chunk.finishReason)
                        counted[index] += UInt32(chunk.tokens.count)
                        if let usage = chunk.usage { usages[index] = usage }
                        if echoPending[index] {
                            echoPending[index] = false
                            try await writer.write(
                                Self.event(
                                    shape.delta(
                                        text: shape.echoed(chunk.promptLogprobs, text: echoTexts?[index] ?? nil),
                                        tokens: [], logprobs: shape.logprobs != nil ? chunk.promptLogprobs : [],
                                        textOffset: &offsets[index], index: index)))
                        }
                        if !chunk.text.isEmpty || !chunk.tokens.isEmpty {
                            try await writer.write(
                                Self.event(
                                    shape.delta(
                                        text: chunk.text, tokens: chunk.tokens, logprobs: chunk.logprobs,
                                        textOffset: &offsets[index], index: index)))
                        }
                        if !chunk.finishReason.isEmpty {
                            try await writer.write(
                                Self.event(shape.finish(chunk.finishReason, stopReason: chunk.stopReason, index: index)))
                        }
                    }
                } catch {
                    // The client went away: stop every choice in the engine, then let the
                    // readers finish.
                    logger.info("client disconnected mid-stream; aborting the engine requests")
                    for id in requestIDs { await engine.abort(requestID: id) }
                    group.cancelAll()
                    throw error
                }
                let usage = Usage(
                    promptTokens: zip(usages, firstOfPrompt).reduce(0) { $0 + ($1.1 ? $1.0?.promptTokens ?? 0 : 0) },
                    completionTokens: zip(usages, counted).reduce(0) { $0 + ($1.0?.completionTokens ?? $1.1) },
                    cachedPromptTokens: zip(usages, firstOfPrompt).reduce(0) { $0 + ($1.1 ? $1.0?.cachedPromptTokens ?? 0 : 0) })
                record?.tokens(prompt: usage.promptTokens, completion: usage.completionTokens, cached: usage.cachedPromptTokens)
                if includeUsage { try await writer.write(Self.event(shape.usageChunk(usage))) }
                try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                try await writer.finish(nil)
            }
        }
        return Reply(status: .ok, headers: headers, body: body)
    }

    private static func apiError(_ error: any Error) -> APIError {
        if let status = error as? Status { return APIError(status) }
        if let apiError = error as? APIError { return apiError }
        return APIError.serverError("generation failed: \(error)")
    }

    private static func streamReply(
        first: GenerateChunk?, iterator: SequentialIterator<GenerateChunk>, shape: ResponseShape, includeUsage: Bool,
        echo: Bool,
        engine: any GenerationBackend, requestID: String, record: RequestRecord?, logger: Logger
    ) -> Reply {
        var headers = HTTPFields()
        headers[.contentType] = "text/event-stream"
        headers[.cacheControl] = "no-cache"
        let body = ResponseBody { writer in
            var usage: Usage?
            var completionTokens: UInt32 = 0
            var finished = false
            var textOffset = 0
            var echoPending = echo
            do {
                if shape.route == .chatCompletions {
                    try await writer.write(Self.event(shape.roleChunk()))
                }
                var next = first
                while let chunk = next {
                    record?.output(tokens: chunk.tokens.count, finishReason: chunk.finishReason)
                    completionTokens += UInt32(chunk.tokens.count)
                    if let chunkUsage = chunk.usage { usage = chunkUsage }
                    if echoPending {
                        echoPending = false
                        let prompt = shape.logprobs != nil ? chunk.promptLogprobs : []
                        try await writer.write(
                            Self.event(
                                shape.delta(
                                    text: shape.echoed(chunk.promptLogprobs), tokens: [], logprobs: prompt,
                                    textOffset: &textOffset)))
                    }
                    if !chunk.text.isEmpty || !chunk.tokens.isEmpty {
                        try await writer.write(
                            Self.event(
                                shape.delta(
                                    text: chunk.text, tokens: chunk.tokens, logprobs: chunk.logprobs, textOffset: &textOffset)))
                    }
                    if !chunk.finishReason.isEmpty {
                        finished = true
                        try await writer.write(Self.event(shape.finish(chunk.finishReason, stopReason: chunk.stopReason)))
                    }
                    do {
                        next = try await iterator.next()
                    } catch {
                        // The engine failed mid-stream: report it in the stream, as vLLM does.
                        logger.warning("generation failed mid-stream", metadata: ["error": "\(error)"])
                        try await writer.write(Self.event(Self.apiError(error).json))
                        next = nil
                    }
                }
                let counted = usage ?? Usage(promptTokens: 0, completionTokens: completionTokens)
                record?.tokens(prompt: counted.promptTokens, completion: counted.completionTokens, cached: counted.cachedPromptTokens)
                if includeUsage {
                    try await writer.write(Self.event(shape.usageChunk(counted)))
                }
                try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                try await writer.finish(nil)
            } catch {
                // A throwing write: the client went away. Stop the work in the engine.
                if !finished {
                    logger.info("client disconnected mid-stream; aborting the engine request")
                    iterator.cancel()
                    await engine.abort(requestID: requestID)
                }
                throw error
            }
        }
        return Reply(status: .ok, headers: headers, body: body)
    }

    private static func event(_ value: JSONValue) -> ByteBuffer {
        var writer = JSONWriter(reservingCapacity: 256)
        writer.write(value)
        var buffer = ByteBuffer()
        buffer.reserveCapacity(writer.bytes.count + 8)
        buffer.writeString("data: ")
        buffer.writeBytes(writer.bytes)
        buffer.writeString("\n\n")
        return buffer
    }
}

/// What one choice produced, for the non-streamed answer.
struct ChoiceOutput: Sendable {
    var text = ""
    var tokens: [UInt32] = []
    var logprobs: [PositionLogprobs] = []
    /// The sum of the generated tokens' log probabilities (best_of's ranking).
    var cumulativeLogprob = 0.0
    var finishReason = ""
    /// vLLM's `stop_reason` (the stop string or stop token id; nil for EOS and others).
    var stopReason: GenerateChunk.StopReason?
    var usage: Usage?
}

/// The JSON shapes of completion and chat completion responses and chunks (OpenAI's, as
/// vLLM serves them; `token_ids` only with vLLM's `return_token_ids`).
struct ResponseShape: Sendable {
    var route: GenerationRoute
    var id: String
    var created: Int64
    var model: String
    var returnTokenIDs: Bool
    /// `prompt_tokens_details.cached_tokens` in usage when some were cached (vLLM's
    /// `--enable-prompt-tokens-details`).
    var promptTokensDetails = false
    /// Alternatives per token when the request asked for log probabilities.
    var logprobs: Int?
    /// Completions `echo` of a text prompt: the prompt as given (a token prompt is echoed
    /// as its tokens' text).
    var echoText: String?

    private var object: String { self.route == .completions ? "text_completion" : "chat.completion" }
    private var chunkObject: String { self.route == .completions ? "text_completion" : "chat.completion.chunk" }

    private func envelope(_ object: String, choices: [JSONValue], usage: Usage? = nil) -> JSONValue {
        var members: [(String, JSONValue)] = [
            ("id", .string(self.id)), ("object", .string(object)), ("created", .int(self.created)),
            ("model", .string(self.model)), ("choices", .array(choices)),
        ]
        if let usage { members.append(("usage", Self.usage(usage, details: self.promptTokensDetails))) }
        return .object(members)
    }

    /// OpenAI's usage object; with `details`, vLLM adds `prompt_tokens_details` only when
    /// some prompt tokens were cached.
    static func usage(_ usage: Usage, details: Bool) -> JSONValue {
        var members: [(String, JSONValue)] = [
            ("prompt_tokens", .int(Int64(usage.promptTokens))),
            ("completion_tokens", .int(Int64(usage.completionTokens))),
            ("total_tokens", .int(Int64(usage.promptTokens) + Int64(usage.completionTokens))),
        ]
        if details && usage.cachedPromptTokens > 0 {
            members.append(("prompt_tokens_details", .object([("cached_tokens", .int(Int64(usage.cachedPromptTokens)))])))
        }
        return .object(members)
    }

    private func tokenMember(_ tokens: [UInt32]) -> [(String, JSONValue)] {
        self.returnTokenIDs ? [("token_ids", .array(tokens.map { .int(Int64($0)) }))] : []
    }

    private static func finishValue(_ reason: String?) -> JSONValue { reason.map { .string($0) } ?? .null }

    /// The echoed prompt: the prompt text, or its tokens' text (from the prompt log
    /// probabilities the engine sends for an echo).
    func echoed(_ prompt: [PositionLogprobs]) -> String {
        self.echoed(prompt, text: self.echoText)
    }

    /// The echoed prompt of one choice: `text` (a text prompt as given) or its tokens' text.
    func echoed(_ prompt: [PositionLogprobs], text: String?) -> String {
        text ?? prompt.map(\.chosen.token).joined()
    }

    /// A log probability as JSON: vLLM's floor of −9999 for −∞.
    private static func logprobValue(_ value: Float) -> JSONValue {
        .double(max(Double(value), -9999.0))
    }

    /// The choice's `logprobs` for `positions`: OpenAI's completions shape (`tokens`,
    /// `token_logprobs`, `top_logprobs` with the chosen token added when it is not among
    /// the top, `text_offset` in code points from `textOffset`) or chat's (`content`: token,
    /// logprob, bytes, top_logprobs); null when the request did not ask.
    func logprobsValue(_ positions: [PositionLogprobs], textOffset: inout Int) -> JSONValue {
        guard let topN = self.logprobs else { return .null }
        switch self.route {
        case .completions:
            var tokens: [JSONValue] = []
            var values: [JSONValue] = []
            var tops: [JSONValue] = []
            var offsets: [JSONValue] = []
            for position in positions {
                tokens.append(.string(position.chosen.token))
                offsets.append(.int(Int64(textOffset)))
                textOffset += position.chosen.token.unicodeScalars.count
                if position.noLogprob {
                    values.append(.null)
                    tops.append(.null)
                    continue
                }
                values.append(Self.logprobValue(position.chosen.logprob))
                var members: [(String, JSONValue)] = []
                for entry in position.top.prefix(topN) where !members.contains(where: { $0.0 == entry.token }) {
                    members.append((entry.token, Self.logprobValue(entry.logprob)))
                }
                if !members.contains(where: { $0.0 == position.chosen.token }) {
                    members.append((position.chosen.token, Self.logprobValue(position.chosen.logprob)))
                }
                tops.append(.object(members))
            }
            return .object([
                ("text_offset", .array(offsets)), ("token_logprobs", .array(values)), ("tokens", .array(tokens)),
                ("top_logprobs", .array(tops)),
            ])
        case .chatCompletions:
            func entry(_ e: TokenLogprob) -> [(String, JSONValue)] {
                [
                    ("token", .string(e.token)), ("logprob", Self.logprobValue(e.logprob)),
                    ("bytes", .array(e.token.utf8.map { .int(Int64($0)) })),
                ]
            }
            let content: [JSONValue] = positions.map { position in
                .object(
                    entry(position.chosen) + [("top_logprobs", .array(position.top.prefix(topN).map { .object(entry($0)) }))])
            }
            return .object([("content", .array(content))])
        }
    }

    /// vLLM's `stop_reason`: the stop string, the stop token id, or null.
    static func stopReasonValue(_ reason: GenerateChunk.StopReason?) -> JSONValue {
        switch reason {
        case .string(let text): .string(text)
        case .token(let id): .int(Int64(id))
        case nil: .null
        }
    }

    /// The non-streamed answer with one choice per output, indexed in order.
    func final(_ outputs: [ChoiceOutput], usage: Usage) -> JSONValue {
        let choices = outputs.enumerated().map { index, output -> JSONValue in
            let reason = output.finishReason.isEmpty ? "stop" : output.finishReason
            var offset = 0
            let logprobsValue = self.logprobsValue(output.logprobs, textOffset: &offset)
            switch self.route {
            case .completions:
                return .object(
                    [
                        ("index", .int(Int64(index))), ("text", .string(output.text)), ("logprobs", logprobsValue),
                        ("finish_reason", .string(reason)), ("stop_reason", Self.stopReasonValue(output.stopReason)),
                    ] + self.tokenMember(output.tokens))
            case .chatCompletions:
                return .object(
                    [
                        ("index", .int(Int64(index))),
                        ("message", .object([("role", .string("assistant")), ("content", .string(output.text))])),
                        ("logprobs", logprobsValue), ("finish_reason", .string(reason)),
                        ("stop_reason", Self.stopReasonValue(output.stopReason)),
                    ] + self.tokenMember(output.tokens))
            }
        }
        return self.envelope(self.object, choices: choices, usage: usage)
    }

    func roleChunk(index: Int = 0) -> JSONValue {
        let choice: JSONValue = .object([
            ("index", .int(Int64(index))), ("delta", .object([("role", .string("assistant")), ("content", .string(""))])),
            ("logprobs", .null), ("finish_reason", .null),
        ])
        return self.envelope(self.chunkObject, choices: [choice])
    }

    func delta(
        text: String, tokens: [UInt32], logprobs: [PositionLogprobs] = [], textOffset: inout Int, index: Int = 0
    ) -> JSONValue {
        let logprobsValue = self.logprobsValue(logprobs, textOffset: &textOffset)
        let choice: JSONValue
        switch self.route {
        case .completions:
            choice = .object(
                [("index", .int(Int64(index))), ("text", .string(text)), ("logprobs", logprobsValue), ("finish_reason", .null)]
                    + self.tokenMember(tokens))
        case .chatCompletions:
            choice = .object(
                [
                    ("index", .int(Int64(index))), ("delta", .object([("content", .string(text))])), ("logprobs", logprobsValue),
                    ("finish_reason", .null),
                ] + self.tokenMember(tokens))
        }
        return self.envelope(self.chunkObject, choices: [choice])
    }

    func finish(_ reason: String, stopReason: GenerateChunk.StopReason? = nil, index: Int = 0) -> JSONValue {
        let choice: JSONValue
        let stop = Self.stopReasonValue(stopReason)
        switch self.route {
        case .completions:
            choice = .object([
                ("index", .int(Int64(index))), ("text", .string("")), ("logprobs", .null), ("finish_reason", .string(reason)),
                ("stop_reason", stop),
            ])
        case .chatCompletions:
            choice = .object([
                ("index", .int(Int64(index))), ("delta", .object([])), ("logprobs", .null), ("finish_reason", .string(reason)),
                ("stop_reason", stop),
            ])
        }
        return self.envelope(self.chunkObject, choices: [choice])
    }

    func usageChunk(_ usage: Usage) -> JSONValue {
        self.envelope(self.chunkObject, choices: [], usage: usage)
    }
}
