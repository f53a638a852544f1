import Foundation
import LorikeetProto
import LorikeetTestSupport
import Testing

/// Hostile and careless HTTP clients against a real `lorikeet serve` (issue 12): each
/// class of bad request gets a clear 4xx for itself alone, while legitimate streams run
/// on the same workers; afterwards no process was restarted (same pids) and the committed
/// table is intact.
@Suite("Hostile HTTP clients (real processes)", .serialized, .ownThreads)
struct HostileHTTPTests {
    /// A server with one committed adapter ("kept") and legitimate streaming traffic on
    /// every worker while `attack` runs; then checks nothing was lost.
    static func underAttack(workers: Int = 2, _ attack: (ServerUnderTest) throws -> Void) throws {
        let server = try ServerUnderTest(workers: workers)
        defer { server.stop() }
        #expect(try ServeTests.load(server, "kept").status == 200)
        let pidsBefore = Set(server.childPIDs())
        let traffic = RequestLoop(
            port: server.port,
            body: ["model": "kept", "prompt": "hello", "max_tokens": 16, "stream": true, "ignore_eos": true],
            concurrency: 4)
        try attack(server)
        let (counts, failures) = traffic.stop()
        #expect(counts.keys.allSatisfy { $0 == 200 }, "legitimate requests failed during the attack: \(counts) \(failures)")
        #expect(counts[200, default: 0] > 0, "no legitimate request completed: \(counts)")
        #expect(Set(server.childPIDs()) == pidsBefore, "a process was restarted:\n\(server.log.suffix(3000))")
        #expect(try ServeTests.table(server) == ["kept": 1])
        #expect((try server.status()["ready_workers"] as? Int) == workers)
    }

    static func post(_ server: ServerUnderTest, _ path: String, _ object: [String: Any]) throws -> TestHTTP.Response {
        try TestHTTP.post(port: server.port, path, object)
    }

    static func expectError(
        _ response: TestHTTP.Response, status: Int, param: String? = nil, sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(response.status == status, "\(response.status): \(response.body.prefix(300))", sourceLocation: sourceLocation)
        let error = response.json?["error"] as? [String: Any]
        #expect(error?["message"] is String, "no OpenAI error envelope: \(response.body.prefix(300))", sourceLocation: sourceLocation)
        if let param { #expect(error?["param"] as? String == param, "\(response.body.prefix(300))", sourceLocation: sourceLocation) }
        #expect(
            response.body.utf8.count < 4096, "the error repeats the input (\(response.body.utf8.count) bytes)",
            sourceLocation: sourceLocation)
    }

    @Test("oversized and malformed adapter names, paths and batches: 400/413 each, no worker killed, table intact")
    func oversizedAdapterFields() throws {
        try Self.underAttack { server in
            let dir = server.adapterDirectory + "/plain"
            let huge = String(repeating: "n", count: 5 * 1024 * 1024)
            for _ in 0..<3 {  // several times: once killed the forwarding worker, 16 took the server down
                Self.expectError(
                    try Self.post(server, "/v1/load_lora_adapter", ["lora_name": huge, "lora_path": dir]), status: 400, param: "lora_name")
                Self.expectError(
                    try Self.post(server, "/v1/load_lora_adapter", ["lora_name": "x", "lora_path": dir + "/" + huge]), status: 400,
                    param: "lora_path")
                Self.expectError(try Self.post(server, "/v1/unload_lora_adapter", ["lora_name": huge]), status: 400, param: "lora_name")
            }
            // Two names just under the old frame limit used to overflow the committed table.
            let big = String(repeating: "b", count: 2 * 1024 * 1024)
            Self.expectError(
                try Self.post(server, "/v1/load_lora_adapter", ["lora_name": big + "1", "lora_path": dir]), status: 400, param: "lora_name")
            for name in ["a\u{0}b", "line\nforged", "bidi\u{202E}txt", "tab\there", String(repeating: "é", count: 200)] {
                Self.expectError(
                    try Self.post(server, "/v1/load_lora_adapter", ["lora_name": name, "lora_path": dir]), status: 400, param: "lora_name")
            }
            // NUL in the path: refused, not truncated to the directory before it.
            Self.expectError(
                try Self.post(server, "/v1/load_lora_adapter", ["lora_name": "nul", "lora_path": dir + "\u{0}/../x"]), status: 400,
                param: "lora_path")
            Self.expectError(
                try Self.post(server, "/v1/load_lora_adapter", ["lora_name": "base", "lora_path": dir, "base_model_name": huge]),
                status: 400, param: "base_model_name")
            let items = (0..<300).map { ["load": ["lora_name": "b\($0)", "lora_path": dir]] }
            Self.expectError(try Self.post(server, "/v1/lora_adapters/batch", ["items": items]), status: 400, param: "items")
            Self.expectError(
                try Self.post(server, "/v1/lora_adapters/batch", ["items": [["unload": ["lora_name": huge]]]]),
                status: 400, param: "items[0].unload.lora_name")
            let tooBig = String(repeating: "x", count: 9 * 1024 * 1024)
            Self.expectError(try Self.post(server, "/v1/load_lora_adapter", ["lora_name": tooBig, "lora_path": dir]), status: 413)
        }
    }

    @Test("oversized generation fields: 400 naming the field; streams on the same workers complete")
    func oversizedGenerationFields() throws {
        try Self.underAttack { server in
            let stops = (0..<1000).map { "stop\($0)" }
            Self.expectError(try Self.post(server, "/v1/completions", ["prompt": "hi", "stop": stops]), status: 400, param: "stop")
            Self.expectError(
                try Self.post(server, "/v1/completions", ["prompt": "hi", "stop": [String(repeating: "s", count: 10_000)]]),
                status: 400, param: "stop")
            let messages = (0..<5000).map { _ in ["role": "user", "content": "x"] }
            Self.expectError(try Self.post(server, "/v1/chat/completions", ["messages": messages]), status: 400, param: "messages")
            Self.expectError(
                try Self.post(server, "/v1/completions", ["prompt": "hi", "stop_token_ids": Array(repeating: 1, count: 1000)]),
                status: 400, param: "stop_token_ids")
            Self.expectError(
                try Self.post(server, "/v1/completions", ["prompt": "hi", "model": String(repeating: "m", count: 100_000)]),
                status: 404, param: "model")
            // NUL would be cut at the C boundary of the channel: refused instead of truncated.
            Self.expectError(try Self.post(server, "/v1/completions", ["prompt": "keep\u{0}cut"]), status: 400, param: "prompt")
            Self.expectError(
                try Self.post(server, "/v1/chat/completions", ["messages": [["role": "user", "content": "a\u{0}b"]]]),
                status: 400, param: "messages[0].content")
            // 4 million tiny values in a legal 8 MiB body: refused before they become a tree
            // 25 times the body's size.
            let values = "{\"prompt\":\"x\",\"extra\":[" + Array(repeating: "0", count: 3_000_000).joined(separator: ",") + "]}"
            Self.expectError(
                try TestHTTP.request(port: server.port, method: "POST", path: "/v1/completions", body: values), status: 400)
            let body = String(repeating: "p", count: 9 * 1024 * 1024)
            Self.expectError(try Self.post(server, "/v1/completions", ["prompt": body]), status: 413)
            for _ in 0..<2 {
                // Once closed the worker's shared engine connection (4 MiB frame limit): now
                // well inside the channel's limit, refused by the engine as longer than its context.
                let prompt = String(repeating: "a ", count: 2 * 1024 * 1024)
                let response = try TestHTTP.post(port: server.port, "/v1/completions", ["prompt": prompt, "max_tokens": 1])
                Self.expectError(response, status: 400)
            }
        }
    }

    @Test("cross-site and rebinding requests: 415 for non-JSON bodies, 403 for a foreign Host; a case-insensitive Bearer scheme")
    func browserAttacks() throws {
        let server = try ServerUnderTest(workers: 1, environment: ["LORIKEET_API_KEY": "sekret"])
        defer { server.stop() }
        let auth = ["Authorization": "bearer sekret"]
        let body = #"{"lora_name":"csrf","lora_path":"\#(server.adapterDirectory)/plain"}"#
        for type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
            let response = try TestHTTP.request(
                port: server.port, method: "POST", path: "/v1/load_lora_adapter", body: body,
                headers: auth.merging(["Content-Type": type]) { $1 })
            Self.expectError(response, status: 415)
        }
        var raw = "POST /v1/load_lora_adapter HTTP/1.1\r\nHost: evil.example:\(server.port)\r\nContent-Type: application/json\r\n"
        raw += "Authorization: Bearer sekret\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
        Self.expectError(try TestHTTP.raw(port: server.port, Array(raw.utf8)), status: 403)
        #expect(try ServeTests.table(server).isEmpty)
        // The same request from a loopback name, with the scheme in any case, is served.
        let ok = try TestHTTP.request(
            port: server.port, method: "POST", path: "/v1/load_lora_adapter", body: body,
            headers: ["Authorization": "BEARER sekret", "Content-Type": "application/json; charset=utf-8"])
        #expect(ok.status == 200, "\(ok.body)")
        Self.expectError(
            try TestHTTP.request(port: server.port, path: "/v1/models", headers: ["Authorization": "Basic sekret"]), status: 401)
        // The API key is in no process's argv.
        for pid in server.childPIDs() + [server.process.processIdentifier] {
            let cmdline = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))) ?? Data()
            #expect(!String(decoding: cmdline, as: UTF8.self).contains("sekret"), "pid \(pid) has the API key in argv")
        }
    }

    @Test(
        "path errors say 'outside the allowed prefixes' or 'must exist' (vLLM's wording) and never where a symlink points or what exists outside"
    )
    func pathErrorsAreCoarse() throws {
        let server = try ServerUnderTest(workers: 1)
        defer { server.stop() }
        let outside = TestEnvironment.temporaryDirectory("lk-outside")
        defer { try? FileManager.default.removeItem(atPath: outside) }
        let link = server.adapterDirectory + "/escape-\(getpid())"
        try? FileManager.default.removeItem(atPath: link)
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: outside)
        defer { try? FileManager.default.removeItem(atPath: link) }
        let cases: [(path: String, word: String)] = [
            ("/etc", "outside the configured allowed prefixes"), ("/nonexistent/dir", "outside the configured allowed prefixes"),
            (outside, "outside the configured allowed prefixes"), (link, "outside the configured allowed prefixes"),
            (server.adapterDirectory + "/../../etc", "outside the configured allowed prefixes"),
            (server.adapterDirectory + "/missing", "must exist and be accessible"),
        ]
        for (path, word) in cases {
            let response = try Self.post(server, "/v1/load_lora_adapter", ["lora_name": "p", "lora_path": path])
            Self.expectError(response, status: 400, param: "lora_path")
            let message = (response.json?["error"] as? [String: Any])?["message"] as? String ?? ""
            #expect(message.contains(word), "\(path): \(message)")
            #expect(!message.contains("/"), "\(path): the message reveals a path: \(message)")
        }
        // A directory inside the prefix that holds no adapter: the client's path too (400
        // naming lora_path, compat L12), not the 404 of a route that does not exist.
        let empty = server.adapterDirectory + "/empty-\(getpid())"
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: empty) }
        let response = try Self.post(server, "/v1/load_lora_adapter", ["lora_name": "p", "lora_path": empty])
        Self.expectError(response, status: 400, param: "lora_path")
        let message = (response.json?["error"] as? [String: Any])?["message"] as? String ?? ""
        #expect(message.contains("adapter_config.json"), "\(message)")
        #expect(try ServeTests.table(server).isEmpty)
    }

    @Test("per-adapter metric series disappear when the adapter is unloaded")
    func metricSeriesRemovedOnUnload() throws {
        let server = try ServerUnderTest(workers: 1)
        defer { server.stop() }
        #expect(try ServeTests.load(server, "metered").status == 200)
        #expect(try Self.post(server, "/v1/completions", ["model": "metered", "prompt": "hi", "max_tokens": 1]).status == 200)
        let series = #"lorikeet_adapter_requests_total{adapter="metered"}"#
        // Counted once the response's last byte is written, which the client can see first.
        try ServeTests.waitFor("the request counted", timeout: 10) {
            try TestHTTP.request(port: server.port, path: "/metrics").body.contains(series)
        }
        #expect(try ServeTests.unload(server, "metered").status == 200)
        #expect(!(try TestHTTP.request(port: server.port, path: "/metrics").body.contains(series)))
    }

    @Test("a same-user process outside the supervisor's lineage cannot raise the engine's epoch (fencing the leader out)")
    func epochJumpFromOutsideRefused() throws {
        let server = try ServerUnderTest(workers: 2)
        defer { server.stop() }
        let connection = FramedConnection<EngineEnvelope>(fd: try UnixSocket.connect(path: server.stateDirectory + "/engine.sock"))
        defer { connection.close() }
        try connection.send(EngineEnvelope(callID: 1, body: .health))
        guard case .healthReply(let health) = try connection.receive()?.body else { throw TestEnvironment.Failure("no health reply") }
        try connection.send(
            EngineEnvelope(
                callID: 2,
                body: .addAdapter(
                    AddAdapterRequest(epoch: health.maxEpoch + 1000, name: "fence", intID: 999, path: server.adapterDirectory + "/plain"))))
        guard case .result(let result) = try connection.receive()?.body else { throw TestEnvironment.Failure("no result") }
        #expect(result.status.code == .failedPrecondition, "\(result.status)")
        try connection.send(EngineEnvelope(callID: 3, body: .health))
        guard case .healthReply(let after) = try connection.receive()?.body else { throw TestEnvironment.Failure("no health reply") }
        #expect(after.maxEpoch == health.maxEpoch)
        // The real leader still mutates.
        #expect(try ServeTests.load(server, "after-fence").status == 200)
        #expect(try ServeTests.table(server) == ["after-fence": 1])
    }

    @Test(
        "an operator's --lora-modules adapter outside the runtime prefixes loads at startup; the same directory at runtime is not allowed")
    func startupAdapterOutsidePrefixes() throws {
        let outside = TestEnvironment.temporaryDirectory("lk-startup")
        defer { try? FileManager.default.removeItem(atPath: outside) }
        let fixture = try TestEnvironment.fixtureDirectory()
        try FileManager.default.copyItem(atPath: fixture + "/adapters/plain", toPath: outside + "/plain")
        let server = try ServerUnderTest(workers: 1, extraArguments: ["--lora-modules", "startup=\(outside)/plain"])
        defer { server.stop() }
        try ServeTests.waitFor("the startup adapter in the table", timeout: 30) { try ServeTests.table(server)["startup"] != nil }
        let response = try Self.post(server, "/v1/completions", ["model": "startup", "prompt": "hi", "max_tokens": 1])
        #expect(response.status == 200, "\(response.body)\n\(server.log.suffix(2000))")
        Self.expectError(
            try Self.post(server, "/v1/load_lora_adapter", ["lora_name": "runtime", "lora_path": outside + "/plain"]),
            status: 400, param: "lora_path")
    }
}
