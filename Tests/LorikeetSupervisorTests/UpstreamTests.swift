import Foundation
import LorikeetTestSupport
import Synchronization
import Testing

/// `lorikeet serve --upstream A --upstream B` in front of two real "vLLM replicas"
/// (standalone `lorikeet worker` + `lorikeet engine` pairs, runtime LoRA updating on).
/// Real processes only; each test cleans up every process it started, by pid.
@Suite("lorikeet serve --upstream (real processes)", .serialized, .ownThreads)
struct UpstreamTests {
    static func completion(_ model: String) -> [String: Any] {
        ["model": model, "prompt": "hello", "max_tokens": 2, "temperature": 0]
    }

    static func load(_ port: UInt16, _ name: String, path: String) throws -> TestHTTP.Response {
        try TestHTTP.post(port: port, "/v1/load_lora_adapter", ["lora_name": name, "lora_path": path])
    }

    /// Which replica answered each of `count` requests (URL -> count); any non-200 fails.
    static func spread(_ server: ServerUnderTest, model: String, count: Int) throws -> [String: Int] {
        var served: [String: Int] = [:]
        for _ in 0..<count {
            let response = try TestHTTP.post(port: server.port, "/v1/completions", Self.completion(model))
            guard response.status == 200 else { throw TestEnvironment.Failure("request failed: \(response.status) \(response.body)") }
            served[response.headers["x-lorikeet-upstream"] ?? "?", default: 0] += 1
        }
        return served
    }

    static func waitFor(_ what: String, timeout: Double = 30, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if (try? condition()) == true { return }
            usleep(100_000)
        }
        throw TestEnvironment.Failure("timed out waiting for \(what)")
    }

    /// SSE with the per-request fields (`id`, `created`) blanked.
    static func normalized(_ stream: String) -> String {
        var text = stream
        for (pattern, replacement) in [(#""id":"[^"]*""#, #""id":"-""#), (#""created":[0-9]+"#, #""created":0"#)] {
            let regex = try! NSRegularExpression(pattern: pattern)
            text = regex.stringByReplacingMatches(in: text, range: NSRange(text.startIndex..., in: text), withTemplate: replacement)
        }
        return text
    }

    @Test("requests spread over both replicas; a load fans out; SSE passes through unchanged; unknown models are 404")
    func spreadFanOutStream() throws {
        let a = try ReplicaUnderTest()
        defer { a.stop() }
        let b = try ReplicaUnderTest()
        defer { b.stop() }
        let server = try ServerUnderTest(workers: 2, upstreams: [a.url, b.url])
        defer { server.stop() }

        let base = try Self.spread(server, model: "tiny", count: 20)
        #expect(base[a.url, default: 0] > 0 && base[b.url, default: 0] > 0, "base requests: \(base)")

        #expect(try Self.load(server.port, "fan", path: server.adapterDirectory + "/plain").status == 200)
        #expect(try a.adapters() == ["fan"])
        #expect(try b.adapters() == ["fan"])
        let adapter = try Self.spread(server, model: "fan", count: 20)
        #expect(adapter[a.url, default: 0] > 0 && adapter[b.url, default: 0] > 0, "adapter requests: \(adapter)")

        // Streaming: the replica's own stream, byte for byte (but for the id and timestamp).
        let body: [String: Any] = [
            "model": "fan", "messages": [["role": "user", "content": "hi"]], "max_tokens": 8, "temperature": 0, "stream": true,
            "stream_options": ["include_usage": true],
        ]
        let through = try TestHTTP.post(port: server.port, "/v1/chat/completions", body)
        let direct = try TestHTTP.post(port: a.port, "/v1/chat/completions", body)
        #expect(through.status == 200)
        #expect(through.headers["content-type"] == "text/event-stream")
        #expect(through.headers["transfer-encoding"] == "chunked")
        #expect(through.body.hasSuffix("data: [DONE]\n\n"))
        #expect(Self.normalized(through.body) == Self.normalized(direct.body))

        let missing = try TestHTTP.post(port: server.port, "/v1/completions", Self.completion("nope"))
        #expect(missing.status == 404)
        #expect((missing.json?["error"] as? [String: Any])?["code"] as? String == "model_not_found")
        // A replica's own refusal comes back as our envelope with its status.
        let refused = try TestHTTP.post(port: server.port, "/v1/completions", ["model": "tiny", "prompt": "x", "max_tokens": -1])
        #expect(refused.status == 400, "\(refused.body)")
        #expect((refused.json?["error"] as? [String: Any])?["param"] as? String == "max_tokens")

        #expect(try TestHTTP.post(port: server.port, "/v1/unload_lora_adapter", ["lora_name": "fan"]).status == 200)
        #expect(try a.adapters().isEmpty && b.adapters().isEmpty)
    }

    @Test("one replica refuses a load: rolled back on the other, the error names the refusing replica")
    func partialRefusal() throws {
        let fixture = try TestEnvironment.fixtureDirectory()
        let a = try ReplicaUnderTest()
        defer { a.stop() }
        // B only allows the `plain` adapter.
        let b = try ReplicaUnderTest(allowedPrefix: fixture + "/adapters/plain")
        defer { b.stop() }
        let server = try ServerUnderTest(workers: 2, upstreams: [a.url, b.url])
        defer { server.stop() }

        let response = try Self.load(server.port, "rs", path: server.adapterDirectory + "/rslora")
        #expect(response.status == 400, "\(response.status) \(response.body)")
        let message = (response.json?["error"] as? [String: Any])?["message"] as? String ?? ""
        #expect(message.contains(b.url), "\(message)")
        #expect(message.contains("rolled back on \(a.url)"), "\(message)")
        #expect(try a.adapters().isEmpty, "not rolled back on A")
        #expect(try b.adapters().isEmpty)
        let table = try server.ctlJSON(["adapters"]) as? [String: Any]
        #expect((table?["adapters"] as? [Any])?.isEmpty ?? true, "committed despite the refusal: \(String(describing: table))")
        #expect(try TestHTTP.post(port: server.port, "/v1/completions", Self.completion("rs")).status == 404)
        // What both accept commits.
        #expect(try Self.load(server.port, "ok", path: server.adapterDirectory + "/plain").status == 200)
        #expect(try a.adapters() == ["ok"] && b.adapters() == ["ok"])
    }

    @Test("kill -9 a replica: it leaves the rotation (no failed request), comes back, gets its adapters re-added, serves again")
    func replicaRestart() throws {
        let a = try ReplicaUnderTest()
        defer { a.stop() }
        let b = try ReplicaUnderTest()
        defer { b.stop() }
        let server = try ServerUnderTest(workers: 2, upstreams: [a.url, b.url])
        defer { server.stop() }
        #expect(try Self.load(server.port, "keep", path: server.adapterDirectory + "/plain").status == 200)

        a.killWorker()
        // Out of rotation: everything goes to B, nothing fails.
        let whileDown = try Self.spread(server, model: "keep", count: 20)
        #expect(whileDown == [b.url: 20], "while A was down: \(whileDown)")
        #expect(try Self.spread(server, model: "tiny", count: 10) == [b.url: 10])

        // A restarts empty; the leader re-adds the committed adapter.
        try a.startWorker()
        try Self.waitFor("adapter re-added on the restarted replica") { try a.adapters() == ["keep"] }
        try Self.waitFor("A back in rotation for adapter traffic") {
            try Self.spread(server, model: "keep", count: 6)[a.url, default: 0] > 0
        }
        let after = try Self.spread(server, model: "keep", count: 20)
        #expect(after[a.url, default: 0] > 0 && after[b.url, default: 0] > 0, "after the restart: \(after)")
        #expect(server.log.contains("upstream adapter drift repaired"))
        #expect(server.log.contains("upstream replica back in rotation"))
    }

    @Test("kill -9 a replica under steady adapter traffic: no request fails beyond the ones it had in flight")
    func noAdapterTrafficBeforeReconciliation() throws {
        let a = try ReplicaUnderTest()
        defer { a.stop() }
        let b = try ReplicaUnderTest()
        defer { b.stop() }
        let server = try ServerUnderTest(workers: 2, upstreams: [a.url, b.url])
        defer { server.stop() }
        #expect(try Self.load(server.port, "keep", path: server.adapterDirectory + "/plain").status == 200)
        // Requests run all along; A is killed and restarted in the middle.
        let loop = RequestLoop(port: server.port, body: Self.completion("keep"))
        usleep(300_000)
        a.killWorker()
        usleep(500_000)
        try a.startWorker()
        try Self.waitFor("adapter re-added") { try a.adapters() == ["keep"] }
        usleep(500_000)
        let (counts, failures) = loop.stop()
        let failed = counts.filter { $0.key != 200 }.values.reduce(0, +)
        print("replica kill -9 under traffic: \(counts[200] ?? 0) ok, \(failed) failed \(failures)")
        // Only the requests A had in flight when it died may fail (2 client threads).
        #expect(failed <= 2, "counts: \(counts) \(failures)")
        #expect((counts[200] ?? 0) > 10)
        // A request that reached the restarted A before the workers saw it empty was rerouted, never failed.
        let rerouted = server.log.components(separatedBy: "replica lacks a committed adapter; rerouting").count - 1
        print("requests rerouted off the restarted replica: \(rerouted)")
    }

    @Test("the table in the state directory is replayed onto every replica before workers serve")
    func startupReplay() throws {
        let a = try ReplicaUnderTest()
        defer { a.stop() }
        let b = try ReplicaUnderTest()
        defer { b.stop() }
        let first = try ServerUnderTest(workers: 1, upstreams: [a.url, b.url])
        #expect(try Self.load(first.port, "persisted", path: first.adapterDirectory + "/plain").status == 200)
        first.stop()
        // Both replicas restart empty (new processes) while Lorikeet is down.
        a.killWorker()
        b.killWorker()
        try a.startWorker()
        try b.startWorker()
        #expect(try a.adapters().isEmpty && b.adapters().isEmpty)
        let second = try ServerUnderTest(workers: 2, stateDirectory: first.stateDirectory, upstreams: [a.url, b.url])
        defer { second.stop() }
        // Ready means the leader replayed the table: both replicas hold it already.
        #expect(try a.adapters() == ["persisted"] && b.adapters() == ["persisted"])
        #expect(try Self.spread(second, model: "persisted", count: 4).values.reduce(0, +) == 4)
    }

    @Test("a client that disconnects mid-stream closes the upstream request (the replica aborts it)")
    func clientDisconnect() throws {
        let a = try ReplicaUnderTest()
        defer { a.stop() }
        let server = try ServerUnderTest(workers: 1, upstreams: [a.url])
        defer { server.stop() }
        let body = try JSONSerialization.data(
            withJSONObject: [
                "model": "tiny", "prompt": "hello", "max_tokens": 240, "ignore_eos": true, "stream": true,
            ] as [String: Any])
        let request =
            "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\n\r\n"
            + String(decoding: body, as: UTF8.self)
        // The close must reach the replica while it still streams; on a slow machine the 240
        // tokens can all be written first, so the scenario repeats until it does.
        var aborted = false
        for _ in 0..<5 where !aborted {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            #expect(fd >= 0)
            let connected = TestEnvironment.withLoopbackAddress(port: server.port) { connect(fd, $0, $1) }
            #expect(connected == 0)
            _ = Array(request.utf8).withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            // Read until the first event arrived, then hang up.
            var received = ""
            var chunk = [UInt8](repeating: 0, count: 4096)
            while !received.contains("data: ") {
                let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if count <= 0 { break }
                received += String(decoding: chunk[0..<count], as: UTF8.self)
            }
            close(fd)
            #expect(received.contains("200 OK"))
            aborted =
                (try? Self.waitFor("the replica aborted the request", timeout: 10) {
                    a.workerLog.contains("client disconnected mid-stream; aborting the engine request")
                }) != nil
        }
        #expect(aborted, "the replica never logged an abort: every stream finished before the close reached it")
        #expect(server.log.contains("client disconnected mid-stream; closing the upstream request"))
    }
}
