import HTTPTypes
package import Logging
import LorikeetJSON
import LorikeetLimits
package import LorikeetProto
package import LorikeetWorker
import NIOCore
import NIOHTTP1
import ServiceLifecycle
import Synchronization

/// A replica's 2xx answer as the routes read it (`ForwardedResponse`): its body still
/// arriving from the replica, with back pressure. Reading it to the end, a failure, or
/// `cancel()` releases the replica's outstanding-request slot, once.
final class UpstreamForwardedResponse: ForwardedResponse {
    let status: Int
    let contentType: String
    let replica: String
    private let response: UpstreamResponse
    private let bodyLimit: Int
    private let released = Atomic<Bool>(false)
    private let onRelease: @Sendable () -> Void

    init(response: UpstreamResponse, replica: String, bodyLimit: Int, onRelease: @escaping @Sendable () -> Void) {
        self.status = response.status
        self.contentType = response.header("Content-Type") ?? "application/json"
        self.replica = replica
        self.response = response
        self.bodyLimit = bodyLimit
        self.onRelease = onRelease
    }

    func next() async throws(APIError) -> ByteBuffer? {
        do {
            let chunk = try await self.response.body.next()
            if chunk == nil { self.release() }
            return chunk
        } catch {
            self.release()
            throw self.failure(error)
        }
    }

    func collect() async throws(APIError) -> ByteBuffer {
        defer { self.release() }
        do {
            return try await self.response.collect(limit: self.bodyLimit)
        } catch {
            throw self.failure(error)
        }
    }

    func cancel() {
        self.response.body.cancel()
        self.release()
    }

    private func release() {
        if !self.released.exchange(true, ordering: .acquiringAndReleasing) { self.onRelease() }
    }

    private func failure(_ error: UpstreamError) -> APIError {
        if case .bodyTooLarge(let limit) = error {
            return APIError(
                status: .badGateway, kind: .serverError,
                message:
                    "upstream \(self.replica) answered a body larger than \(limit) bytes, more than this server buffers; "
                    + "ask for a smaller answer or stream it ('stream': true).",
                code: "upstream_response_too_large")
        }
        return APIError(status: .badGateway, kind: .serverError, message: "upstream \(self.replica) failed mid-response: \(error)")
    }
}

/// Settings of the upstream backend.
package struct UpstreamConfiguration: Sendable {
    package var endpoints: [UpstreamEndpoint]
    package var kind: UpstreamKind
    /// Bearer token the replicas require (vLLM `--api-key`), if any.
    package var apiKey: String?
    /// How often every worker lists each healthy replica's models (`/v1/models`) to learn
    /// which adapters it holds.
    package var pollInterval: Duration
    /// First and longest delay between `/health` probes of a replica out of rotation.
    package var probeInterval: Duration
    package var maxProbeInterval: Duration
    /// A generation's response head must arrive within this time (non-streaming
    /// responses come at the end of the generation).
    package var generationTimeout: Duration
    /// Deadline of load / unload calls on a replica (loading weights takes time).
    package var mutationTimeout: Duration
    /// Deadline of `/health` and `/v1/models` calls.
    package var probeTimeout: Duration
    /// Largest body read whole from a replica: a non-streamed answer, or `/v1/models`
    /// (`Limits.upstreamBodyBytes`; larger is a 502).
    package var maxBufferedBodyBytes: Int

    package init(
        endpoints: [UpstreamEndpoint], kind: UpstreamKind = .vllm, apiKey: String? = nil,
        pollInterval: Duration = .seconds(1), probeInterval: Duration = .milliseconds(250),
        maxProbeInterval: Duration = .seconds(5), generationTimeout: Duration = .seconds(600),
        mutationTimeout: Duration = .seconds(120), probeTimeout: Duration = .seconds(3),
        maxBufferedBodyBytes: Int = Limits.upstreamBodyBytes
    ) {
        self.maxBufferedBodyBytes = maxBufferedBodyBytes
        self.endpoints = endpoints
        self.kind = kind
        self.apiKey = apiKey
        self.pollInterval = pollInterval
        self.probeInterval = probeInterval
        self.maxProbeInterval = maxProbeInterval
        self.generationTimeout = generationTimeout
        self.mutationTimeout = mutationTimeout
        self.probeTimeout = probeTimeout
    }
}

/// One upstream replica as this process sees it.
final class UpstreamReplica: Sendable {
    struct State {
        var healthy = true
        var probing = false
        var outstanding = 0
        /// The replica's own base-model name (from `/v1/models`), once known.
        var baseModel: String?
        /// Committed adapters the replica was seen without: no adapter traffic for them
        /// until it lists them again (a restarted replica comes back empty).
        var missing: Set<String> = []
        /// Adapters the last listing showed (name -> path).
        var held: [String: String] = [:]
        var served: UInt64 = 0
        /// Committed adapters this replica refused during reconciliation, retried with backoff.
        var refusals = ReconcileBackoff()
    }

    let client: UpstreamHTTPClient
    let state = Mutex(State())
    var name: String { self.client.endpoint.description }

    init(client: UpstreamHTTPClient) { self.client = client }
}

/// The engine of an upstream-mode worker: vLLM / SGLang replicas (`--upstream URL`,
/// repeatable), as a `PassthroughBackend` (generations), a `ReplicatedAdapterHost`
/// (adapters) and a `Service` (connection pools, listing and probing).
///
/// - Requests: least outstanding requests over healthy replicas (ties rotate), the
///   client's JSON forwarded with `model` rewritten to the replica's naming, the answer
///   streamed back chunk by chunk. A replica that cannot be reached is taken out of
///   rotation (the request moves to another) and probed on `/health` until it answers.
/// - Adapters (leader): loads and unloads fan out to every healthy replica; a load
///   commits only when all accepted, otherwise the ones that did are rolled back and the
///   error names the replica that refused.
/// - Reconciliation (leader): each replica's `/v1/models` against the committed table;
///   missing adapters re-added, stray ones removed. Every worker also lists the replicas
///   and keeps adapter traffic off a replica that lacks the adapter.
/// - Lifecycle: `run()` runs each replica's connection pool, the listing every
///   `pollInterval` and the `/health` probes of replicas out of rotation, as child tasks,
///   until its task is cancelled (the worker does that after its HTTP server stopped).
package final class UpstreamBackend: PassthroughBackend, ReplicatedAdapterHost, Service {
    package let configuration: UpstreamConfiguration
    let replicas: [UpstreamReplica]
    private let table: AdapterTableReplica
    private let logger: Logger
    private let rotation = Atomic<Int>(0)
    /// Adapter names by our `lora_int_id` (RemoveAdapterRequest carries only the id).
    private let names = Mutex<[UInt64: String]>([:])
    /// Replicas (indices) newly out of rotation, for `run()` to probe.
    private let probeRequests: AsyncStream<Int>
    private let probeSink: AsyncStream<Int>.Continuation
    private let recovered = Mutex<(@Sendable (String) -> Void)?>(nil)
    private let driftRepairs = Atomic<UInt64>(0)
    /// One reconciliation at a time (`reconcile(with:asDrift:)`).
    private let reconciling = AsyncSerializer()
    /// Adapter loads and unloads reconciliation made on replicas since start (drift repaired).
    package var driftRepairCount: UInt64 { self.driftRepairs.load(ordering: .relaxed) }

    package init(configuration: UpstreamConfiguration, table: AdapterTableReplica, logger: Logger) {
        self.configuration = configuration
        self.replicas = configuration.endpoints.map { UpstreamReplica(client: UpstreamHTTPClient(endpoint: $0)) }
        self.table = table
        var logger = logger
        logger[metadataKey: "upstream.kind"] = "\(configuration.kind.rawValue)"
        self.logger = logger
        (self.probeRequests, self.probeSink) = AsyncStream.makeStream(of: Int.self)
    }

    /// The worker engine of `configuration`: this backend serves generations, hosts the
    /// adapters and runs in the background.
    package static func workerEngine(_ configuration: UpstreamConfiguration) -> WorkerEngineFactory {
        { table, logger in
            let backend = UpstreamBackend(configuration: configuration, table: table, logger: logger)
            return WorkerEngine(generations: .passthrough(backend), adapters: .replicas(backend), background: backend)
        }
    }

    /// Runs the connection pools, lists the replicas every `pollInterval` and probes the
    /// ones out of rotation, until this task is cancelled.
    package func run() async {
        await withDiscardingTaskGroup { group in
            for replica in self.replicas {
                group.addTask { await replica.client.run() }
            }
            group.addTask {
                while !Task.isCancelled {
                    await self.pollAll()
                    try? await Task.sleep(for: self.configuration.pollInterval)
                }
            }
            for await index in self.probeRequests {
                let replica = self.replicas[index]
                group.addTask { await self.probe(replica) }
            }
            // Cancelled: the children are cancelled with this task.
        }
    }

    package var reconcileInterval: Duration { self.configuration.pollInterval }

    /// Called (with the replica's URL) when a replica comes back into rotation; the
    /// leader reconciles it at once.
    package func onReplicaRecovered(_ handler: @escaping @Sendable (String) -> Void) {
        self.recovered.withLock { $0 = handler }
    }

    /// Per-replica state for status reports and tests.
    package func replicaStatuses() -> [UpstreamReplicaStatus] {
        self.replicas.map { replica in
            replica.state.withLock {
                UpstreamReplicaStatus(
                    url: replica.name, healthy: $0.healthy, outstanding: $0.outstanding, served: $0.served,
                    missing: $0.missing.sorted())
            }
        }
    }

    private var authHeaders: [(String, String)] {
        guard let key = self.configuration.apiKey, !key.isEmpty else { return [] }
        return [("Authorization", "Bearer \(key)")]
    }

    // MARK: Forwarding

    package func forward(_ request: ForwardedRequest) async throws(APIError) -> any ForwardedResponse {
        var tried: Set<ObjectIdentifier> = []
        var lastError: APIError?
        while let replica = self.pick(adapter: request.adapter?.name, excluding: tried) {
            tried.insert(ObjectIdentifier(replica))
            let (model, body) = self.upstreamBody(request, on: replica)
            var logger = self.logger
            logger[metadataKey: "request.id"] = "\(request.requestID)"
            logger[metadataKey: "upstream"] = "\(replica.name)"
            let response: UpstreamResponse
            do {
                let method = HTTPMethod(rawValue: request.method)
                let hasBody = !body.isEmpty || (method != .GET && method != .HEAD && method != .DELETE)
                response = try await replica.client.execute(
                    method: method, path: request.path,
                    headers: (request.contentType.map { [("Content-Type", $0)] } ?? []) + [("X-Request-Id", request.requestID)]
                        + self.authHeaders,
                    body: hasBody ? ByteBuffer(bytes: body) : nil, headTimeout: self.configuration.generationTimeout)
            } catch {
                self.release(replica)
                switch error {
                case .connect, .transport(_, sent: false):
                    // Nothing reached the replica: out of rotation, try the next one.
                    self.markUnhealthy(replica, reason: "\(error)")
                    lastError = APIError(Status(code: .unavailable, message: "upstream \(replica.name) is unreachable"))
                    continue
                case .timeout:
                    throw APIError(
                        status: .gatewayTimeout, kind: .serverError,
                        message: "upstream \(replica.name) did not answer within \(self.configuration.generationTimeout)")
                case .transport, .bodyTooLarge:
                    self.markUnhealthy(replica, reason: "\(error)")
                    throw APIError(status: .badGateway, kind: .serverError, message: "upstream \(replica.name) failed: \(error)")
                case .cancelled:
                    throw APIError(status: .badGateway, kind: .serverError, message: "upstream \(replica.name): \(error)")
                }
            }
            if (200..<300).contains(response.status) {
                replica.state.withLock { $0.served += 1 }
                return UpstreamForwardedResponse(
                    response: response, replica: replica.name, bodyLimit: self.configuration.maxBufferedBodyBytes
                ) { [weak self] in self?.release(replica) }
            }
            let errorBody = (try? await response.collect(limit: 1 << 20)) ?? ByteBuffer()
            self.release(replica)
            let mapped = Self.mapError(status: response.status, body: errorBody, replica: replica.name)
            if response.status == 404, let adapter = request.adapter {
                // The replica lacks a committed adapter (it restarted): keep adapter traffic
                // off it until reconciliation re-adds it, and try another replica.
                replica.state.withLock { _ = $0.missing.insert(adapter.name) }
                logger.notice(
                    "replica lacks a committed adapter; rerouting", metadata: ["adapter.name": "\(adapter.name)", "model": "\(model)"])
                lastError = APIError(
                    Status(
                        code: .unavailable,
                        message: "The adapter '\(adapter.name)' is being restored on the upstream replicas; retry shortly."))
                continue
            }
            if response.status >= 500 { logger.warning("upstream error", metadata: ["http.status": "\(response.status)"]) }
            throw mapped
        }
        if let lastError { throw lastError }
        if let adapter = request.adapter, self.replicas.contains(where: { $0.state.withLock { $0.healthy } }) {
            throw APIError(
                Status(
                    code: .unavailable, message: "The adapter '\(adapter.name)' is being restored on the upstream replicas; retry shortly.")
            )
        }
        throw APIError(Status(code: .unavailable, message: "No upstream replica is available."))
    }

    /// Least outstanding requests among healthy replicas (holding the adapter, if one is
    /// asked for); ties go round-robin. Takes an outstanding slot on the chosen replica.
    private func pick(adapter: String?, excluding tried: Set<ObjectIdentifier>) -> UpstreamReplica? {
        let count = self.replicas.count
        guard count > 0 else { return nil }
        let start = self.rotation.wrappingAdd(1, ordering: .relaxed).oldValue
        var best: (replica: UpstreamReplica, load: Int)?
        for offset in 0..<count {
            let replica = self.replicas[(start &+ offset) % count]
            if tried.contains(ObjectIdentifier(replica)) { continue }
            let load = replica.state.withLock { state -> Int? in
                guard state.healthy else { return nil }
                if let adapter, state.missing.contains(adapter) { return nil }
                return state.outstanding
            }
            guard let load else { continue }
            if best == nil || load < best!.load { best = (replica, load) }
        }
        guard let chosen = best?.replica else { return nil }
        chosen.state.withLock { $0.outstanding += 1 }
        return chosen
    }

    private func release(_ replica: UpstreamReplica) {
        replica.state.withLock { $0.outstanding = max(0, $0.outstanding - 1) }
    }

    /// The body to send: the client's bytes when `model` already has the replica's
    /// naming, else the parsed body re-encoded with `model` rewritten.
    private func upstreamBody(_ request: ForwardedRequest, on replica: UpstreamReplica) -> (String, [UInt8]) {
        let upstreamBase = replica.state.withLock { $0.baseModel } ?? request.baseModel
        let model = self.configuration.kind.modelName(adapter: request.adapter?.name, base: upstreamBase)
        guard request.rewritesModel else { return (model, request.body) }
        if case .string(let sent)? = request.json["model"], sent == model { return (model, request.body) }
        guard case .object(var members) = request.json else { return (model, request.body) }
        if let index = members.firstIndex(where: { $0.0 == "model" }) {
            members[index].1 = .string(model)
        } else {
            members.insert(("model", .string(model)), at: 0)
        }
        return (model, JSONWriter.encode(.object(members)))
    }

    /// A replica's error answer as our envelope: its message (vLLM's `{"error": {...}}`,
    /// its older `{"object": "error", "message", ...}`, FastAPI's `{"detail"}`, or the
    /// text), with its 4xx status kept (422 becomes 400), 429 / 503 kept, and other 5xx
    /// answered as 502 naming the replica.
    static func mapError(status: Int, body: ByteBuffer, replica: String) -> APIError {
        var message = String(String(buffer: body).drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
        var type: String?
        var param: String?
        var code: String?
        if let json = try? JSONParser.parse(Array(body.readableBytesView)) {
            let error: JSONValue =
                json["error"].flatMap { value -> JSONValue? in
                    if case .object = value { return value }
                    return nil
                } ?? json
            if case .string(let text)? = error["message"] {
                message = text
            } else if case .string(let text)? = error["error"] {
                message = text
            } else if let detail = json["detail"] {
                if case .string(let text) = detail {
                    message = text
                } else {
                    message = String(decoding: JSONWriter.encode(detail), as: UTF8.self)
                }
            }
            if case .string(let text)? = error["type"] { type = text }
            if case .string(let text)? = error["param"] { param = text }
            switch error["code"] {
            case .string(let text)?: code = text
            default: break
            }
        }
        if message.isEmpty { message = "upstream answered \(status)" }
        if message.count > 2000 { message = String(message.prefix(2000)) + "..." }
        switch status {
        case 400..<500:
            let httpStatus = HTTPResponse.Status(code: status == 422 ? 400 : status)
            let kind: APIError.Kind =
                type.map { APIError.Kind(rawValue: $0) }
                ?? (status == 401 ? .authentication : .invalidRequest)
            return APIError(status: httpStatus, kind: kind, message: message, param: param, code: code)
        case 503, 429:
            return APIError(status: HTTPResponse.Status(code: status), kind: .serverError, message: message, param: param, code: code)
        default:
            return APIError(
                status: .badGateway, kind: .serverError, message: "upstream \(replica) failed (\(status)): \(message)", param: param,
                code: code)
        }
    }

    // MARK: Health

    private func markUnhealthy(_ replica: UpstreamReplica, reason: String) {
        let startProbe = replica.state.withLock { state -> Bool in
            state.healthy = false
            guard !state.probing else { return false }
            state.probing = true
            return true
        }
        guard startProbe else { return }
        self.logger.warning("upstream replica out of rotation", metadata: ["upstream": "\(replica.name)", "reason": "\(reason)"])
        replica.client.closeIdleConnections()
        if let index = self.replicas.firstIndex(where: { $0 === replica }) { self.probeSink.yield(index) }
    }

    /// `/health` until it answers 200, backing off; then the replica's adapters are
    /// listed (it only takes traffic for the ones it holds) and it rejoins the rotation.
    private func probe(_ replica: UpstreamReplica) async {
        var delay = self.configuration.probeInterval
        while !Task.isCancelled {
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, self.configuration.maxProbeInterval)
            guard
                let response = try? await replica.client.execute(
                    method: .GET, path: "/health", headers: self.authHeaders, headTimeout: self.configuration.probeTimeout)
            else { continue }
            _ = try? await response.collect(limit: 1 << 16)
            guard response.status == 200 else { continue }
            // Back with nothing loaded until proven otherwise.
            let expected = Set(self.table.snapshot().adapters.map(\.name))
            replica.state.withLock { $0.missing = expected }
            _ = await self.list(replica)
            replica.state.withLock { state in
                state.healthy = true
                state.probing = false
            }
            self.logger.notice("upstream replica back in rotation", metadata: ["upstream": "\(replica.name)"])
            let handler = self.recovered.withLock { $0 }
            handler?(replica.name)
            return
        }
    }

    private func pollAll() async {
        await withTaskGroup(of: Void.self) { group in
            for replica in self.replicas where replica.state.withLock({ $0.healthy }) {
                group.addTask { _ = await self.list(replica) }
            }
        }
    }

    /// One model as a replica's `/v1/models` lists it.
    struct ListedModel: Sendable {
        var id: String
        var root: String?
        var parent: String?
        var maxModelLength: Int64?
    }

    /// Lists a replica's models and updates what it is known to hold; an unreachable
    /// replica leaves the rotation. Nil when the listing failed.
    @discardableResult
    private func list(_ replica: UpstreamReplica) async -> [ListedModel]? {
        // Taken before the listing: an adapter committed while it is in flight must not
        // count as missing (the leader loaded it on every healthy replica before the commit).
        let expected = self.table.snapshot().adapters.map(\.name)
        let models: [ListedModel]
        do {
            models = try await self.models(of: replica)
        } catch {
            if case .connect = error {
                self.markUnhealthy(replica, reason: "\(error)")
            } else if case .transport = error {
                self.markUnhealthy(replica, reason: "\(error)")
            }
            return nil
        }
        let base = models.first { $0.parent == nil }?.id
        var held: [String: String] = [:]
        for model in models where model.parent != nil {
            held[self.adapterName(fromUpstream: model.id, base: base)] = model.root ?? ""
        }
        let missing = Set(expected.filter { held[$0] == nil })
        let (wasMissing, _) = replica.state.withLock { state -> (Set<String>, Void) in
            let before = state.missing
            if let base { state.baseModel = base }
            state.held = held
            state.missing = missing
            return (before, ())
        }
        if wasMissing != missing, !missing.isEmpty {
            self.logger.notice(
                "upstream replica lacks committed adapters; no adapter traffic for them there",
                metadata: ["upstream": "\(replica.name)", "missing": "\(missing.sorted())"])
        }
        return models
    }

    private func adapterName(fromUpstream id: String, base: String?) -> String {
        if self.configuration.kind == .sglang, let base, id.hasPrefix(base + ":") { return String(id.dropFirst(base.count + 1)) }
        return id
    }

    private func models(of replica: UpstreamReplica) async throws(UpstreamError) -> [ListedModel] {
        let response = try await replica.client.execute(
            method: .GET, path: "/v1/models", headers: self.authHeaders, headTimeout: self.configuration.probeTimeout)
        let body = try await response.collect(limit: self.configuration.maxBufferedBodyBytes)
        guard response.status == 200 else {
            throw UpstreamError.transport("/v1/models answered \(response.status)", sent: true)
        }
        guard let json = try? JSONParser.parse(Array(body.readableBytesView)), case .array(let data)? = json["data"] else {
            throw UpstreamError.transport("/v1/models: not a model list", sent: true)
        }
        return data.compactMap { entry in
            guard case .string(let id)? = entry["id"] else { return nil }
            var model = ListedModel(id: id)
            if case .string(let root)? = entry["root"] { model.root = root }
            if case .string(let parent)? = entry["parent"] { model.parent = parent }
            if case .int(let length)? = entry["max_model_len"] { model.maxModelLength = length }
            return model
        }
    }

    private var healthyReplicas: [UpstreamReplica] { self.replicas.filter { $0.state.withLock { $0.healthy } } }

    // MARK: Status and adapter hosting

    /// Healthy when at least one replica is in rotation.
    package func health() async throws(Status) -> HealthReply {
        let healthy = self.healthyReplicas.count
        guard healthy > 0 else { throw Status(code: .unavailable, message: "no upstream replica is reachable") }
        let running = self.replicas.reduce(0) { $0 + $1.state.withLock { $0.outstanding } }
        return HealthReply(status: .ok, runningRequests: UInt32(clamping: running))
    }

    /// The base model of the first replica that answers `/v1/models`.
    package func modelInfo() async throws(Status) -> ModelInfo {
        var failures: [String] = []
        for replica in self.replicas {
            guard let models = await self.list(replica) else {
                failures.append(replica.name)
                continue
            }
            guard let base = models.first(where: { $0.parent == nil }) ?? models.first else {
                failures.append("\(replica.name) (no models)")
                continue
            }
            return ModelInfo(
                modelName: base.id, architecture: "upstream-\(self.configuration.kind.rawValue)",
                contextLength: UInt32(clamping: base.maxModelLength ?? 0))
        }
        throw Status(code: .unavailable, message: "no upstream replica answered /v1/models: \(failures.joined(separator: ", "))")
    }

    /// Adapters every healthy replica lists (ids from the committed table).
    package func listAdapters() async throws(Status) -> [EngineAdapter] {
        let healthy = self.healthyReplicas
        guard !healthy.isEmpty else { throw Status(code: .unavailable, message: "no upstream replica is reachable") }
        var common: [String: String]?
        for replica in healthy {
            guard await self.list(replica) != nil else {
                throw Status(code: .unavailable, message: "\(replica.name) did not list its models")
            }
            let held = replica.state.withLock { $0.held }
            common = common.map { $0.filter { held[$0.key] == $0.value } } ?? held
        }
        let table = self.table.snapshot()
        return (common ?? [:]).map { name, path in
            EngineAdapter(name: name, intID: table.adapters.first { $0.name == name }?.intID ?? 0, path: path)
        }
    }

    /// Loads on every healthy replica; all must accept, else the ones that did are rolled back.
    package func addAdapter(_ request: AddAdapterRequest) async throws(Status) {
        self.names.withLock { $0[request.intID] = request.name }
        let targets = self.healthyReplicas
        guard !targets.isEmpty else { throw Status(code: .unavailable, message: "no upstream replica is reachable") }
        let outcomes = await self.fanOut(targets) { backend, replica in
            await backend.load(request.name, path: request.path, replace: request.replace, on: replica)
        }
        var accepted: [UpstreamReplica] = []
        var refusals: [(UpstreamReplica, Status)] = []
        for (replica, outcome) in outcomes {
            switch outcome {
            case .accepted: accepted.append(replica)
            case .unreachable(let reason): self.markUnhealthy(replica, reason: reason)
            case .refused(let status): refusals.append((replica, status))
            }
        }
        guard !refusals.isEmpty else {
            guard !accepted.isEmpty else { throw Status(code: .unavailable, message: "no upstream replica is reachable") }
            for replica in accepted {
                replica.state.withLock { state in
                    state.missing.remove(request.name)
                    state.held[request.name] = request.path
                }
            }
            return
        }
        // Partial failure: undo it where it succeeded, so no replica serves an uncommitted adapter.
        let previous = self.table.snapshot().adapters.first { $0.name == request.name }
        _ = await self.fanOut(accepted) { backend, replica -> Outcome in
            if request.replace, let previous {
                return await backend.load(previous.name, path: previous.path, replace: true, on: replica)
            }
            return await backend.unload(request.name, on: replica)
        }
        let (first, status) = refusals[0]
        let others = refusals.dropFirst().map(\.0.name)
        var message = "upstream replica \(first.name) refused the adapter '\(request.name)': \(status.message)"
        if !others.isEmpty { message += " (also refused by \(others.joined(separator: ", ")))" }
        if !accepted.isEmpty { message += "; rolled back on \(accepted.map(\.name).joined(separator: ", "))" }
        self.logger.warning(
            "adapter load refused by an upstream replica", metadata: ["adapter.name": "\(request.name)", "reason": "\(message)"])
        throw Status(code: status.code, message: message, param: status.param)
    }

    /// Unloads on every healthy replica (one that does not hold it counts as done); on a
    /// refusal the adapter is re-added where it was removed.
    package func removeAdapter(_ request: RemoveAdapterRequest) async throws(Status) {
        let record = self.table.snapshot().adapters.first { $0.intID == request.intID }
        guard let name = record?.name ?? self.names.withLock({ $0[request.intID] }) else {
            throw Status(code: .notFound, message: "no adapter with lora_int_id \(request.intID)")
        }
        let targets = self.healthyReplicas
        guard !targets.isEmpty else { throw Status(code: .unavailable, message: "no upstream replica is reachable") }
        let outcomes = await self.fanOut(targets) { backend, replica in await backend.unload(name, on: replica) }
        var removed: [UpstreamReplica] = []
        var refusals: [(UpstreamReplica, Status)] = []
        for (replica, outcome) in outcomes {
            switch outcome {
            case .accepted: removed.append(replica)
            case .unreachable(let reason): self.markUnhealthy(replica, reason: reason)
            case .refused(let status): refusals.append((replica, status))
            }
        }
        for replica in removed { replica.state.withLock { _ = $0.held.removeValue(forKey: name) } }
        guard let (first, status) = refusals.first else { return }
        if let record {
            _ = await self.fanOut(removed) { backend, replica in
                await backend.load(record.name, path: record.path, replace: false, on: replica)
            }
        }
        throw Status(code: status.code, message: "upstream replica \(first.name) refused to unload '\(name)': \(status.message)")
    }

    /// Pinning is the engine's cache policy; the replicas manage their own (no-op).
    package func pinAdapter(_ request: PinAdapterRequest) async throws(Status) {}

    // MARK: Adapter calls on one replica

    enum Outcome: Sendable {
        case accepted
        case refused(Status)
        case unreachable(String)
    }

    private func fanOut(
        _ replicas: [UpstreamReplica], _ call: @escaping @Sendable (UpstreamBackend, UpstreamReplica) async -> Outcome
    ) async -> [(UpstreamReplica, Outcome)] {
        await withTaskGroup(of: (Int, Outcome).self) { group in
            for (index, replica) in replicas.enumerated() {
                group.addTask { (index, await call(self, replica)) }
            }
            var results: [(UpstreamReplica, Outcome)?] = Array(repeating: nil, count: replicas.count)
            for await (index, outcome) in group { results[index] = (replicas[index], outcome) }
            return results.compactMap { $0 }
        }
    }

    func load(_ name: String, path: String, replace: Bool, on replica: UpstreamReplica) async -> Outcome {
        if replace, self.configuration.kind == .sglang {
            // SGLang has no in-place reload: unload, then load.
            if case .refused(let status) = await self.unload(name, on: replica) { return .refused(status) }
        }
        return await self.adapterCall(
            self.configuration.kind.loadPath, Self.loadBody(name, path: path, replace: replace, kind: self.configuration.kind),
            on: replica, treatNotFoundAsDone: false)
    }

    func unload(_ name: String, on replica: UpstreamReplica) async -> Outcome {
        await self.adapterCall(self.configuration.kind.unloadPath, Self.unloadBody(name), on: replica, treatNotFoundAsDone: true)
    }

    /// vLLM `LoadLoRAAdapterRequest {lora_name, lora_path, load_inplace}`; SGLang
    /// `LoadLoRAAdapterReqInput {lora_name, lora_path}` (no in-place reload).
    static func loadBody(_ name: String, path: String, replace: Bool, kind: UpstreamKind) -> JSONValue {
        var members: [(String, JSONValue)] = [("lora_name", .string(name)), ("lora_path", .string(path))]
        if replace, kind == .vllm { members.append(("load_inplace", .bool(true))) }
        return .object(members)
    }

    /// vLLM `UnloadLoRAAdapterRequest {lora_name, lora_int_id?}` (their ids are not ours:
    /// by name only); SGLang `UnloadLoRAAdapterReqInput {lora_name}`.
    static func unloadBody(_ name: String) -> JSONValue { .object([("lora_name", .string(name))]) }

    private func adapterCall(_ path: String, _ body: JSONValue, on replica: UpstreamReplica, treatNotFoundAsDone: Bool) async -> Outcome {
        let response: UpstreamResponse
        do {
            response = try await replica.client.execute(
                method: .POST, path: path, headers: [("Content-Type", "application/json")] + self.authHeaders,
                body: ByteBuffer(bytes: JSONWriter.encode(body)), headTimeout: self.configuration.mutationTimeout)
        } catch {
            switch error {
            case .connect, .transport(_, sent: false): return .unreachable("\(error)")
            case .timeout: return .refused(Status(code: .deadlineExceeded, message: "\(error)"))
            case .transport, .bodyTooLarge, .cancelled: return .unreachable("\(error)")
            }
        }
        let answer: ByteBuffer
        do {
            answer = try await response.collect(limit: 1 << 20)
        } catch {
            return .unreachable("\(error)")
        }
        if (200..<300).contains(response.status) { return .accepted }
        let mapped = Self.mapError(status: response.status, body: answer, replica: replica.name)
        if treatNotFoundAsDone {
            let lowered = mapped.message.lowercased()
            if response.status == 404 || lowered.contains("not found") || lowered.contains("cannot be found") { return .accepted }
        }
        return .refused(Self.status(of: response.status, message: mapped.message, param: mapped.param))
    }

    private static func status(of httpStatus: Int, message: String, param: String?) -> Status {
        let code: StatusCode
        switch httpStatus {
        case 400, 422: code = .invalidArgument
        case 401, 403: code = .permissionDenied
        case 404: code = .notFound
        case 409: code = .alreadyExists
        case 429: code = .resourceExhausted
        case 503: code = .unavailable
        case 504: code = .deadlineExceeded
        default: code = .internal
        }
        return Status(code: code, message: message, param: param ?? "")
    }

    // MARK: Reconciliation (leader)

    /// Makes every healthy replica hold exactly the committed table: adapters it lacks
    /// (or holds from another path) are loaded, adapters no committed entry names are
    /// unloaded. With `asDrift` (the reconcile loop) what it changed is drift, logged and
    /// counted in `driftRepairs`; without (a change the fleet committed) it is the change
    /// being applied. One reconciliation at a time, so two never load the same adapter on
    /// one replica at once.
    package func reconcile(with table: AdapterTable, asDrift: Bool) async throws(Status) -> LeaderMutationService.Reconciliation {
        let result: Result<LeaderMutationService.Reconciliation, Status> = await self.reconciling.run {
            do throws(Status) {
                return .success(try await self.reconcileNow(with: table, asDrift: asDrift))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    private func reconcileNow(with table: AdapterTable, asDrift: Bool) async throws(Status) -> LeaderMutationService.Reconciliation {
        for adapter in table.adapters { self.names.withLock { $0[adapter.intID] = adapter.name } }
        let healthy = self.healthyReplicas
        guard !healthy.isEmpty else { throw Status(code: .unavailable, message: "no upstream replica is reachable") }
        var outcome = LeaderMutationService.Reconciliation()
        for replica in healthy {
            guard await self.list(replica) != nil else { continue }
            let held = replica.state.withLock { $0.held }
            for (name, _) in held where !table.adapters.contains(where: { $0.name == name }) {
                if case .accepted = await self.unload(name, on: replica) {
                    outcome.removedNames.append("\(name)@\(replica.name)")
                    replica.state.withLock { _ = $0.held.removeValue(forKey: name) }
                } else {
                    outcome.failed.append("unload \(name)@\(replica.name)")
                }
            }
            // A replica that does not report paths (empty root) is trusted on the name.
            let pending = table.adapters.filter { record in
                guard let heldPath = held[record.name] else { return true }
                return !(heldPath.isEmpty || heldPath == record.path)
            }
            let (due, waiting) = replica.state.withLock { $0.refusals.schedule(pending, now: .now) }
            outcome.failed += waiting.map { "\($0.record.name)@\(replica.name): \($0.lastError)" }
            for record in due {
                let heldPath = held[record.name]
                switch await self.load(record.name, path: record.path, replace: heldPath != nil, on: replica) {
                case .accepted:
                    outcome.added.append("\(record.name)@\(replica.name)")
                    replica.state.withLock { state in
                        state.held[record.name] = record.path
                        state.missing.remove(record.name)
                    }
                case .refused(let status):
                    replica.state.withLock { _ = $0.refusals.recordFailure(.init(record), error: status.message, now: .now) }
                    outcome.failed.append("\(record.name)@\(replica.name): \(status.message)")
                case .unreachable(let reason):
                    self.markUnhealthy(replica, reason: reason)
                }
            }
        }
        let repaired = outcome.added.count + outcome.removedNames.count
        if repaired > 0, asDrift {
            let total = self.driftRepairs.add(UInt64(repaired), ordering: .relaxed).newValue
            self.logger.warning(
                "upstream adapter drift repaired",
                metadata: [
                    "added": "\(outcome.added)", "removed": "\(outcome.removedNames)", "drift.repairs.total": "\(total)",
                ])
        }
        return outcome
    }
}

/// One replica as `UpstreamBackend.replicaStatuses()` reports it.
package struct UpstreamReplicaStatus: Sendable {
    package var url: String
    package var healthy: Bool
    package var outstanding: Int
    package var served: UInt64
    package var missing: [String]
}
