import Foundation
import LorikeetTestSupport
import Synchronization
import Testing

/// vLLM's `vllm:` series and LoRA filesystem resolver against real `lorikeet serve`
/// processes (`docs/vllm-compat.md`, "Metrics and the LoRA resolver"). In the
/// `ServeTests` suite (an extension), serialized with the other whole-server tests.
extension ServeTests {
    /// One parsed sample with its family (as `prometheus_client`'s parser names it).
    struct FamilySample {
        var family: String
        var type: String
        var name: String
        var labels: [String: String]
        var value: Double
    }

    /// Parses exposition text with prometheus_client (Tests/Fixtures/prom_parse.py), families kept.
    static func parseFamilies(_ text: String) throws -> [FamilySample] {
        let input = TestEnvironment.temporaryDirectory("lk-prom") + "/scrape.txt"
        try Data(text.utf8).write(to: URL(fileURLWithPath: input))
        let script = TestEnvironment.repoRoot + "/Tests/Fixtures/prom_parse.py"
        let (status, output) = try TestEnvironment.runProcess("/bin/sh", ["-c", "\"$0\" \"$1\" < \"$2\"", Self.python, script, input])
        guard status == 0 else { throw TestEnvironment.Failure("prometheus_client could not parse the scrape: \(output)\n\(text)") }
        return output.split(separator: "\n").compactMap { line in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return nil }
            return FamilySample(
                family: object["family"] as? String ?? "", type: object["type"] as? String ?? "", name: object["name"] as? String ?? "",
                labels: object["labels"] as? [String: String] ?? [:], value: (object["value"] as? NSNumber)?.doubleValue ?? .nan)
        }
    }

    static func sum(_ samples: [FamilySample], _ name: String, _ labels: [String: String] = [:]) -> Double {
        samples.filter { sample in sample.name == name && labels.allSatisfy { sample.labels[$0.key] == $0.value } }
            .reduce(0) { $0 + $1.value }
    }

    /// `/metrics` through the shared port (whichever worker answers), parsed.
    static func scrapeVLLM(_ server: ServerUnderTest) throws -> [FamilySample] {
        let response = try TestHTTP.request(port: server.port, path: "/metrics")
        guard response.status == 200 else { throw TestEnvironment.Failure("/metrics answered \(response.status)") }
        return try Self.parseFamilies(response.body)
    }

    static let expectedTTFTBuckets = [
        "0.001", "0.005", "0.01", "0.02", "0.04", "0.06", "0.08", "0.1", "0.25", "0.5", "0.75", "1.0", "2.5", "5.0", "7.5", "10.0",
        "20.0", "40.0", "80.0", "160.0", "640.0", "2560.0", "+Inf",
    ]

    @Test(
        "vllm: series: families, types, labels, buckets; streamed, non-streamed and adapter requests; the same sums through either worker, across a kill -9"
    )
    func vllmMetrics() throws {
        let server = try ServerUnderTest(workers: 2)
        defer { server.stop() }
        #expect(try Self.load(server, "x1").status == 200)
        // N requests on fresh connections (the kernel spreads them over both workers).
        var promptTokens = 0
        var completionTokens = 0
        let n = 12
        for index in 0..<n {
            let model = index % 3 == 2 ? "x1" : "tiny"
            var body: [String: Any] = ["model": model, "prompt": "hello \(index)", "max_tokens": 4, "ignore_eos": true]
            if index % 2 == 1 {
                body["stream"] = true
                body["stream_options"] = ["include_usage": true]
            }
            let response = try TestHTTP.post(port: server.port, "/v1/completions", body)
            #expect(response.status == 200, "\(response.body.prefix(300))")
            var usage = response.json?["usage"] as? [String: Any]
            if index % 2 == 1 {
                let events = response.body.components(separatedBy: "\n").filter { $0.hasPrefix("data: {") }
                let last = events.last.flatMap { try? JSONSerialization.jsonObject(with: Data($0.dropFirst(6).utf8)) as? [String: Any] }
                usage = last?["usage"] as? [String: Any]
            }
            promptTokens += usage?["prompt_tokens"] as? Int ?? -1000
            completionTokens += usage?["completion_tokens"] as? Int ?? -1000
        }
        // Both workers served some (per-worker lorikeet_* series).
        let perSlot = try Self.perWorker(server, "/metrics") { response in
            guard let range = response.body.range(of: #"lorikeet_worker_info\{[^}]*slot="(\d+)""#, options: .regularExpression) else {
                return nil
            }
            return Int(response.body[range].split(separator: "\"")[1])
        }
        for (slot, scrape) in perSlot {
            let own = Self.sum(try Self.parseFamilies(scrape.body), "lorikeet_http_requests_total", ["route": "/v1/completions"])
            #expect(own > 0 && own < Double(n), "slot \(slot) served \(own) of \(n): the test needs both workers")
        }

        // Every scrape through the shared port shows the same fleet-wide sums.
        for _ in 0..<8 {
            let samples = try Self.scrapeVLLM(server)
            #expect(Self.sum(samples, "vllm:request_success_total") == Double(n))
            #expect(Self.sum(samples, "vllm:request_success_total", ["finished_reason": "length"]) == Double(n))
            #expect(Self.sum(samples, "vllm:prompt_tokens_total") == Double(promptTokens))
            #expect(Self.sum(samples, "vllm:generation_tokens_total") == Double(completionTokens))
            #expect(Self.sum(samples, "vllm:time_to_first_token_seconds_count") == Double(n))
            #expect(Self.sum(samples, "vllm:e2e_request_latency_seconds_count") == Double(n))
            let itl = Self.sum(samples, "vllm:inter_token_latency_seconds_count")
            #expect(itl > 0 && itl <= Double(completionTokens - n), "ITL observations: \(itl)")
            #expect(Self.sum(samples, "vllm:num_requests_running") == 0)
            #expect(Self.sum(samples, "vllm:num_requests_waiting") == 0)
        }

        // Families, types, labels and buckets as vLLM's prometheus_client writes them.
        let samples = try Self.scrapeVLLM(server)
        let types = Dictionary(
            samples.filter { $0.family.hasPrefix("vllm:") }.map { ($0.family, $0.type) }, uniquingKeysWith: { a, _ in a })
        #expect(
            types == [
                "vllm:num_requests_running": "gauge", "vllm:num_requests_waiting": "gauge", "vllm:lora_requests_info": "gauge",
                "vllm:prompt_tokens": "counter", "vllm:generation_tokens": "counter", "vllm:request_success": "counter",
                "vllm:time_to_first_token_seconds": "histogram", "vllm:inter_token_latency_seconds": "histogram",
                "vllm:e2e_request_latency_seconds": "histogram", "vllm:prefix_cache_queries": "counter",
                "vllm:prefix_cache_hits": "counter",
            ], "\(types)")
        for sample in samples where sample.family.hasPrefix("vllm:") && sample.family != "vllm:lora_requests_info" {
            #expect(sample.labels["model_name"] == "tiny" && sample.labels["engine"] == "0", "\(sample)")
        }
        #expect(
            Set(samples.filter { $0.family == "vllm:request_success" }.compactMap { $0.labels["finished_reason"] })
                == ["stop", "length", "abort", "error"])
        #expect(
            samples.filter { $0.name == "vllm:time_to_first_token_seconds_bucket" }.compactMap { $0.labels["le"] }
                == Self.expectedTTFTBuckets)
        #expect(samples.filter { $0.name == "vllm:inter_token_latency_seconds_bucket" }.count == 20)
        #expect(samples.filter { $0.name == "vllm:e2e_request_latency_seconds_bucket" }.count == 22)
        let info = samples.filter { $0.family == "vllm:lora_requests_info" }
        #expect(
            info.count == 1
                && Set(info.first?.labels.keys.map { $0 } ?? []) == ["max_lora", "running_lora_adapters", "waiting_lora_adapters"])
        #expect(info.first?.labels["running_lora_adapters"] == "" && (Int(info.first?.labels["max_lora"] ?? "") ?? 0) > 0)
        #expect((info.first?.value ?? 0) > 1_600_000_000, "lora_requests_info's value is the Unix time")

        // lora_requests_info names the adapter while its request is in the engine. The engine
        // is paused (SIGSTOP) before the request is sent, so the request waits for its first
        // token (vLLM's "waiting") until the engine is resumed: no race with the tiny model.
        let enginePID = server.childPIDs().first { pid in
            let argv = ((try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? "").split(separator: "\u{0}")
            return argv.count > 1 && argv[1] == "engine"
        }
        guard let enginePID else {
            Issue.record("no engine process among the supervisor's children")
            return
        }
        let streams = 1
        var sawRunning = false
        kill(enginePID, SIGSTOP)
        let done = Atomic<Bool>(false)
        let thread = Thread {
            _ = try? TestHTTP.post(
                port: server.port, "/v1/completions",
                ["model": "x1", "prompt": "hold", "max_tokens": 250, "ignore_eos": true, "stream": true])
            done.store(true, ordering: .sequentiallyConsistent)
        }
        thread.start()
        let deadline = ContinuousClock.now + .seconds(20)  // a hang guard, not a timing assertion
        while !sawRunning, !done.load(ordering: .sequentiallyConsistent), ContinuousClock.now < deadline {
            guard let scrape = try? Self.scrapeVLLM(server) else { continue }
            let labels = scrape.first { $0.family == "vllm:lora_requests_info" }?.labels
            if labels?["waiting_lora_adapters"] == "x1", Self.sum(scrape, "vllm:num_requests_waiting") == 1 { sawRunning = true }
        }
        kill(enginePID, SIGCONT)
        while !done.load(ordering: .sequentiallyConsistent), ContinuousClock.now < deadline + .seconds(20) { usleep(10_000) }
        #expect(sawRunning, "waiting_lora_adapters never showed x1 while its request waited for the paused engine")
        try Self.waitFor("the streams counted", timeout: 20) {
            let scrape = try Self.scrapeVLLM(server)
            return Self.sum(scrape, "vllm:request_success_total", ["finished_reason": "length"]) == Double(n + streams)
                && Self.sum(scrape, "vllm:num_requests_running") == 0
                && scrape.first { $0.family == "vllm:lora_requests_info" }?.labels["running_lora_adapters"] == ""
        }

        // A worker killed -9: its counts stay (a counter never goes backwards).
        let victim = try server.workerList().compactMap { $0["pid"] as? Int }.first ?? 0
        #expect(victim > 0)
        kill(Int32(victim), SIGKILL)
        try Self.waitFor("the killed worker replaced", timeout: 60) {
            let workers = try server.workerList()
            let ready = try server.status()["ready_workers"] as? Int
            return !workers.contains { $0["pid"] as? Int == victim } && ready == 2
        }
        for _ in 0..<6 {
            let scrape = try Self.scrapeVLLM(server)
            #expect(Self.sum(scrape, "vllm:request_success_total") == Double(n + streams))
            #expect(Self.sum(scrape, "vllm:generation_tokens_total") >= Double(completionTokens))
        }
    }

    @Test(
        "prefix caching: a prompt starting like an earlier one reports prompt_tokens_details.cached_tokens (only with --enable-prompt-tokens-details) and counts in vllm:prefix_cache_hits_total"
    )
    func prefixCaching() throws {
        let system = "You are a terse assistant who answers in one line. "
        // BOS and the system prompt's bytes (the fixture's tokens are bytes; "when?" also
        // shares "wh" with "why?"), in whole blocks of 16.
        let expected = [0, 48, 48]
        #expect((1 + system.utf8.count) / 16 * 16 == 48 && (1 + system.utf8.count + 2) / 16 * 16 == 48)
        for details in [true, false] {
            let server = try ServerUnderTest(workers: 2, extraArguments: details ? ["--enable-prompt-tokens-details"] : [])
            defer { server.stop() }
            var prompts = 0
            for (index, question) in ["why?", "how?", "when?"].enumerated() {
                let stream = index == 2
                var body: [String: Any] = ["model": "tiny", "prompt": system + question, "max_tokens": 4, "ignore_eos": true]
                if stream {
                    body["stream"] = true
                    body["stream_options"] = ["include_usage": true]
                }
                let response = try TestHTTP.post(port: server.port, "/v1/completions", body)
                #expect(response.status == 200, "\(response.body.prefix(300))")
                var usage = response.json?["usage"] as? [String: Any]
                if stream {
                    let events = response.body.components(separatedBy: "\n").filter { $0.hasPrefix("data: {") }
                    let last = events.last.flatMap { try? JSONSerialization.jsonObject(with: Data($0.dropFirst(6).utf8)) as? [String: Any] }
                    usage = last?["usage"] as? [String: Any]
                }
                prompts += usage?["prompt_tokens"] as? Int ?? -1000
                let cached = (usage?["prompt_tokens_details"] as? [String: Any])?["cached_tokens"] as? Int
                // vLLM leaves the details out when nothing was cached, and without the flag.
                #expect(
                    cached == (details && expected[index] > 0 ? expected[index] : nil), "request \(index): \(String(describing: usage))")
            }
            let samples = try Self.scrapeVLLM(server)
            #expect(Self.sum(samples, "vllm:prefix_cache_queries_total") == Double(prompts))
            #expect(Self.sum(samples, "vllm:prefix_cache_hits_total") == Double(expected.reduce(0, +)))
        }
    }

    /// A resolver directory under a fresh temporary directory: `good`, `conc`, `later`-to-be,
    /// `wrongbase` (another base model), `a/b` (nested), `escape` (a symlink out of it).
    static func resolverDirectory(_ fixture: String) throws -> String {
        let root = TestEnvironment.temporaryDirectory("lk-resolver")
        let directory = root + "/loras"
        let files = FileManager.default
        try files.createDirectory(atPath: directory + "/a", withIntermediateDirectories: true)
        for (name, base) in [("good", "tiny"), ("conc", "tiny"), ("wrongbase", "other-model"), ("a/b", "tiny")] {
            try Self.copyAdapter(from: fixture + "/adapters/plain", to: directory + "/" + name, base: base)
        }
        try Self.copyAdapter(from: fixture + "/adapters/plain", to: root + "/outside", base: "tiny")
        try files.createSymbolicLink(atPath: directory + "/escape", withDestinationPath: root + "/outside")
        return directory
    }

    static func copyAdapter(from source: String, to destination: String, base: String) throws {
        try FileManager.default.copyItem(atPath: source, toPath: destination)
        let configPath = destination + "/adapter_config.json"
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: configPath))) as? [String: Any] ?? [:]
        config["base_model_name_or_path"] = base
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: configPath))
    }

    @Test(
        "LoRA resolver: a new name loads once through the leader and every worker lists it; hostile names, misses and concurrent first requests"
    )
    func loraResolver() throws {
        let fixture = try TestEnvironment.fixtureDirectory()
        let directory = try Self.resolverDirectory(fixture)
        let server = try ServerUnderTest(
            workers: 2,
            environment: [
                "VLLM_PLUGINS": "lora_filesystem_resolver", "VLLM_LORA_RESOLVER_CACHE_DIR": directory,
                "LORIKEET_RUNTIME_LORA_ALLOWED_PATH_PREFIXES": fixture + ":" + (directory as NSString).deletingLastPathComponent,
                "LORIKEET_LORA_RESOLVER_MISS_TTL_MS": "3000",
            ])
        defer { server.stop() }

        // First request for a name in the directory: loaded, served, listed everywhere.
        let first = try TestHTTP.post(port: server.port, "/v1/completions", Self.completion("good"))
        #expect(first.status == 200, "\(first.body.prefix(300))\n\(server.log.suffix(2000))")
        #expect(try Self.table(server)["good"] != nil)
        #expect(try Self.modelViews(server, connections: 12) == [["good", "tiny"]])

        // Hostile or foreign names: model-not-found, nothing loaded.
        for name in ["..", "a/b", "escape", "wrongbase", "missing", "../loras/good2", "/etc", ".hidden", "good/..", "a%2Fb"] {
            let response = try TestHTTP.post(port: server.port, "/v1/completions", Self.completion(name))
            #expect(response.status == 404, "\(name): \(response.status) \(response.body.prefix(200))")
            let error = response.json?["error"] as? [String: Any]
            #expect(error?["code"] as? String == "model_not_found", "\(name): \(response.body.prefix(200))")
        }
        #expect(try Self.table(server).keys.sorted() == ["good"])

        // 8 concurrent first requests for one name: one load.
        let statuses = Mutex<[Int]>([])
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            let status = (try? TestHTTP.post(port: server.port, "/v1/completions", Self.completion("conc")).status) ?? -1
            statuses.withLock { $0.append(status) }
        }
        #expect(statuses.withLock { $0 } == Array(repeating: 200, count: 8))
        let loads = try Self.auditLines(server).filter { $0["action"] as? String == "load" && $0["code"] as? String == "OK" }
        #expect(loads.compactMap { $0["name"] as? String }.sorted() == ["conc", "good"], "\(loads)")
        #expect(loads.allSatisfy { $0["caller"] as? String == "lora-resolver" })
        #expect(try Self.table(server).keys.sorted() == ["conc", "good"])

        // A miss is a 404; the adapter appearing meanwhile is found once the remembered miss
        // expires. (That the miss is remembered within its TTL is not asserted here: on a
        // loaded machine the requests themselves may outlast the test's short TTL.)
        for _ in 0..<10 {
            #expect(try TestHTTP.post(port: server.port, "/v1/completions", Self.completion("later")).status == 404)
        }
        try Self.copyAdapter(from: fixture + "/adapters/plain", to: directory + "/later", base: "tiny")
        Thread.sleep(forTimeInterval: 3.5)
        #expect(try TestHTTP.post(port: server.port, "/v1/completions", Self.completion("later")).status == 200)

        // An unload of a resolved adapter works; the next request resolves it again.
        #expect(try Self.unload(server, "good").status == 200)
        #expect(try TestHTTP.post(port: server.port, "/v1/completions", Self.completion("good")).status == 200)
        #expect(try Self.table(server).keys.sorted() == ["conc", "good", "later"])
    }

    @Test("--lora-resolver-dir: resolves like the environment variables; a bad directory stops serve before anything starts")
    func loraResolverFlag() throws {
        let fixture = try TestEnvironment.fixtureDirectory()
        let directory = try Self.resolverDirectory(fixture)
        let prefixes = fixture + ":" + (directory as NSString).deletingLastPathComponent
        let server = try ServerUnderTest(
            workers: 2, extraArguments: ["--lora-resolver-dir", directory],
            environment: ["LORIKEET_RUNTIME_LORA_ALLOWED_PATH_PREFIXES": prefixes])
        defer { server.stop() }
        let first = try TestHTTP.post(port: server.port, "/v1/completions", Self.completion("good"))
        #expect(first.status == 200, "\(first.body.prefix(300))\n\(server.log.suffix(2000))")
        #expect(try Self.table(server)["good"] != nil)

        // Refused before any process starts: exit 64 and the reason.
        for (arguments, prefixList, expected) in [
            (["--lora-resolver-dir", directory + "/missing"], prefixes, "must be set to a valid directory"),
            (["--lora-resolver-dir", directory], fixture, "not under the allowed adapter path prefixes"),
            ([], prefixes, "must be set to a valid directory"),
        ] {
            var environment = ProcessInfo.processInfo.environment
            environment["LORIKEET_ALLOW_RUNTIME_LORA_UPDATING"] = "true"
            environment["LORIKEET_RUNTIME_LORA_ALLOWED_PATH_PREFIXES"] = prefixList
            if arguments.isEmpty { environment["LORIKEET_LORA_RESOLVER_DIR"] = directory + "/missing" }
            let (status, output) = try TestEnvironment.runProcess(
                try TestEnvironment.lorikeetBinary,
                [
                    "serve", "--workers", "1", "--port", "\(TestEnvironment.freePort())", "--state-dir",
                    TestEnvironment.temporaryDirectory("lk-resolver-bad"), "--model", fixture + "/model",
                ] + arguments, environment: environment)
            #expect(status == 64, "\(arguments): \(output)")
            #expect(output.contains(expected), "\(arguments): \(output)")
        }
    }

    @Test("LoRA resolver: off without runtime updating, and with VLLM_PLUGINS not naming it")
    func loraResolverGates() throws {
        let fixture = try TestEnvironment.fixtureDirectory()
        let directory = try Self.resolverDirectory(fixture)
        let prefixes = fixture + ":" + (directory as NSString).deletingLastPathComponent
        let server = try ServerUnderTest(
            workers: 1,
            environment: [
                "VLLM_PLUGINS": "some_other_plugin", "VLLM_LORA_RESOLVER_CACHE_DIR": directory,
                "LORIKEET_RUNTIME_LORA_ALLOWED_PATH_PREFIXES": prefixes,
            ])
        defer { server.stop() }
        #expect(try TestHTTP.post(port: server.port, "/v1/completions", Self.completion("good")).status == 404)
        #expect(try Self.table(server).isEmpty)
    }
}
