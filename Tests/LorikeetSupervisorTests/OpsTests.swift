import Foundation
import LorikeetProto
import LorikeetTestSupport
import Testing

/// Operations features against real `lorikeet serve` processes: audit log, the
/// `/v1/lora_adapters` routes, `/metrics`, sd_notify, the Python admin client, ctl errors.
/// In the `ServeTests` suite (an extension), so they are serialized with the other
/// whole-server tests on 2 cores.
extension ServeTests {
    /// Audit log lines as JSON objects.
    static func auditLines(_ server: ServerUnderTest) throws -> [[String: Any]] {
        let text = (try? String(contentsOfFile: server.stateDirectory + "/audit.log", encoding: .utf8)) ?? ""
        return try text.split(separator: "\n").map { line in
            guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                throw TestEnvironment.Failure("audit line is not a JSON object: \(line)")
            }
            return object
        }
    }

    /// GETs `path` on fresh connections until every worker slot answered once (the kernel
    /// spreads connections over the slots' listeners); the body's JSON per slot.
    static func perWorker(_ server: ServerUnderTest, _ path: String, slot: (TestHTTP.Response) -> Int?) throws -> [Int: TestHTTP.Response] {
        var seen: [Int: TestHTTP.Response] = [:]
        for _ in 0..<200 where seen.count < server.workers {
            let response = try TestHTTP.request(port: server.port, path: path)
            if let index = slot(response), seen[index] == nil { seen[index] = response }
        }
        guard seen.count == server.workers else { throw TestEnvironment.Failure("only slots \(seen.keys.sorted()) answered \(path)") }
        return seen
    }

    static var python: String { TestEnvironment.repoRoot + "/.venv/bin/python" }

    @Test("audit log: one JSON line per load/unload through HTTP, admin and batch, failures included")
    func auditLog() throws {
        let server = try ServerUnderTest(workers: 2)
        defer { server.stop() }
        #expect(try Self.load(server, "audited").status == 200)
        let missing = try TestHTTP.post(
            port: server.port, "/v1/load_lora_adapter", ["lora_name": "ghost", "lora_path": server.adapterDirectory + "/missing"])
        #expect(missing.status >= 400)
        let (unloadStatus, unloadOutput) = try server.ctl(["unload", "audited"])
        #expect(unloadStatus == 0, "\(unloadOutput)")
        let batchFile = server.stateDirectory + "/batch.json"
        try Data(
            #"[{"load": {"lora_name": "b1", "lora_path": "\#(server.adapterDirectory)/plain"}}, {"unload": {"lora_name": "nope"}}]"#.utf8
        ).write(to: URL(fileURLWithPath: batchFile))
        let (batchStatus, batchOutput) = try server.ctl(["batch", batchFile])
        #expect(batchStatus == 1, "one batch item fails: \(batchOutput)")

        let lines = try Self.auditLines(server)
        #expect(lines.count == 5, "\(lines)")
        guard lines.count == 5 else { return }
        let load = lines[0]
        #expect(load["action"] as? String == "load" && load["name"] as? String == "audited")
        #expect(load["code"] as? String == "OK" && load["id"] as? Int == 1)
        #expect(load["via"] as? String == "worker" && [0, 1].contains(load["slot"] as? Int ?? -1))
        #expect((load["caller"] as? String ?? "").hasPrefix("127.0.0.1:"))
        #expect((load["path"] as? String ?? "").hasSuffix("/adapters/plain"))
        #expect((load["time"] as? String ?? "").hasSuffix("Z") && (load["table_version"] as? Int) == 1)
        let failed = lines[1]
        #expect(failed["name"] as? String == "ghost" && failed["code"] as? String != "OK")
        #expect(!(failed["message"] as? String ?? "").isEmpty)
        let unload = lines[2]
        #expect(unload["action"] as? String == "unload" && unload["via"] as? String == "admin" && unload["slot"] as? Int == -1)
        #expect(unload["id"] as? Int == 1 && unload["code"] as? String == "OK")
        #expect((unload["caller"] as? String ?? "").hasPrefix("uid=\(getuid()) pid="))
        #expect(lines[3]["batch"] as? Int == 0 && lines[3]["code"] as? String == "OK" && lines[3]["id"] as? Int == 2)
        #expect(lines[4]["batch"] as? Int == 1 && lines[4]["code"] as? String == "NOT_FOUND")
    }

    @Test("GET /v1/lora_adapters and POST /v1/lora_adapters/batch through different workers; /metrics parses and counts")
    func adapterRoutesAndMetrics() throws {
        let server = try ServerUnderTest(workers: 2)
        defer { server.stop() }
        let plain = server.adapterDirectory + "/plain"
        let batch = try TestHTTP.post(
            port: server.port, "/v1/lora_adapters/batch",
            [
                "items": [
                    ["load": ["lora_name": "x1", "lora_path": plain]],
                    ["load": ["lora_name": "x2", "lora_path": server.adapterDirectory + "/missing"]],
                    ["unload": ["lora_name": "never-loaded"]],
                    ["load": ["lora_name": "x3", "lora_path": server.adapterDirectory + "/rslora"]],
                    ["load": ["lora_name": "x1", "lora_path": plain]],
                ]
            ])
        #expect(batch.status == 200, "\(batch.body)")
        let results = batch.json?["results"] as? [[String: Any]] ?? []
        #expect(results.map { $0["index"] as? Int ?? -1 } == [0, 1, 2, 3, 4])
        #expect(results.map { $0["status"] as? Int ?? 0 } == [200, 400, 404, 200, 400], "\(results)")
        #expect(results[0]["lora_int_id"] as? Int == 1 && results[3]["lora_int_id"] as? Int == 2)
        #expect((results[2]["error"] as? [String: Any])?["message"] != nil)
        #expect(batch.json?["succeeded"] as? Int == 2 && batch.json?["failed"] as? Int == 3)
        // A malformed item refuses the whole call before anything runs.
        let malformed = try TestHTTP.post(
            port: server.port, "/v1/lora_adapters/batch",
            ["items": [["load": ["lora_name": "y1", "lora_path": plain]], ["load": ["lora_name": "y2"]]]])
        #expect(malformed.status == 400 && malformed.body.contains("items[1].load.lora_path"), "\(malformed.body)")

        // Three completions on x1, spread over the workers by the kernel.
        for _ in 0..<3 { #expect(try TestHTTP.post(port: server.port, "/v1/completions", Self.completion("x1")).status == 200) }
        // A request is counted once its last byte is written, which a client can see first:
        // wait for the per-adapter counts (updated after every metric of the request).
        func listPerWorker() throws -> [Int: TestHTTP.Response] {
            try Self.perWorker(server, "/v1/lora_adapters") { $0.json?["worker_slot"] as? Int }
        }
        func x1Counted() throws -> Int {
            try listPerWorker().values.reduce(0) { total, response in
                let data = response.json?["data"] as? [[String: Any]] ?? []
                return total + (data.first { $0["name"] as? String == "x1" }?["requests"] as? Int ?? 0)
            }
        }
        try ServeTests.waitFor("the three x1 requests counted", timeout: 10) { try x1Counted() >= 3 }

        let listings = try listPerWorker()
        var x1Requests = 0
        for (slot, response) in listings {
            let data = response.json?["data"] as? [[String: Any]] ?? []
            #expect(data.compactMap { $0["name"] as? String }.sorted() == ["x1", "x3"], "slot \(slot): \(response.body)")
            #expect(response.json?["table_version"] as? Int == 2)
            let x1 = data.first { $0["name"] as? String == "x1" }
            #expect(x1?["lora_int_id"] as? Int == 1 && (x1?["loaded_at"] as? Int ?? 0) > 1_600_000_000)
            let x1Path = (x1?["path"] as? String) ?? ""
            #expect(x1Path.hasSuffix("/plain"))
            x1Requests += x1?["requests"] as? Int ?? 0
            #expect((x1?["completion_tokens"] as? Int ?? 0) >= (x1?["requests"] as? Int ?? 0))
        }
        #expect(x1Requests == 3, "per-worker request counts for x1 should add up to 3")

        // /metrics on each worker parses with prometheus_client; counts add up across workers.
        let scrapes = try Self.perWorker(server, "/metrics") { response in
            guard let range = response.body.range(of: #"lorikeet_worker_info\{[^}]*slot="(\d+)""#, options: .regularExpression) else {
                return nil
            }
            return Int(response.body[range].split(separator: "\"")[1])
        }
        var completions = 0.0
        var adapterRequests = 0.0
        var mutations = 0.0
        for (slot, scrape) in scrapes {
            #expect(scrape.headers["content-type"]?.hasPrefix("text/plain") == true)
            let samples = try Self.parsePrometheus(scrape.body)
            func value(_ name: String, _ labels: [String: String] = [:]) -> Double {
                samples.filter { sample in
                    sample.name == name && labels.allSatisfy { sample.labels[$0.key] == $0.value }
                }.reduce(0) { $0 + $1.value }
            }
            completions += value("lorikeet_http_requests_total", ["route": "/v1/completions", "status": "200", "model": "x1"])
            adapterRequests += value("lorikeet_adapter_requests_total", ["adapter": "x1"])
            mutations += value("lorikeet_adapter_mutations_total", ["action": "load"])
            #expect(value("lorikeet_engine_up") == 1, "slot \(slot)")
            #expect(value("lorikeet_adapter_table_version") == 2, "slot \(slot)")
            #expect(value("lorikeet_adapters_loaded") == 2)
            #expect(samples.contains { $0.name == "lorikeet_http_request_duration_seconds_bucket" })
        }
        #expect(completions == 3 && adapterRequests == 3, "completions \(completions), adapter requests \(adapterRequests)")
        #expect(mutations == 4, "batch loads counted by the worker that received them: \(mutations)")
        let ttft = try Self.parsePrometheus(scrapes.values.map(\.body).joined())
            .filter { $0.name == "lorikeet_time_to_first_token_seconds_count" }.reduce(0) { $0 + $1.value }
        #expect(ttft == 3)
    }

    @Test("--metrics-port-base: every slot's own /metrics on base + slot, through a kill -9 and a rolling restart")
    func perSlotMetricsPorts() throws {
        let base = TestEnvironment.freePorts(consecutive: 2)
        let server = try ServerUnderTest(workers: 2, extraArguments: ["--metrics-port-base", "\(base)"])
        defer { server.stop() }
        func scrapeReports(slot: Int) -> Bool {
            guard let response = try? TestHTTP.request(port: base + UInt16(slot), path: "/metrics", timeoutSeconds: 10),
                response.status == 200
            else { return false }
            return response.body.contains(#"lorikeet_worker_info{"#) && response.body.contains(#"slot="\#(slot)""#)
        }
        for slot in 0..<2 {
            #expect(scrapeReports(slot: slot), "slot \(slot) on port \(Int(base) + slot)")
            let scrape = try TestHTTP.request(port: base + UInt16(slot), path: "/metrics")
            #expect(try Self.parsePrometheus(scrape.body).contains { $0.name == "lorikeet_engine_up" && $0.value == 1 })
            // Only metrics, health and version there: the API stays on the service port.
            #expect(try TestHTTP.request(port: base + UInt16(slot), path: "/v1/models").status == 404)
            #expect(try TestHTTP.request(port: base + UInt16(slot), path: "/health").status == 200)
        }
        // A respawned worker takes its slot's metrics port back.
        let victim = try server.workerList().first { ($0["slot"] as? Int) == 1 }
        kill(Int32(victim?["pid"] as? Int ?? 0), SIGKILL)
        try ServeTests.waitFor("slot 1 respawned and scraped") {
            try server.workerList().contains {
                ($0["slot"] as? Int) == 1 && ($0["pid"] as? Int) != (victim?["pid"] as? Int) && ($0["state"] as? String) == "ready"
            }
                && scrapeReports(slot: 1)
        }
        // A rolling restart: the replacement binds the port while the old worker drains (SO_REUSEPORT).
        let before = Set(try server.workerList().compactMap { $0["pid"] as? Int })
        server.signal(SIGHUP)
        try ServeTests.waitFor("every slot replaced and scraped", timeout: 120) {
            let now = try server.workerList()
            return now.count == 2 && now.allSatisfy { ($0["state"] as? String) == "ready" && !before.contains($0["pid"] as? Int ?? 0) }
                && scrapeReports(slot: 0) && scrapeReports(slot: 1)
        }
    }

    @Test("--metrics-port-base that overlaps --port is refused before anything starts")
    func metricsPortOverlap() throws {
        let port = TestEnvironment.freePort()
        let (status, output) = try TestEnvironment.runProcess(
            try TestEnvironment.lorikeetBinary,
            [
                "serve", "--workers", "2", "--port", "\(port)", "--metrics-port-base", "\(port - 1)", "--state-dir",
                TestEnvironment.temporaryDirectory("lk-overlap"),
            ])
        #expect(status != 0)
        #expect(output.contains("include --port \(port)"), "\(output)")
    }

    struct Sample {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    /// Parses exposition text with prometheus_client (Tests/Fixtures/prom_parse.py).
    static func parsePrometheus(_ text: String) throws -> [Sample] {
        let input = TestEnvironment.temporaryDirectory("lk-prom") + "/scrape.txt"
        try Data(text.utf8).write(to: URL(fileURLWithPath: input))
        let script = TestEnvironment.repoRoot + "/Tests/Fixtures/prom_parse.py"
        let (status, output) = try TestEnvironment.runProcess("/bin/sh", ["-c", "\"$0\" \"$1\" < \"$2\"", Self.python, script, input])
        guard status == 0 else { throw TestEnvironment.Failure("prometheus_client could not parse the scrape: \(output)\n\(text)") }
        return output.split(separator: "\n").compactMap { line in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return nil }
            return Sample(
                name: object["name"] as? String ?? "", labels: object["labels"] as? [String: String] ?? [:],
                value: (object["value"] as? NSNumber)?.doubleValue ?? .nan)
        }
    }

    @Test("sd_notify: a NOTIFY_SOCKET nobody reads (its queue full of pings) never stalls the supervisor; READY=1 still arrives")
    func systemdNotReading() throws {
        let directory = TestEnvironment.temporaryDirectory("lk-notify-stuck")
        let listener = try DatagramListener(path: directory + "/notify.sock")
        // A ping every 20 ms fills the datagram queue (10 by default) within a second of boot.
        let server = try ServerUnderTest(workers: 2, environment: ["NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "40000"])
        defer { server.stop() }
        Thread.sleep(forTimeInterval: 2)
        // A blocking sendto froze the loop here: the admin socket went unanswered.
        let (status, output) = try TestEnvironment.runProcess(
            try TestEnvironment.lorikeetBinary, ["ctl", "status", "--json", "--timeout", "10", "--state-dir", server.stateDirectory])
        #expect(status == 0, "\(output)")
        #expect(try TestHTTP.request(port: server.port, path: "/health").status == 200)
        #expect(server.log.contains("systemd is not reading NOTIFY_SOCKET"), "\(server.log.suffix(2000))")
        // Once systemd reads again, what waited goes out in order: READY=1 was not dropped.
        let ready = try listener.receive(until: "READY=1", timeoutSeconds: 10)
        #expect(ready.contains("MAINPID="), "\(ready)")
        server.signal(SIGTERM)
        #expect(try listener.receive(until: "STOPPING=1", timeoutSeconds: 30).contains("STOPPING=1"))
        #expect(server.waitForExit(timeoutSeconds: 30) == 0)
    }

    @Test("sd_notify: READY=1 once every worker is ready, WATCHDOG=1, STOPPING=1 on TERM; the Python admin client and ctl metrics work")
    func systemdNotifyAndClients() throws {
        let directory = TestEnvironment.temporaryDirectory("lk-notify")
        let listener = try DatagramListener(path: directory + "/notify.sock")
        let server = try ServerUnderTest(
            workers: 2, environment: ["NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "400000"], waitReady: false)
        defer { server.stop() }
        let ready = try listener.receive(until: "READY=1", timeoutSeconds: 120)
        #expect(ready.contains("STATUS=2/2 workers ready"), "\(ready)")
        // READY=1 comes only once every worker serves.
        #expect(try server.status()["ready_workers"] as? Int == 2)

        let (status, output) = try TestEnvironment.runProcess(
            Self.python, [TestEnvironment.repoRoot + "/ops/lorikeet_admin.py", "--state-dir", server.stateDirectory, "status"])
        #expect(status == 0, "\(output)")
        let reply = (try? JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any])?["status_reply"] as? [String: Any]
        #expect(reply?["workers"] as? Int == 2 && reply?["ready_workers"] as? Int == 2, "\(output)")
        #expect(reply?["engine"] as? String == "ENGINE_PHASE_RUNNING", "the Python client prints the enum by its .proto name")

        let (metricsStatus, metrics) = try TestEnvironment.runProcess(
            try TestEnvironment.lorikeetBinary, ["ctl", "metrics", "--state-dir", server.stateDirectory])
        #expect(metricsStatus == 0, "\(metrics)")
        let samples = try Self.parsePrometheus(metrics)
        #expect(samples.first { $0.name == "lorikeet_supervisor_up" }?.value == 1)
        #expect(samples.first { $0.name == "lorikeet_workers_ready" }?.value == 2)
        #expect(samples.first { $0.name == "lorikeet_leader_epoch" }?.value ?? 0 >= 1)
        #expect(samples.filter { $0.name == "lorikeet_worker_state" && $0.labels["state"] == "ready" && $0.value == 1 }.count == 2)

        // WATCHDOG_USEC=0.4 s: WATCHDOG=1 every 0.2 s while the loop turns.
        #expect(try listener.receive(until: "WATCHDOG=1", timeoutSeconds: 5).contains("WATCHDOG=1"))
        server.signal(SIGTERM)
        let stopping = try listener.receive(until: "STOPPING=1", timeoutSeconds: 30)
        #expect(stopping.contains("STOPPING=1"))
        #expect(server.waitForExit(timeoutSeconds: 30) == 0)
    }

    @Test("ctl: exit 3 and a clear message when the admin socket is missing; metrics still print up 0")
    func ctlUnreachable() throws {
        let directory = TestEnvironment.temporaryDirectory("lk-nosock")
        let binary = try TestEnvironment.lorikeetBinary
        let (status, output) = try TestEnvironment.runProcess(binary, ["ctl", "status", "--state-dir", directory])
        #expect(status == 3, "\(output)")
        #expect(output.contains("cannot reach the supervisor at \(directory)/admin.sock"), "\(output)")
        let (metricsStatus, metrics) = try TestEnvironment.runProcess(binary, ["ctl", "metrics", "--state-dir", directory])
        #expect(metricsStatus == 3)
        #expect(metrics.contains("lorikeet_supervisor_up 0"), "\(metrics)")
    }
}

/// A Unix datagram socket the test listens on, standing in for systemd's notify socket.
final class DatagramListener {
    let path: String
    private let fd: Int32

    init(path: String) throws {
        self.path = path
        unlink(path)
        self.fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard self.fd >= 0 else { throw TestEnvironment.Failure("socket: errno \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(self.fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else { throw TestEnvironment.Failure("bind \(path): errno \(errno)") }
    }

    deinit {
        close(self.fd)
        unlink(self.path)
    }

    /// Receives datagrams until one contains `needle`; returns that datagram.
    func receive(until needle: String, timeoutSeconds: Double) throws -> String {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        var seen: [String] = []
        while Date() < deadline {
            var poller = pollfd(fd: self.fd, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 200) > 0 else { continue }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let count = recv(self.fd, &buffer, buffer.count, 0)
            guard count > 0 else { continue }
            let message = String(decoding: buffer[0..<count], as: UTF8.self)
            if message.split(separator: "\n").contains(where: { $0 == needle }) { return message }
            seen.append(message)
        }
        throw TestEnvironment.Failure("no datagram with \(needle) within \(timeoutSeconds) s; got \(seen)")
    }
}
