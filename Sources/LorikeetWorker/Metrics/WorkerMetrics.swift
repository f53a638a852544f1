import CoreMetrics
import LorikeetProto
package import Prometheus
import Synchronization

/// Requests and tokens one adapter has been used for on this worker (`GET /v1/lora_adapters`).
package struct AdapterUsage: Sendable, Equatable {
    package var requests: UInt64 = 0
    package var promptTokens: UInt64 = 0
    package var completionTokens: UInt64 = 0
    package init() {}
}

/// This worker's figures for `GET /metrics`: instruments made with swift-metrics types over
/// a `PrometheusMetricsFactory` that this object owns (no global `MetricsSystem`
/// bootstrap, so several workers can live in one test process), rendered by
/// swift-prometheus's registry.
///
/// Series (all counters end in `_total`; durations are histograms in seconds):
/// - `lorikeet_http_requests_total{route,status,model}`; `model` is the resolved base model
///   or adapter name, empty when the request named none or an unknown one,
/// - `lorikeet_http_request_duration_seconds{route}` (until the last byte, streams included),
/// - `lorikeet_time_to_first_token_seconds{route,model}`,
/// - `lorikeet_adapter_requests_total{adapter}`, `lorikeet_adapter_prompt_tokens_total{adapter}`,
///   `lorikeet_adapter_completion_tokens_total{adapter}` (generation requests per adapter),
/// - `lorikeet_model_requests_total{model}` and token counters for base-model requests,
/// - `lorikeet_adapter_mutations_total{action,code}`, `lorikeet_adapter_mutation_duration_seconds{action}`
///   (load/unload calls received by this worker, whatever worker led them),
/// - gauges set at scrape time: `lorikeet_adapter_table_version`, `lorikeet_adapters_loaded`,
///   `lorikeet_engine_up`, `lorikeet_requests_in_flight`, `lorikeet_worker_info{slot,version}`,
///   and in fleet mode `lorikeet_cluster_fenced` (1 while the node serves no adapter: its
///   etcd lease is not renewed or it is catching up).
package final class WorkerMetrics: Sendable {
    /// The registry `GET /metrics` renders.
    package let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory
    private let slot: Int32
    private let usage = Mutex<[UInt64: AdapterUsage]>([:])
    /// Adapter names with `lorikeet_adapter_*` series; pruned at scrape time when the
    /// adapter left the table, so unloaded (or hostile) names do not accumulate series.
    private let adapterSeries = Mutex<Set<String>>([])

    static let latencyBuckets: [Duration] = [
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
        .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30), .seconds(60),
    ]

    /// vLLM's `vllm:` series (`VLLMMetrics`), rendered after the `lorikeet_*` ones.
    package let vllm: VLLMMetrics

    /// A worker's metrics; `multiprocessDirectory` (`LORIKEET_METRICS_DIR`, set by the
    /// supervisor) makes the `vllm:` series the sum over every worker process.
    package init(slot: Int32 = -1, multiprocessDirectory: String? = nil) {
        self.vllm = VLLMMetrics(directory: multiprocessDirectory)
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = Self.latencyBuckets
        self.registry = registry
        self.factory = factory
        self.slot = slot
    }

    /// Route label: the known paths, anything else is `other` (bounded cardinality).
    static func routeLabel(_ path: String) -> String {
        switch path {
        case "/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/load_lora_adapter", "/v1/unload_lora_adapter",
            "/v1/lora_adapters", "/v1/lora_adapters/batch", "/health", "/version", "/metrics":
            return path
        default:
            return "other"
        }
    }

    /// One HTTP request answered (status is what was sent; duration until the last byte).
    func requestFinished(_ record: RequestRecord, status: Int, duration: Duration) {
        record.answered()
        let route = Self.routeLabel(record.path)
        let snapshot = record.snapshot
        Counter(
            label: "lorikeet_http_requests_total",
            dimensions: [("route", route), ("status", "\(status)"), ("model", snapshot.model)], factory: self.factory
        ).increment()
        CoreMetrics.Timer(label: "lorikeet_http_request_duration_seconds", dimensions: [("route", route)], factory: self.factory)
            .recordNanoseconds(duration.nanoseconds)
        if let firstToken = snapshot.firstToken {
            CoreMetrics.Timer(
                label: "lorikeet_time_to_first_token_seconds", dimensions: [("route", route), ("model", snapshot.model)],
                factory: self.factory
            ).recordNanoseconds(firstToken.nanoseconds)
        }
        guard snapshot.generated else { return }
        let (prefix, labelName, labelValue) =
            snapshot.adapterID != nil
            ? ("lorikeet_adapter", "adapter", snapshot.model) : ("lorikeet_model", "model", snapshot.model)
        let dimensions = [(labelName, labelValue)]
        // Named before its series exist, so an unload that sees the series also removes it.
        if snapshot.adapterID != nil { self.adapterSeries.withLock { _ = $0.insert(snapshot.model) } }
        Counter(label: prefix + "_requests_total", dimensions: dimensions, factory: self.factory).increment()
        Counter(label: prefix + "_prompt_tokens_total", dimensions: dimensions, factory: self.factory)
            .increment(by: Int64(snapshot.promptTokens))
        Counter(label: prefix + "_completion_tokens_total", dimensions: dimensions, factory: self.factory)
            .increment(by: Int64(snapshot.completionTokens))
        if let id = snapshot.adapterID {
            self.usage.withLock { usage in
                usage[id, default: AdapterUsage()].requests += 1
                usage[id, default: AdapterUsage()].promptTokens += UInt64(snapshot.promptTokens)
                usage[id, default: AdapterUsage()].completionTokens += UInt64(snapshot.completionTokens)
            }
        }
    }

    /// Removes the per-adapter series and usage of adapters no longer in the table.
    func pruneAdapterSeries(keeping adapters: [AdapterRecord]) {
        let names = Set(adapters.map(\.name))
        let ids = Set(adapters.map(\.intID))
        let gone = self.adapterSeries.withLock { series -> Set<String> in
            let gone = series.subtracting(names)
            series.subtract(gone)
            return gone
        }
        for name in gone {
            for suffix in ["_requests_total", "_prompt_tokens_total", "_completion_tokens_total"] {
                Counter(label: "lorikeet_adapter" + suffix, dimensions: [("adapter", name)], factory: self.factory).destroy()
            }
        }
        self.usage.withLock { usage in
            for id in usage.keys where !ids.contains(id) { usage[id] = nil }
        }
    }

    /// One load or unload call answered by this worker.
    func adapterMutation(action: String, code: String, duration: Duration) {
        Counter(label: "lorikeet_adapter_mutations_total", dimensions: [("action", action), ("code", code)], factory: self.factory)
            .increment()
        CoreMetrics.Timer(label: "lorikeet_adapter_mutation_duration_seconds", dimensions: [("action", action)], factory: self.factory)
            .recordNanoseconds(duration.nanoseconds)
    }

    /// After a reconciliation (leader only): committed adapters the engine, or an upstream
    /// replica, refused to load again (`lorikeet_adapters_unavailable`; 0 = all restored).
    package func reconciled(unavailable: Int) {
        Gauge(label: "lorikeet_adapters_unavailable", factory: self.factory).record(Double(unavailable))
    }

    /// Requests and tokens served with the adapter of this `lora_int_id` (ids are never
    /// reused, so a reloaded name starts again from zero only if it got a new id).
    package func usage(adapterID: UInt64) -> AdapterUsage {
        self.usage.withLock { $0[adapterID] ?? AdapterUsage() }
    }

    /// The Prometheus text exposition, after setting the scrape-time gauges: this worker's
    /// `lorikeet_*` series, then the `vllm:` series (of every worker under a supervisor;
    /// `model_name` = `baseModel`, `max_lora` = the engine's `max_loras`, else `maxAdapters`).
    func exposition(
        tableVersion: UInt64, adapters: [AdapterRecord], engineUp: Bool, inFlight: UInt32, version: String, baseModel: String = "",
        maxAdapters: Int = Limits.defaultMaxAdapters, fenced: Bool? = nil
    ) -> [UInt8] {
        self.pruneAdapterSeries(keeping: adapters)
        Gauge(label: "lorikeet_adapter_table_version", factory: self.factory).record(Double(tableVersion))
        Gauge(label: "lorikeet_adapters_loaded", factory: self.factory).record(Double(adapters.count))
        Gauge(label: "lorikeet_engine_up", factory: self.factory).record(engineUp ? 1 : 0)
        Gauge(label: "lorikeet_requests_in_flight", factory: self.factory).record(Double(inFlight))
        if let fenced { Gauge(label: "lorikeet_cluster_fenced", factory: self.factory).record(fenced ? 1 : 0) }
        Gauge(label: "lorikeet_worker_info", dimensions: [("slot", "\(self.slot)"), ("version", version)], factory: self.factory)
            .record(1)
        var buffer: [UInt8] = []
        self.registry.emit(into: &buffer)
        buffer += self.vllm.exposition(modelName: baseModel, maxLoras: maxAdapters).utf8
        return buffer
    }
}

/// What one HTTP request did, filled in as it goes (route, resolved model, adapter,
/// first token, outputs, tokens) and read once when it is answered.
///
/// Reached through `RequestRecord.current` (a task local the responder sets), so the
/// generation code records without new parameters. With `vllm`, each milestone also
/// moves the `vllm:` series (`VLLMMetrics`): `resolved` admits the request (waiting),
/// `firstToken` makes it running, `output` counts tokens and inter-token latency,
/// `tokens` finishes it, and `answered` (the responder's last word) counts a request
/// that never finished as `abort`.
final class RequestRecord: Sendable {
    /// Where a generation request is, for the `vllm:` gauges.
    enum Phase { case none, waiting, running, finished }

    struct Snapshot {
        var model = ""
        var adapterID: UInt64?
        var generated = false
        var firstToken: Duration?
        var promptTokens: UInt32 = 0
        var completionTokens: UInt32 = 0
        var phase = Phase.none
        var lastOutput: ContinuousClock.Instant?
        var outputs = 0
        var streamedTokens: UInt64 = 0
        var finishReason: String?
    }

    @TaskLocal static var current: RequestRecord?

    let path: String
    let start = ContinuousClock.now
    let vllm: VLLMMetrics?
    private let state = Mutex(Snapshot())

    init(path: String, vllm: VLLMMetrics? = nil) {
        self.path = path
        self.vllm = vllm
    }

    var snapshot: Snapshot { self.state.withLock { $0 } }

    /// The adapter's name for the `vllm:lora_requests_info` sets (nil for a base model).
    private static func adapterName(_ snapshot: Snapshot) -> String? {
        snapshot.adapterID == nil ? nil : snapshot.model
    }

    /// The request named a model that resolved to this base model or adapter; a
    /// generation is about to be handed to the engine (vLLM: waiting).
    func resolved(model: String, adapterID: UInt64?) {
        let admitted = self.state.withLock { state -> Bool in
            state.model = model
            state.adapterID = adapterID
            guard state.phase == .none else { return false }
            state.phase = .waiting
            return true
        }
        if admitted { self.vllm?.admitted(adapter: adapterID == nil ? nil : model) }
    }

    /// The engine produced its first chunk.
    func firstToken() {
        let now = ContinuousClock.now
        let elapsed = now - self.start
        let started = self.state.withLock { state -> (adapter: String?, running: Bool) in
            if state.firstToken == nil { state.firstToken = elapsed }
            guard state.phase == .waiting else { return (nil, false) }
            state.phase = .running
            state.lastOutput = now
            return (Self.adapterName(state), true)
        }
        if started.running { self.vllm?.firstToken(adapter: started.adapter, elapsed: elapsed) }
    }

    /// One chunk from the engine: its tokens, and its finish reason if it is the last.
    /// Chunks after the first with tokens are the inter-token latency observations.
    func output(tokens: Int, finishReason: String) {
        let now = ContinuousClock.now
        let observed = self.state.withLock { state -> (tokens: Int, since: Duration?)? in
            if !finishReason.isEmpty { state.finishReason = finishReason }
            guard state.phase == .running, tokens > 0 else { return nil }
            let since = state.outputs > 0 ? state.lastOutput.map { now - $0 } : nil
            state.outputs += 1
            state.lastOutput = now
            state.streamedTokens += UInt64(tokens)
            return (tokens, since)
        }
        if let observed { self.vllm?.output(tokens: observed.tokens, sincePrevious: observed.since) }
    }

    /// The generation finished with these token counts (`cached`: prompt positions the
    /// engine copied from its prefix cache).
    func tokens(prompt: UInt32, completion: UInt32, cached: UInt32 = 0) {
        let finished = self.state.withLock { state -> Snapshot? in
            state.generated = true
            state.promptTokens = prompt
            state.completionTokens = completion
            guard state.phase == .running else { return nil }
            state.phase = .finished
            return state
        }
        if let finished {
            self.vllm?.finished(
                adapter: Self.adapterName(finished), wasRunning: true, reason: finished.finishReason ?? "abort",
                promptTokens: prompt, cachedPromptTokens: cached,
                extraGenerationTokens: UInt64(completion) > finished.streamedTokens ? UInt64(completion) - finished.streamedTokens : 0,
                elapsed: .now - self.start)
        }
    }

    /// The response was written (or its writing failed): a generation that never
    /// finished is counted now — `abort` if it was running (the client left, or the
    /// engine failed), nothing but the gauge if it never got a first token.
    func answered() {
        let unfinished = self.state.withLock { state -> Snapshot? in
            guard state.phase == .waiting || state.phase == .running else { return nil }
            let snapshot = state
            state.phase = .finished
            return snapshot
        }
        if let unfinished {
            self.vllm?.finished(
                adapter: Self.adapterName(unfinished), wasRunning: unfinished.phase == .running,
                reason: unfinished.finishReason ?? "abort", promptTokens: unfinished.promptTokens, extraGenerationTokens: 0,
                elapsed: .now - self.start)
        }
    }
}

extension Duration {
    /// Whole nanoseconds (saturating), for swift-metrics' `Timer.recordNanoseconds`.
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = self.components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? .max : scaled + attoseconds / 1_000_000_000
    }
}
