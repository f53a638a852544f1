import Glibc
import LorikeetJSON
import Synchronization

/// The `vllm:` series' fixed shape: names, HELP texts and buckets as vLLM's
/// `PrometheusStatLogger` registers them (`vllm/v1/metrics/loggers.py`; see
/// `docs/vllm-compat-spec.md` §2.2).
package enum VLLMSeries {
    /// `vllm:time_to_first_token_seconds` buckets.
    static let timeToFirstTokenBuckets: [Double] = [
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0,
        640.0, 2560.0,
    ]
    /// `vllm:inter_token_latency_seconds` buckets.
    static let interTokenLatencyBuckets: [Double] = [
        0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    ]
    /// `vllm:e2e_request_latency_seconds` buckets.
    static let requestLatencyBuckets: [Double] = [
        0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0,
        7680.0,
    ]
    /// `vllm:request_success_total{finished_reason}` values, all pre-created at 0 as vLLM
    /// does (`str(FinishReason)`).
    package static let finishedReasons = ["stop", "length", "abort", "error"]

    /// The index of a finish reason in `finishedReasons`; an empty or unknown reason is
    /// `stop` (the default the completion bodies report too).
    static func reasonIndex(_ reason: String) -> Int {
        Self.finishedReasons.firstIndex(of: reason) ?? 0
    }
}

/// One histogram's figures: observations per bucket (not cumulative; the last entry is
/// `+Inf`) and their sum.
struct HistogramFigures: Sendable, Equatable {
    var counts: [UInt64]
    var sum: Double = 0

    init(bounds: [Double]) { self.counts = Array(repeating: 0, count: bounds.count + 1) }

    mutating func observe(_ value: Double, bounds: [Double]) {
        let index = bounds.firstIndex { value <= $0 } ?? bounds.count
        self.counts[index] &+= 1
        self.sum += value
    }

    mutating func add(_ other: HistogramFigures) {
        guard other.counts.count == self.counts.count else { return }
        for index in self.counts.indices { self.counts[index] &+= other.counts[index] }
        self.sum += other.sum
    }
}

/// What one process counted for the `vllm:` series: counters and histograms (summed
/// over every process, dead ones included, when aggregated) and live figures (gauges,
/// adapters in use; summed over live processes only).
///
/// Serialized as a small JSON object, one file per worker process in the metrics
/// directory (`MultiprocessMetricsDirectory`).
package struct VLLMFigures: Sendable, Equatable {
    var success = Array(repeating: UInt64(0), count: VLLMSeries.finishedReasons.count)
    var promptTokens: UInt64 = 0
    var generationTokens: UInt64 = 0
    /// Prompt tokens of finished requests, and those of them the engine's prefix cache held
    /// (vLLM's `prefix_cache_queries` / `prefix_cache_hits`).
    var prefixCacheQueries: UInt64 = 0
    var prefixCacheHits: UInt64 = 0
    var timeToFirstToken = HistogramFigures(bounds: VLLMSeries.timeToFirstTokenBuckets)
    var interTokenLatency = HistogramFigures(bounds: VLLMSeries.interTokenLatencyBuckets)
    var requestLatency = HistogramFigures(bounds: VLLMSeries.requestLatencyBuckets)
    /// Requests streaming tokens (first token seen, not finished).
    var running = 0
    /// Requests admitted to the engine without a first token yet.
    var waiting = 0
    /// Adapter name → requests of it running / waiting.
    var runningAdapters: [String: Int] = [:]
    var waitingAdapters: [String: Int] = [:]

    package init() {}

    /// Requests finished with each reason (`VLLMSeries.finishedReasons` order).
    package var finished: [UInt64] { self.success }

    /// Adds another process's counters and histograms.
    mutating func addCounters(_ other: VLLMFigures) {
        for index in self.success.indices { self.success[index] &+= other.success[index] }
        self.promptTokens &+= other.promptTokens
        self.generationTokens &+= other.generationTokens
        self.prefixCacheQueries &+= other.prefixCacheQueries
        self.prefixCacheHits &+= other.prefixCacheHits
        self.timeToFirstToken.add(other.timeToFirstToken)
        self.interTokenLatency.add(other.interTokenLatency)
        self.requestLatency.add(other.requestLatency)
    }

    /// Adds another live process's gauges and adapters in use.
    mutating func addLive(_ other: VLLMFigures) {
        self.running += other.running
        self.waiting += other.waiting
        self.runningAdapters.merge(other.runningAdapters, uniquingKeysWith: +)
        self.waitingAdapters.merge(other.waitingAdapters, uniquingKeysWith: +)
    }

    /// The figures without their live part (what a dead process leaves behind).
    var countersOnly: VLLMFigures {
        var copy = VLLMFigures()
        copy.addCounters(self)
        return copy
    }

    static func adjust(_ map: inout [String: Int], _ name: String?, by delta: Int) {
        guard let name else { return }
        let value = (map[name] ?? 0) + delta
        map[name] = value > 0 ? value : nil
    }

    // MARK: File form

    static let formatVersion: Int64 = 1

    func json(pid: Int32) -> JSONValue {
        func histogram(_ figures: HistogramFigures) -> JSONValue {
            .object([("c", .array(figures.counts.map { .int(Int64(clamping: $0)) })), ("s", .double(figures.sum))])
        }
        return .object([
            ("v", .int(Self.formatVersion)), ("pid", .int(Int64(pid))),
            ("success", .array(self.success.map { .int(Int64(clamping: $0)) })),
            ("prompt", .int(Int64(clamping: self.promptTokens))), ("generation", .int(Int64(clamping: self.generationTokens))),
            ("pc_queries", .int(Int64(clamping: self.prefixCacheQueries))), ("pc_hits", .int(Int64(clamping: self.prefixCacheHits))),
            ("ttft", histogram(self.timeToFirstToken)), ("itl", histogram(self.interTokenLatency)),
            ("e2e", histogram(self.requestLatency)), ("running", .int(Int64(self.running))),
            ("waiting", .int(Int64(self.waiting))),
            ("running_adapters", .object(self.runningAdapters.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) })),
            ("waiting_adapters", .object(self.waitingAdapters.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) })),
        ])
    }

    /// Parses the file form; nil for anything not exactly this version's shape (a file
    /// of another version, or damaged, is skipped rather than trusted).
    static func parse(_ value: JSONValue) -> (pid: Int32, figures: VLLMFigures)? {
        func count(_ value: JSONValue?) -> UInt64? {
            guard case .int(let number)? = value, number >= 0 else { return nil }
            return UInt64(number)
        }
        func number(_ value: JSONValue?) -> Double? {
            switch value {
            case .int(let number)?: return Double(number)
            case .double(let number)?: return number.isFinite ? number : nil
            default: return nil
            }
        }
        func counts(_ value: JSONValue?, _ length: Int) -> [UInt64]? {
            guard case .array(let elements)? = value, elements.count == length else { return nil }
            let parsed = elements.compactMap { count($0) }
            return parsed.count == length ? parsed : nil
        }
        func histogram(_ value: JSONValue?, _ bounds: [Double]) -> HistogramFigures? {
            guard let value, let parsed = counts(value["c"], bounds.count + 1), let sum = number(value["s"]) else { return nil }
            var figures = HistogramFigures(bounds: bounds)
            figures.counts = parsed
            figures.sum = sum
            return figures
        }
        func adapters(_ value: JSONValue?) -> [String: Int]? {
            guard case .object(let members)? = value else { return nil }
            var map: [String: Int] = [:]
            for (name, value) in members {
                guard let requests = count(value), requests > 0, requests < UInt64(Int32.max) else { return nil }
                map[name, default: 0] += Int(requests)
            }
            return map
        }
        guard case .int(Self.formatVersion)? = value["v"], case .int(let pid)? = value["pid"], let pid = Int32(exactly: pid),
            let success = counts(value["success"], VLLMSeries.finishedReasons.count), let prompt = count(value["prompt"]),
            let generation = count(value["generation"]),
            let ttft = histogram(value["ttft"], VLLMSeries.timeToFirstTokenBuckets),
            let itl = histogram(value["itl"], VLLMSeries.interTokenLatencyBuckets),
            let e2e = histogram(value["e2e"], VLLMSeries.requestLatencyBuckets),
            let running = count(value["running"]), let waiting = count(value["waiting"]),
            let runningAdapters = adapters(value["running_adapters"]), let waitingAdapters = adapters(value["waiting_adapters"])
        else { return nil }
        var figures = VLLMFigures()
        figures.success = success
        figures.promptTokens = prompt
        figures.generationTokens = generation
        // Absent in files written before the prefix cache: zero.
        figures.prefixCacheQueries = count(value["pc_queries"]) ?? 0
        figures.prefixCacheHits = count(value["pc_hits"]) ?? 0
        figures.timeToFirstToken = ttft
        figures.interTokenLatency = itl
        figures.requestLatency = e2e
        figures.running = Int(clamping: running)
        figures.waiting = Int(clamping: waiting)
        figures.runningAdapters = runningAdapters
        figures.waitingAdapters = waitingAdapters
        return (pid, figures)
    }
}

/// vLLM's frontend series (`vllm:*`, `docs/vllm-compat.md`), counted by this worker and,
/// when the worker runs under the supervisor, summed over every worker process at scrape
/// time, so a scrape of the shared port does not depend on which worker answers.
///
/// Aggregation is vLLM's own multi-process scheme (`PROMETHEUS_MULTIPROC_DIR`, summed by
/// `prometheus_client`'s `MultiProcessCollector`): each worker writes its figures to its
/// own file in a directory the supervisor creates and wipes at start
/// (`LORIKEET_METRICS_DIR`); a scrape reads them all. Counters and histograms are summed
/// over every file (a dead worker's totals stay, so a restart never makes a counter go
/// backwards); gauges and the adapters in use only over live processes.
///
/// Figures are written at every request milestone (admitted, first token, finished), so
/// a scrape that follows a completed response counts it, whichever worker answered
/// either; tokens of a stream in progress on another worker are at most
/// `flushInterval` old.
package final class VLLMMetrics: Sendable {
    private struct State {
        var figures = VLLMFigures()
        var lastFlush: ContinuousClock.Instant?
    }

    private let state = Mutex(State())
    private let directory: MultiprocessMetricsDirectory?
    private let maxLoras = Atomic<UInt32>(0)
    /// How stale another worker's token counts of a running stream may be.
    static let flushInterval: Duration = .milliseconds(250)

    /// Figures of this process only (`directory` nil), or aggregated through the files of
    /// `directory`.
    package init(directory: String?) {
        self.directory = directory.map { MultiprocessMetricsDirectory(path: $0, pid: getpid()) }
        self.directory?.compact()
    }

    /// The engine's `max_loras` (the `max_lora` label of `vllm:lora_requests_info`).
    package func setMaxLoras(_ value: UInt32) { self.maxLoras.store(value, ordering: .relaxed) }

    /// This process's figures (tests, and the scrape).
    package var figures: VLLMFigures { self.state.withLock { $0.figures } }

    /// Changes the figures, then writes them to this worker's file when `milestone` (or
    /// when the last write is older than `flushInterval`).
    private func update(milestone: Bool, _ change: (inout VLLMFigures) -> Void) {
        self.state.withLock { state in
            change(&state.figures)
            guard let directory = self.directory else { return }
            let now = ContinuousClock.now
            if milestone || state.lastFlush.map({ now - $0 >= Self.flushInterval }) ?? true {
                state.lastFlush = now
                directory.write(state.figures)
            }
        }
    }

    /// A request was admitted to the engine (waiting for its first token).
    func admitted(adapter: String?) {
        self.update(milestone: true) { figures in
            figures.waiting += 1
            VLLMFigures.adjust(&figures.waitingAdapters, adapter, by: 1)
        }
    }

    /// A waiting request produced its first token `elapsed` after it arrived.
    func firstToken(adapter: String?, elapsed: Duration) {
        self.update(milestone: true) { figures in
            figures.waiting -= 1
            VLLMFigures.adjust(&figures.waitingAdapters, adapter, by: -1)
            figures.running += 1
            VLLMFigures.adjust(&figures.runningAdapters, adapter, by: 1)
            figures.timeToFirstToken.observe(elapsed.seconds, bounds: VLLMSeries.timeToFirstTokenBuckets)
        }
    }

    /// A running request output `tokens` more tokens, `sincePrevious` after its previous
    /// output (nil for its first).
    func output(tokens: Int, sincePrevious: Duration?) {
        self.update(milestone: false) { figures in
            figures.generationTokens &+= UInt64(max(tokens, 0))
            if let sincePrevious {
                figures.interTokenLatency.observe(sincePrevious.seconds, bounds: VLLMSeries.interTokenLatencyBuckets)
            }
        }
    }

    /// A request left the engine: finished with `reason` (running), or refused or
    /// abandoned before its first token (waiting: only the gauge moves, as in vLLM, whose
    /// counters see only requests the engine finished).
    func finished(
        adapter: String?, wasRunning: Bool, reason: String, promptTokens: UInt32, cachedPromptTokens: UInt32 = 0,
        extraGenerationTokens: UInt64, elapsed: Duration
    ) {
        self.update(milestone: true) { figures in
            guard wasRunning else {
                figures.waiting -= 1
                VLLMFigures.adjust(&figures.waitingAdapters, adapter, by: -1)
                return
            }
            figures.running -= 1
            VLLMFigures.adjust(&figures.runningAdapters, adapter, by: -1)
            figures.success[VLLMSeries.reasonIndex(reason)] &+= 1
            figures.promptTokens &+= UInt64(promptTokens)
            figures.prefixCacheQueries &+= UInt64(promptTokens)
            figures.prefixCacheHits &+= UInt64(min(cachedPromptTokens, promptTokens))
            figures.generationTokens &+= extraGenerationTokens
            figures.requestLatency.observe(elapsed.seconds, bounds: VLLMSeries.requestLatencyBuckets)
        }
    }

    /// The figures a scrape shows: this process's alone, or every worker's summed.
    package func aggregated() -> VLLMFigures {
        let own = self.state.withLock { state in
            // Publish ours first, so the files hold what this scrape shows.
            self.directory?.write(state.figures)
            state.lastFlush = .now
            return state.figures
        }
        guard let directory = self.directory else { return own }
        var total = own
        for file in directory.readAll() where file.pid != directory.pid {
            total.addCounters(file.figures)
            if file.live { total.addLive(file.figures) }
        }
        return total
    }

    /// The `vllm:` exposition (Prometheus text format 0.0.4, as `prometheus_client`
    /// writes it: counters' `# TYPE` names end in `_total`).
    package func exposition(modelName: String, maxLoras fallback: Int) -> String {
        let figures = self.aggregated()
        let maxLoras = Int(self.maxLoras.load(ordering: .relaxed))
        return Self.render(
            figures, modelName: modelName, maxLoras: maxLoras > 0 ? maxLoras : fallback,
            now: Double(LeaderMutationService.nowUnixMs()) / 1000)
    }

    static func render(_ figures: VLLMFigures, modelName: String, maxLoras: Int, now: Double) -> String {
        let base = "model_name=\"\(Self.escape(modelName))\",engine=\"0\""
        var text = ""
        func family(_ name: String, _ type: String, _ help: String) {
            text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }
        func sample(_ name: String, _ labels: String, _ value: Double) {
            text += "\(name){\(labels)} \(Self.format(value))\n"
        }
        func histogram(_ name: String, _ help: String, _ values: HistogramFigures, _ bounds: [Double]) {
            family(name, "histogram", help)
            var cumulative: UInt64 = 0
            for (index, bound) in bounds.enumerated() {
                cumulative &+= values.counts[index]
                sample(name + "_bucket", base + ",le=\"\(Self.format(bound))\"", Double(cumulative))
            }
            cumulative &+= values.counts[bounds.count]
            sample(name + "_bucket", base + ",le=\"+Inf\"", Double(cumulative))
            sample(name + "_count", base, Double(cumulative))
            sample(name + "_sum", base, values.sum)
        }
        family("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.")
        sample("vllm:num_requests_running", base, Double(max(figures.running, 0)))
        family("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.")
        sample("vllm:num_requests_waiting", base, Double(max(figures.waiting, 0)))
        family("vllm:lora_requests_info", "gauge", "Running stats on lora requests.")
        let running = figures.runningAdapters.keys.sorted().joined(separator: ",")
        let waiting = figures.waitingAdapters.keys.sorted().joined(separator: ",")
        sample(
            "vllm:lora_requests_info",
            "max_lora=\"\(maxLoras)\",running_lora_adapters=\"\(Self.escape(running))\",waiting_lora_adapters=\"\(Self.escape(waiting))\"",
            now)
        family("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.")
        sample("vllm:prompt_tokens_total", base, Double(figures.promptTokens))
        family("vllm:prefix_cache_queries_total", "counter", "Prefix cache queries, in terms of number of queried tokens.")
        sample("vllm:prefix_cache_queries_total", base, Double(figures.prefixCacheQueries))
        family("vllm:prefix_cache_hits_total", "counter", "Prefix cache hits, in terms of number of cached tokens.")
        sample("vllm:prefix_cache_hits_total", base, Double(figures.prefixCacheHits))
        family("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.")
        sample("vllm:generation_tokens_total", base, Double(figures.generationTokens))
        family("vllm:request_success_total", "counter", "Count of successfully processed requests.")
        for (index, reason) in VLLMSeries.finishedReasons.enumerated() {
            sample("vllm:request_success_total", base + ",finished_reason=\"\(reason)\"", Double(figures.success[index]))
        }
        histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", figures.timeToFirstToken,
            VLLMSeries.timeToFirstTokenBuckets)
        histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", figures.interTokenLatency,
            VLLMSeries.interTokenLatencyBuckets)
        histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", figures.requestLatency,
            VLLMSeries.requestLatencyBuckets)
        return text
    }

    /// A sample value or `le` bound as Python's `repr(float)` spells the ones used here
    /// (`1.0`, `0.001`, `2560.0`), so `le` labels match vLLM's byte for byte.
    static func format(_ value: Double) -> String {
        guard value.isFinite else { return value.isNaN ? "NaN" : (value > 0 ? "+Inf" : "-Inf") }
        return "\(value)"
    }

    /// A label value escaped for the text format (`\`, `"`, newline).
    static func escape(_ value: String) -> String {
        var result = ""
        for character in value {
            switch character {
            case "\\": result += "\\\\"
            case "\"": result += "\\\""
            case "\n": result += "\\n"
            default: result.append(character)
            }
        }
        return result
    }
}

extension Duration {
    /// Seconds as a `Double`.
    var seconds: Double {
        let (seconds, attoseconds) = self.components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}

/// The directory of per-process `vllm:` figure files (`LORIKEET_METRICS_DIR`, made by the
/// supervisor under its state directory, mode 0700, wiped at its start): vLLM's
/// `PROMETHEUS_MULTIPROC_DIR`.
///
/// - `worker-<pid>.json`: one live or dead worker's figures, replaced atomically
///   (temporary file + `rename`) by that worker only;
/// - `retired.json`: the summed counters of dead workers whose files were folded in
///   (`compact()`, at a worker's start), so the directory does not grow with restarts;
/// - `.lock`: `flock`, shared while a scrape reads, exclusive while `compact()` folds.
///
/// Files are opened with `O_NOFOLLOW`, must be regular and at most `maximumFileBytes`,
/// and must parse exactly; anything else is skipped.
struct MultiprocessMetricsDirectory: Sendable {
    let path: String
    let pid: Int32
    static let maximumFileBytes = 4 * 1024 * 1024
    static let retiredPID: Int32 = 0

    /// One file's figures and whether its process is alive.
    struct File {
        var pid: Int32
        var figures: VLLMFigures
        var live: Bool
    }

    private var ownName: String { "worker-\(self.pid).json" }

    /// Writes this process's figures (temporary file, then `rename`). Failures are ignored:
    /// the scrape shows what the file held before.
    func write(_ figures: VLLMFigures) {
        Self.writeFile(
            self.path + "/" + self.ownName, JSONWriter.encode(figures.json(pid: self.pid)),
            temporary: self.path + "/.worker-\(self.pid).tmp")
    }

    @discardableResult
    private static func writeFile(_ path: String, _ bytes: [UInt8], temporary: String) -> Bool {
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return false }
        let complete = bytes.withUnsafeBytes { buffer -> Bool in
            var offset = 0
            while offset < buffer.count {
                let written = Glibc.write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                if written < 0, errno == EINTR { continue }
                guard written > 0 else { return false }
                offset += written
            }
            return true
        }
        close(fd)
        guard complete, rename(temporary, path) == 0 else {
            unlink(temporary)
            return false
        }
        return true
    }

    private func withLock<T>(_ operation: Int32, _ body: () -> T) -> T {
        let fd = open(self.path + "/.lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        if fd >= 0 {
            while flock(fd, operation) != 0, errno == EINTR {}
        }
        defer { if fd >= 0 { close(fd) } }
        return body()
    }

    /// The figure files' names (`worker-<pid>.json`, `retired.json`).
    private func fileNames() -> [String] {
        guard let stream = opendir(self.path) else { return [] }
        defer { closedir(stream) }
        var names: [String] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name == "retired.json" || (name.hasPrefix("worker-") && name.hasSuffix(".json")) { names.append(name) }
        }
        return names.sorted()
    }

    private func read(_ name: String) -> (pid: Int32, figures: VLLMFigures)? {
        let fd = open(self.path + "/" + name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_size <= Self.maximumFileBytes else { return nil }
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size))
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + offset, $0.count - offset) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            offset += count
        }
        guard offset == bytes.count, let value = try? JSONParser.parse(bytes, maximumValues: 100_000) else { return nil }
        return VLLMFigures.parse(value)
    }

    static func isAlive(_ pid: Int32) -> Bool {
        pid > 0 && (kill(pid, 0) == 0 || errno == EPERM)
    }

    /// Every file's figures (the retired totals as a dead process), under a shared lock so
    /// a concurrent `compact()` is never seen half done.
    func readAll() -> [File] {
        self.withLock(LOCK_SH) {
            self.fileNames().compactMap { name in
                guard let (pid, figures) = self.read(name) else { return nil }
                let retired = name == "retired.json"
                return File(pid: retired ? Self.retiredPID : pid, figures: figures, live: !retired && Self.isAlive(pid))
            }
        }
    }

    /// Folds the files of dead workers into `retired.json` and removes them (their
    /// counters keep counting; their gauges are gone). Runs before this process writes
    /// its own file, so a file already bearing its pid is a dead process's (pid reuse).
    func compact() {
        self.withLock(LOCK_EX) {
            var retired = self.read("retired.json")?.figures ?? VLLMFigures()
            var folded: [String] = []
            for name in self.fileNames() where name != "retired.json" {
                let pid = Int32(name.dropFirst("worker-".count).dropLast(".json".count)) ?? 0
                guard pid == self.pid || !Self.isAlive(pid) else { continue }
                if let file = self.read(name), file.pid == pid { retired.addCounters(file.figures) }
                folded.append(name)
            }
            guard !folded.isEmpty,
                Self.writeFile(
                    self.path + "/retired.json", JSONWriter.encode(retired.countersOnly.json(pid: Self.retiredPID)),
                    temporary: self.path + "/.retired.tmp")
            else { return }
            for name in folded { unlink(self.path + "/" + name) }
        }
    }
}
