import Foundation
import LorikeetJSON
import LorikeetTestSupport
import LorikeetUpstream
import Synchronization
import Testing

@testable import LorikeetWorker

/// The upstream HTTP client under a replica that misbehaves on purpose (`ScriptedReplica`):
/// the cap on buffered bodies, back pressure from a client that stops reading, and SIGTERM
/// while streams run. No wall-clock assertions: waits are hang guards only.
@Suite("upstream client: body cap, back pressure, shutdown", .serialized, .timeLimit(.minutes(3)), .ownThreads)
struct UpstreamClientTests {
    static func configuration(_ replica: ScriptedReplica, cap: Int? = nil) -> (WorkerConfiguration, WorkerEngineFactory) {
        let configuration = WorkerConfiguration(
            engineSocket: "", listen: .address(host: "127.0.0.1", port: 0), drainGrace: .seconds(2),
            engineStartupTimeout: .seconds(10), version: "test")
        var upstream = UpstreamConfiguration(endpoints: [UpstreamEndpoint(host: "127.0.0.1", port: Int(replica.port))])
        if let cap { upstream.maxBufferedBodyBytes = cap }
        return (configuration, UpstreamBackend.workerEngine(upstream))
    }

    static func completion(_ prompt: String, stream: Bool = false) -> String {
        #"{"model":"tiny","prompt":"\#(prompt)","max_tokens":4,"stream":\#(stream)}"#
    }

    /// Polls `condition` every 100 ms; a hang guard, not a timing assertion.
    static func waitFor(_ what: String, timeout: Duration = .seconds(60), _ condition: () async -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while await !condition() {
            guard ContinuousClock.now < deadline else { throw TestHTTPError.malformed("timed out waiting for \(what)") }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    @Test("a replica body over the cap is a 502 with OpenAI's envelope; the worker and the replica keep serving")
    func bodyOverTheCap() async throws {
        let cap = 1 << 20
        let replica = try ScriptedReplica(bigBodyBytes: cap + 1)
        defer { replica.stop() }
        let (configuration, engine) = Self.configuration(replica, cap: cap)
        try await WorkerHarness.withWorker(configuration, engine: engine) { port, _ in
            for prompt in ["big-declared", "big-chunked"] {
                let response = try await TestHTTP.post(port: port, "/v1/completions", Self.completion(prompt))
                #expect(response.status == 502, "\(prompt): \(response.status) \(response.text.prefix(300))")
                #expect(response.errorType == "server_error")
                if case .string(let code)? = response.json?["error"]?["code"] {
                    #expect(code == "upstream_response_too_large")
                } else {
                    Issue.record("\(prompt): no error code in \(response.text.prefix(300))")
                }
                #expect(response.errorMessage?.contains("\(cap) bytes") == true, "\(response.errorMessage ?? "")")
            }
            // Same worker, same replica (still in rotation): a normal answer.
            let small = try await TestHTTP.post(port: port, "/v1/completions", Self.completion("hello"))
            #expect(small.status == 200, "\(small.text)")
            #expect(try await TestHTTP.get(port: port, "/health").status == 200)
        }
    }

    @Test("a client that stops reading an SSE stream stops the worker reading the replica (bounded, not the whole stream)")
    func backPressure() async throws {
        let replica = try ScriptedReplica()
        defer { replica.stop() }
        let (configuration, engine) = Self.configuration(replica)
        try await WorkerHarness.withWorker(configuration, engine: engine) { port, _ in
            let written = try await Self.stallStream(port: port, replica: replica)
            // Socket buffers on both sides (a few MiB each at most) plus the worker's bounded
            // buffers: far below the 256 MiB the replica would write into an unbounded reader.
            print("back pressure: the replica wrote \(written >> 10) KiB before the stalled client stopped it")
            #expect(written < 64 << 20, "the worker read \(written) bytes from the replica for a client that read nothing")
            // The client went away (its socket closed with data unread): the worker closes
            // the upstream request.
            try await Self.waitFor("the replica's stream to be closed") { replica.streamsEnded.load(ordering: .relaxed) >= 1 }
            let small = try await TestHTTP.post(port: port, "/v1/completions", Self.completion("hello"))
            #expect(small.status == 200, "\(small.text)")
        }
    }

    /// Opens an `endless` stream, reads its head and nothing more, waits until the replica
    /// cannot write any more (no progress for 3 s) or wrote its whole stream (no back
    /// pressure), and returns what it wrote. The connection closes on return.
    static func stallStream(port: Int, replica: ScriptedReplica) async throws -> Int {
        let connection = try TestHTTPConnection(port: port)
        // A small receive buffer, so the kernel holds little on the client's side.
        var size: Int32 = 16 * 1024
        setsockopt(connection.fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        let body = Array(Self.completion("endless", stream: true).utf8)
        let status = try await offPool {
            connection.sendRequest("POST", "/v1/completions", headers: [("Content-Type", "application/json")], body: body)
            return try connection.readHead().status
        }
        #expect(status == 200)
        var last = -1
        var still = 0
        try await Self.waitFor("the replica's stream to stall or end") {
            let now = replica.streamedBytes.load(ordering: .relaxed)
            still = now == last ? still + 1 : 0
            last = now
            return still >= 30 || now >= ScriptedReplica.endlessLimit
        }
        withExtendedLifetime(connection) {}
        return last
    }

    @Test("SIGTERM while upstream streams run: the worker process drains and exits 0", arguments: 0..<3)
    func sigtermDuringStreams(round: Int) async throws {
        let replica = try ScriptedReplica()
        defer { replica.stop() }
        let port = TestEnvironment.freePort()
        let directory = TestEnvironment.temporaryDirectory("lk-upstream-sigterm")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let log = directory + "/worker.log"
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let worker = Process()
        worker.executableURL = URL(fileURLWithPath: try TestEnvironment.lorikeetBinary)
        // Round 0 lets the drain grace end the streams; the others cut them short.
        worker.arguments = [
            "worker", "--upstream", replica.url, "--port", "\(port)", "--parent-pid", "\(getpid())",
            "--drain-grace-ms", round == 0 ? "2000" : "100",
        ]
        worker.standardError = FileHandle(forWritingAtPath: log)
        worker.standardOutput = FileHandle(forWritingAtPath: log)
        worker.environment = TestEnvironment.childEnvironment
        try worker.run()
        defer {
            // Only after a failure: the worker is normally gone by now.
            if worker.isRunning {
                kill(worker.processIdentifier, SIGKILL)
                worker.waitUntilExit()
            }
        }
        let workerLog = { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        try await Self.waitFor("the worker to serve", timeout: .seconds(60)) {
            // Blocking socket code stays off the concurrency pool (2 threads here).
            guard worker.isRunning else { return false }
            let status = try? await offPool {
                try LorikeetTestSupport.TestHTTP.request(port: port, path: "/health", timeoutSeconds: 2).status
            }
            return status == 200
        }
        // Four streams (one of them never read past its head), each at its first events.
        var connections: [TestHTTPConnection] = []
        for index in 0..<4 {
            let connection = try TestHTTPConnection(port: Int(port))
            let body = Array(Self.completion(index == 3 ? "endless" : "slow", stream: true).utf8)
            let status = try await offPool {
                connection.sendRequest("POST", "/v1/completions", headers: [("Content-Type", "application/json")], body: body)
                return try connection.readHead().status
            }
            #expect(status == 200)
            connections.append(connection)
        }
        for connection in connections.prefix(3) { _ = try await offPool { try connection.readChunk() } }
        kill(worker.processIdentifier, SIGTERM)
        // Keep reading the slow streams while the worker drains.
        let readers = connections.prefix(3).map { connection in
            Task { try? await offPool { while (try? connection.readChunk()) != nil {} } }
        }
        try await Self.waitFor("the worker to exit", timeout: .seconds(60)) { !worker.isRunning }
        for reader in readers { _ = await reader.value }
        #expect(worker.terminationReason == .exit, "killed by signal \(worker.terminationStatus):\n\(workerLog().suffix(3000))")
        #expect(worker.terminationStatus == 0, "\(workerLog().suffix(3000))")
    }
}
