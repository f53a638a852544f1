import Foundation
import LorikeetJSON
import LorikeetProto
import LorikeetTestSupport
import Synchronization
import Testing

@testable import LorikeetWorker

/// Routes against the real HTTP server on 127.0.0.1, with a scripted engine process twin
/// behind it (EngineTests run the same worker against the built-in engine).
@Suite("Worker routes over real HTTP", .timeLimit(.minutes(1)), .ownThreads)
struct RouteTests {
    static let chat = #"{"model":"tiny-llama","messages":[{"role":"user","content":"hi"}],"max_tokens":3}"#

    @Test("models, completions and chat (JSON and SSE), health, version")
    func happyPaths() async throws {
        let engine = try FakeEngine()
        defer { engine.stop() }
        try await WorkerHarness.withWorker(WorkerHarness.configuration(engine: engine)) { port, _ in
            let models = try await TestHTTP.get(port: port, "/v1/models")
            #expect(models.status == 200)
            #expect(models.json?["object"] == .string("list"))
            #expect(
                models.json?["data"]
                    == .array([
                        .object([
                            ("id", .string("tiny-llama")), ("object", .string("model")),
                            (
                                "created",
                                models.json?["data"].flatMap { if case .array(let a) = $0 { a[0]["created"] } else { nil } } ?? .null
                            ),
                            ("owned_by", .string("lorikeet")), ("root", .string("tiny-llama")), ("parent", .null),
                            ("max_model_len", .int(256)),
                            (
                                "permission",
                                models.json?["data"].flatMap { if case .array(let a) = $0 { a[0]["permission"] } else { nil } } ?? .null
                            ),
                        ])
                    ]))
            #expect(models.headers["date"] != nil && models.headers["server"] == "lorikeet")

            let completion = try await TestHTTP.post(
                port: port, "/v1/completions", #"{"model":"tiny-llama","prompt":"Hello","max_tokens":4,"return_token_ids":true}"#)
            #expect(completion.status == 200)
            let choice = completion.json?["choices"].flatMap { if case .array(let a) = $0 { a.first } else { nil } }
            #expect(choice?["text"] == .string("ABCD"))
            #expect(choice?["finish_reason"] == .string("length"))
            #expect(choice?["token_ids"] == .array([.int(65), .int(66), .int(67), .int(68)]))
            #expect(completion.json?["object"] == .string("text_completion"))
            #expect(completion.json?["usage"]?["completion_tokens"] == .int(4))
            #expect(completion.json?["usage"]?["total_tokens"] == .int(9))

            let tokens = try await TestHTTP.post(port: port, "/v1/completions", #"{"prompt":[1,2,3],"max_tokens":1}"#)
            #expect(tokens.status == 200)
            #expect(engine.state.withLock { $0.generateRequests.last?.promptTokens } == [1, 2, 3])

            let chat = try await TestHTTP.post(port: port, "/v1/chat/completions", Self.chat)
            #expect(chat.status == 200)
            let message = chat.json?["choices"].flatMap { if case .array(let a) = $0 { a.first?["message"] } else { nil } }
            #expect(message?["content"] == .string("ABC"))
            #expect(message?["role"] == .string("assistant"))
            #expect(engine.state.withLock { $0.generateRequests.last?.messages } == [ChatMessage(role: "user", content: "hi")])

            let stream = try await TestHTTP.post(
                port: port, "/v1/chat/completions",
                #"{"model":"tiny-llama","messages":[{"role":"user","content":"hi"}],"max_tokens":3,"stream":true,"stream_options":{"include_usage":true}}"#
            )
            #expect(stream.status == 200)
            #expect(stream.headers["content-type"] == "text/event-stream")
            let events = TestHTTP.events(stream.body)
            #expect(events.last == "[DONE]")
            let parsed = events.dropLast().compactMap { try? JSONParser.parse(Array($0.utf8)) }
            #expect(parsed.count == events.count - 1)
            #expect(
                parsed.first?["choices"].flatMap { if case .array(let a) = $0 { a.first?["delta"]?["role"] } else { nil } }
                    == .string("assistant"))
            let text = parsed.compactMap { event -> String? in
                guard case .array(let choices)? = event["choices"], case .string(let piece)? = choices.first?["delta"]?["content"] else {
                    return nil
                }
                return piece
            }.joined()
            #expect(text == "ABC")
            #expect(parsed.last?["usage"]?["completion_tokens"] == .int(3))
            #expect(parsed.last?["choices"] == .array([]))

            let completionStream = try await TestHTTP.post(
                port: port, "/v1/completions", #"{"prompt":"x","max_tokens":2,"stream":true}"#)
            let completionEvents = TestHTTP.events(completionStream.body)
            #expect(completionEvents.last == "[DONE]")
            #expect(!completionEvents.contains { $0.contains("\"usage\"") })

            #expect(try await TestHTTP.get(port: port, "/health").status == 200)
            #expect(try await TestHTTP.get(port: port, "/version").json?["version"] == .string("test"))

            // Expect: 100-continue (curl with large bodies), and X-Request-Id echoed.
            let (interim, final) = try await offPool { () throws -> (Int, TestHTTPResponse) in
                let connection = try TestHTTPConnection(port: port)
                let body = #"{"prompt":"x","max_tokens":1}"#
                connection.send(
                    "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
                        + "X-Request-Id: client-7\r\nContent-Length: \(body.utf8.count)\r\n\r\n")
                let interim = try connection.readHead().status
                connection.send(body)
                return (interim, try connection.readResponse())
            }
            #expect(interim == 100)
            #expect(final.status == 200)
            #expect(final.headers["x-request-id"] == "client-7")
            // Keep-alive: several requests on one connection.
            let statuses = try await offPool { () throws -> [Int] in
                let connection = try TestHTTPConnection(port: port)
                var statuses: [Int] = []
                for _ in 0..<3 {
                    connection.sendRequest("GET", "/v1/models")
                    statuses.append(try connection.readResponse().status)
                }
                return statuses
            }
            #expect(statuses == [200, 200, 200])
        }
    }

    @Test("errors: envelope, status and param for every failure")
    func errors() async throws {
        let engine = try FakeEngine()
        defer { engine.stop() }
        let configuration = WorkerHarness.configuration(engine: engine) { $0.maxBodyBytes = 4096 }
        try await WorkerHarness.withWorker(configuration) { port, _ in
            // (path, body, status, type, param)
            let cases: [(String, String, Int, String, String?)] = [
                ("/v1/completions", "{", 400, "invalid_request_error", nil),
                ("/v1/completions", "[1]", 400, "invalid_request_error", nil),
                ("/v1/completions", #"{"model":"tiny-llama"}"#, 400, "invalid_request_error", "prompt"),
                ("/v1/completions", #"{"prompt":"x","max_tokens":"9"}"#, 400, "invalid_request_error", "max_tokens"),
                ("/v1/completions", #"{"prompt":"x","n":17}"#, 400, "invalid_request_error", "n"),
                ("/v1/completions", #"{"model":"nope","prompt":"x"}"#, 404, "invalid_request_error", "model"),
                ("/v1/chat/completions", #"{"model":"tiny-llama"}"#, 400, "invalid_request_error", "messages"),
                (
                    "/v1/chat/completions", #"{"messages":[{"role":"user","content":5}]}"#, 400, "invalid_request_error",
                    "messages[0].content"
                ),
                (
                    "/v1/chat/completions", #"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#, 404, "invalid_request_error",
                    "model"
                ),
                ("/v1/load_lora_adapter", #"{"lora_name":"a","lora_path":"/tmp"}"#, 404, "invalid_request_error", nil),
                ("/v1/unload_lora_adapter", #"{"lora_name":"a"}"#, 404, "invalid_request_error", nil),
                ("/v1/nothing", "{}", 404, "invalid_request_error", nil),
            ]
            for (path, body, status, type, param) in cases {
                let response = try await TestHTTP.post(port: port, path, body)
                #expect(response.status == status, "\(path) \(body)")
                #expect(response.errorType == type, "\(path) \(body)")
                #expect(response.errorParam == param, "\(path) \(body)")
                #expect(response.json?["error"]?["message"] != nil)
                #expect(response.headers["content-type"] == "application/json")
            }
            // Wrong method.
            #expect(try await TestHTTP.get(port: port, "/v1/completions").status == 405)
            #expect(try await TestHTTP.request(port: port, "DELETE", "/v1/models").status == 405)
            // Body over the limit: declared, and streamed chunked without a length.
            let huge = try await TestHTTP.request(
                port: port, "POST", "/v1/completions", headers: [("Content-Type", "application/json")],
                body: Array(repeating: UInt8(ascii: " "), count: 100_000))
            #expect(huge.status == 413)
            #expect(huge.headers["connection"] == "close")
            let chunkedBody = String(repeating: "1000\r\n" + String(repeating: " ", count: 4096) + "\r\n", count: 3) + "0\r\n\r\n"
            let chunked = try await TestHTTP.raw(
                port: port,
                Array(
                    "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\(chunkedBody)"
                        .utf8))
            #expect(chunked.status == 413)
            // Not HTTP at all.
            let garbage = try await TestHTTP.raw(port: port, Array("\u{01}\u{02} nonsense\r\n\r\n".utf8))
            #expect(garbage.status == 400)
            // Still serving.
            #expect(try await TestHTTP.get(port: port, "/v1/models").status == 200)
        }
    }

    @Test("API key: /v1 routes need the bearer token, /health does not")
    func auth() async throws {
        let engine = try FakeEngine()
        defer { engine.stop() }
        let configuration = WorkerHarness.configuration(engine: engine) { $0.apiKey = "sk-test" }
        try await WorkerHarness.withWorker(configuration) { port, _ in
            let missing = try await TestHTTP.get(port: port, "/v1/models")
            #expect(missing.status == 401)
            #expect(missing.errorType == "authentication_error")
            #expect(try await TestHTTP.get(port: port, "/v1/models", headers: [("Authorization", "Bearer sk-tesT")]).status == 401)
            #expect(try await TestHTTP.get(port: port, "/v1/models", headers: [("Authorization", "sk-test")]).status == 401)
            #expect(try await TestHTTP.post(port: port, "/v1/completions", "{", headers: [("Authorization", "Bearer x")]).status == 401)
            #expect(try await TestHTTP.get(port: port, "/v1/models", headers: [("Authorization", "Bearer sk-test")]).status == 200)
            #expect(try await TestHTTP.get(port: port, "/health").status == 200)
        }
    }

    @Test("adapter load/unload rules, ids never reused, engine refusal leaves the table unchanged")
    func adapterRules() async throws {
        let engine = try FakeEngine()
        defer { engine.stop() }
        let root = PathPolicyTests.makeTree()
        defer { try? FileManager.default.removeItem(atPath: root) }
        try? FileManager.default.createDirectory(atPath: root + "/lora/second", withIntermediateDirectories: true)
        try? FileManager.default.createDirectory(atPath: root + "/lora/refuse", withIntermediateDirectories: true)
        let configuration = WorkerHarness.configuration(engine: engine) {
            $0.allowRuntimeLoraUpdating = true
            $0.pathPolicy = PathPolicy(allowedPrefixes: [root + "/lora"])
        }
        try await WorkerHarness.withWorker(configuration) { port, service in
            func load(_ body: String) async throws -> TestHTTPResponse {
                try await TestHTTP.post(port: port, "/v1/load_lora_adapter", body)
            }
            func unload(_ body: String) async throws -> TestHTTPResponse {
                try await TestHTTP.post(port: port, "/v1/unload_lora_adapter", body)
            }
            let good = root + "/lora/good"
            let loaded = try await load(#"{"lora_name":"a","lora_path":"\#(good)"}"#)
            #expect(loaded.status == 200)
            #expect(loaded.text == "Success: LoRA adapter 'a' added successfully.")
            #expect(service.replica.resolve(model: "a")?.adapter?.intID == 1)

            let again = try await load(#"{"lora_name":"a","lora_path":"\#(good)"}"#)
            #expect(again.status == 400)
            // vLLM's Rust frontend (`routes/lora.rs`, `LoadLoraError::AlreadyLoaded`).
            #expect(
                again.errorMessage
                    == "LoRA adapter `a` is already loaded. If you want to load the adapter in place, set 'load_inplace' to true.")
            #expect(again.errorParam == "lora_name")

            let inplace = try await load(#"{"lora_name":"a","lora_path":"\#(root)/lora/second","load_inplace":true}"#)
            #expect(inplace.status == 200)
            #expect(service.replica.resolve(model: "a")?.adapter?.intID == 1)
            #expect(service.replica.resolve(model: "a")?.adapter?.path == root + "/lora/second")

            let base = try await load(#"{"lora_name":"tiny-llama","lora_path":"\#(good)"}"#)
            #expect(base.status == 400 && base.errorParam == "lora_name")

            let missingPath = try await load(#"{"lora_name":"b"}"#)
            #expect(missingPath.status == 400 && missingPath.errorParam == "lora_path")
            let missingName = try await load(#"{"lora_path":"\#(good)"}"#)
            #expect(missingName.status == 400 && missingName.errorParam == "lora_name")
            let wrongType = try await load(#"{"lora_name":"b","lora_path":"\#(good)","load_inplace":"yes"}"#)
            #expect(wrongType.status == 400 && wrongType.errorParam == "load_inplace")

            let versionBefore = service.replica.version
            let refused = try await load(#"{"lora_name":"r","lora_path":"\#(root)/lora/refuse"}"#)
            #expect(refused.status == 400)
            #expect(refused.errorMessage?.contains("adapter_config.json") == true)
            #expect(service.replica.version == versionBefore)
            #expect(service.replica.resolve(model: "r") == nil)

            // The adapter serves requests with its id.
            let completion = try await TestHTTP.post(port: port, "/v1/completions", #"{"model":"a","prompt":"x","max_tokens":2}"#)
            #expect(completion.status == 200)
            #expect(
                engine.state.withLock { $0.generateRequests.last?.adapter } == AdapterRef(name: "a", intID: 1, path: root + "/lora/second"))
            let models = try await TestHTTP.get(port: port, "/v1/models")
            guard case .array(let data)? = models.json?["data"] else {
                Issue.record("no data")
                return
            }
            #expect(data.count == 2)
            #expect(data[1]["root"] == .string(root + "/lora/second"))
            #expect(data[1]["parent"] == .string("tiny-llama"))

            #expect(try await unload(#"{"lora_name":"zzz"}"#).json?["error"]?["code"] == .string("model_not_found"))
            #expect(try await unload(#"{"lora_name":"zzz"}"#).status == 404)
            let mismatch = try await unload(#"{"lora_name":"a","lora_int_id":7}"#)
            #expect(mismatch.status == 400 && mismatch.errorParam == "lora_int_id")
            let removed = try await unload(#"{"lora_name":"a","lora_int_id":1}"#)
            #expect(removed.status == 200)
            #expect(removed.text == "Success: LoRA adapter 'a' removed successfully.")
            #expect(try await TestHTTP.post(port: port, "/v1/completions", #"{"model":"a","prompt":"x"}"#).status == 404)

            // Ids are never reused: a new adapter after an unload gets 2.
            #expect(try await load(#"{"lora_name":"b","lora_path":"\#(good)"}"#).status == 200)
            #expect(service.replica.resolve(model: "b")?.adapter?.intID == 2)
            #expect(engine.state.withLock { Set($0.adapters.keys) } == [2])

            // An engine that refuses a removal: vLLM's Rust frontend's 500 (`lora.rs`,
            // `UnloadLoraError::Engine`), and the adapter stays loaded and served.
            engine.state.withLock { $0.refuseRemovals = true }
            let stuck = try await unload(#"{"lora_name":"b"}"#)
            #expect(stuck.status == 500)
            #expect(
                stuck.json
                    == VLLMCompatTests.envelope(
                        "engine rejected removal of LoRA adapter `b` with id 2", type: "server_error", param: nil, code: "server_error"))
            #expect(service.replica.resolve(model: "b")?.adapter?.intID == 2)
            #expect(try await TestHTTP.post(port: port, "/v1/completions", #"{"model":"b","prompt":"x","max_tokens":2}"#).status == 200)
            engine.state.withLock { $0.refuseRemovals = false }
            #expect(try await unload(#"{"lora_name":"b"}"#).status == 200)
        }
    }

    @Test("hostile lora_path values are refused with 400 param lora_path")
    func hostilePaths() async throws {
        let engine = try FakeEngine()
        defer { engine.stop() }
        let root = PathPolicyTests.makeTree()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let configuration = WorkerHarness.configuration(engine: engine) {
            $0.allowRuntimeLoraUpdating = true
            $0.pathPolicy = PathPolicy(allowedPrefixes: [root + "/lora"])
        }
        try await WorkerHarness.withWorker(configuration) { port, service in
            let hostile: [String] = [
                root + "/lora/../outside", "lora/good", "./lora/good", "~/lora/good", root + "/lora/escape",
                root + "/lora-evil/x", root + "/lora/missing", root + "/lora/file.txt",
                root + "/lora/" + String(repeating: "a/", count: 2100), root + "/lora/good\\u0000", "org/adapter",
            ]
            for path in hostile {
                let body = JSONWriter.encode(.object([("lora_name", .string("h")), ("lora_path", .string(path))]))
                let response = try await TestHTTP.request(
                    port: port, "POST", "/v1/load_lora_adapter", headers: [("Content-Type", "application/json")],
                    body: path.hasSuffix("\\u0000") ? Array(#"{"lora_name":"h","lora_path":"\#(path)"}"#.utf8) : body)
                #expect(response.status == 400, "\(path.prefix(100))")
                #expect(response.errorParam == "lora_path", "\(path.prefix(100))")
            }
            #expect(service.replica.snapshot().adapters.isEmpty)
            #expect(engine.state.withLock { $0.adapters.isEmpty })
        }
    }

    @Test("an unreachable engine is a 503 naming the engine, not a wait for a call deadline")
    func engineDown() async throws {
        let engine = try FakeEngine()
        let configuration = WorkerHarness.configuration(engine: engine)
        try await WorkerHarness.withWorker(configuration) { port, _ in
            #expect(try await TestHTTP.get(port: port, "/health").status == 200)
            engine.stop()
            try await Task.sleep(for: .milliseconds(100))
            let health = try await TestHTTP.get(port: port, "/health")
            #expect(health.status == 503)
            #expect(health.errorType == "server_error")
            let completion = try await TestHTTP.post(port: port, "/v1/completions", #"{"prompt":"x"}"#)
            #expect(completion.status == 503)
            // Refused at connect time (the engine's socket is gone), not after a call deadline.
            #expect(completion.errorMessage?.contains("engine unavailable") == true, "\(completion.text)")
            #expect(completion.errorMessage?.contains("did not answer within") == false)
            // Models still answer from the replica.
            #expect(try await TestHTTP.get(port: port, "/v1/models").status == 200)
        }
    }

    @Test("a client that disconnects mid-stream aborts its engine request")
    func disconnectAborts() async throws {
        let engine = try FakeEngine(tokenDelay: .milliseconds(20))
        defer { engine.stop() }
        try await WorkerHarness.withWorker(WorkerHarness.configuration(engine: engine)) { port, _ in
            let connection = try await offPool { () throws -> TestHTTPConnection in
                let connection = try TestHTTPConnection(port: port)
                connection.sendRequest(
                    "POST", "/v1/completions", headers: [("Content-Type", "application/json")],
                    body: Array(#"{"prompt":"x","max_tokens":500,"stream":true}"#.utf8))
                let head = try connection.readHead()
                #expect(head.status == 200)
                _ = try connection.readChunk()
                _ = try connection.readChunk()
                return connection
            }
            #expect(engine.runningCount == 1)
            connection.disconnect()
            let deadline = ContinuousClock.now + .seconds(30)
            while engine.runningCount > 0, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(engine.runningCount == 0)
            #expect(engine.state.withLock { $0.abortRequests.count } == 1)
        }
    }

    @Test(
        "a client that disconnects before anything is written (not streamed: 500 tokens take 10 s; one choice and n=2) aborts its engine requests"
    )
    func disconnectBeforeTheAnswerAborts() async throws {
        let engine = try FakeEngine(tokenDelay: .milliseconds(20))
        defer { engine.stop() }
        try await WorkerHarness.withWorker(WorkerHarness.configuration(engine: engine)) { port, _ in
            let bodies = [
                ("/v1/completions", #"{"prompt":"x","max_tokens":500}"#),
                ("/v1/completions", #"{"prompt":"x","max_tokens":500,"n":2}"#),
            ]
            for (index, (path, body)) in bodies.enumerated() {
                let connection = try await offPool { () throws -> TestHTTPConnection in
                    let connection = try TestHTTPConnection(port: port)
                    connection.sendRequest("POST", path, headers: [("Content-Type", "application/json")], body: Array(body.utf8))
                    return connection
                }
                let started = ContinuousClock.now + .seconds(10)
                while engine.runningCount == 0, ContinuousClock.now < started { try await Task.sleep(for: .milliseconds(10)) }
                #expect(engine.runningCount > 0, "\(body): never reached the engine")
                connection.disconnect()
                let deadline = ContinuousClock.now + .seconds(5)
                while engine.runningCount > 0, ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(20))
                }
                #expect(engine.runningCount == 0, "\(body): still generating after the client left")
                let expected = index == 0 ? 1 : 3
                #expect(engine.state.withLock { $0.abortRequests.count } == expected, "\(body)")
            }
        }
    }

    @Test("drain lets requests in flight finish, then stops accepting")
    func drain() async throws {
        let engine = try FakeEngine(tokenDelay: .milliseconds(50))
        defer { engine.stop() }
        try await WorkerHarness.withWorker(WorkerHarness.configuration(engine: engine)) { port, service in
            async let slow = TestHTTP.post(port: port, "/v1/completions", #"{"prompt":"x","max_tokens":15}"#)
            // Drain once the request has reached the engine (it then streams for about 750 ms),
            // however loaded the machine is.
            let reached = ContinuousClock.now + .seconds(20)
            while engine.state.withLock({ $0.generateRequests.isEmpty }), ContinuousClock.now < reached {
                try await Task.sleep(for: .milliseconds(5))
            }
            #expect(engine.state.withLock { $0.generateRequests.count } == 1)
            await service.drain(grace: .seconds(5))
            let response = try await slow
            #expect(response.status == 200)
            #expect(
                response.json?["choices"].flatMap { if case .array(let a) = $0 { a.first?["text"] } else { nil } }
                    == .string("ABCDEFGHIJKLMNO"))
            await #expect(throws: (any Error).self) { try await TestHTTP.get(port: port, "/v1/models") }
        }
    }

    @Test("standalone restart keeps adapters and ids (state dir), and re-adds them to a fresh engine")
    func persistence() async throws {
        let root = PathPolicyTests.makeTree()
        let state = makeTemporaryDirectory("lk-state")
        defer {
            try? FileManager.default.removeItem(atPath: root)
            try? FileManager.default.removeItem(atPath: state)
        }
        let first = try FakeEngine()
        let configure: (inout WorkerConfiguration) -> Void = {
            $0.allowRuntimeLoraUpdating = true
            $0.pathPolicy = PathPolicy(allowedPrefixes: [root + "/lora"])
            $0.stateDirectory = state
        }
        try await WorkerHarness.withWorker(WorkerHarness.configuration(engine: first, configure)) { port, _ in
            for name in ["a", "b"] {
                let response = try await TestHTTP.post(
                    port: port, "/v1/load_lora_adapter", #"{"lora_name":"\#(name)","lora_path":"\#(root)/lora/good"}"#)
                #expect(response.status == 200)
            }
            #expect(try await TestHTTP.post(port: port, "/v1/unload_lora_adapter", #"{"lora_name":"a"}"#).status == 200)
        }
        first.stop()
        let second = try FakeEngine()
        defer { second.stop() }
        let restarted = WorkerHarness.configuration(engine: second) {
            configure(&$0)
            $0.loraModules = [LoraModule(name: "boot", path: root + "/lora/inside")]
        }
        try await WorkerHarness.withWorker(restarted) { port, service in
            #expect(service.replica.resolve(model: "b")?.adapter?.intID == 2)
            #expect(service.replica.resolve(model: "a") == nil)
            #expect(service.replica.resolve(model: "boot")?.adapter?.intID == 3)
            #expect(second.state.withLock { Set($0.adapters.keys) } == [2, 3])
            let response = try await TestHTTP.post(port: port, "/v1/completions", #"{"model":"b","prompt":"x","max_tokens":1}"#)
            #expect(response.status == 200)
        }
    }
}

@Suite("Listening on an inherited fd", .timeLimit(.minutes(1)), .ownThreads)
struct InheritedFDTests {
    /// A bound, listening TCP socket on 127.0.0.1 (as the supervisor hands to a worker slot).
    static func listeningSocket() throws -> (fd: Int32, port: Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = TestEnvironment.withLoopbackAddress(port: 0) { bind(fd, $0, $1) }
        guard bound == 0, listen(fd, 128) == 0 else { throw TestHTTPError.connect(errno) }
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return (fd, Int(UInt16(bigEndian: address.sin_port)))
    }

    @Test("--listen-fd: the worker serves on a socket it did not bind")
    func inherited() async throws {
        let engine = try FakeEngine()
        defer { engine.stop() }
        let (fd, port) = try Self.listeningSocket()
        let configuration = WorkerHarness.configuration(engine: engine) { $0.listen = .inheritedFD(fd) }
        try await WorkerHarness.withWorker(configuration) { (readyPort: Int, _: WorkerService) async throws in
            #expect(readyPort == port)
            #expect(try await TestHTTP.get(port: port, "/v1/models").status == 200)
            #expect(try await TestHTTP.post(port: port, "/v1/completions", #"{"prompt":"x","max_tokens":2}"#).status == 200)
        }
    }
}

/// A follower-style mutator: records the calls and answers with a fixed status.
final class RecordingMutator: AdapterMutator {
    let calls = Mutex<[String]>([])
    let status: Status
    init(status: Status) { self.status = status }
    func load(_ request: LoadAdapterRequest) async -> AdapterMutationReply {
        self.calls.withLock { $0.append("load \(request.name) \(request.path) slot \(request.originSlot)") }
        return AdapterMutationReply(status: self.status)
    }
    func unload(_ request: UnloadAdapterRequest) async -> AdapterMutationReply {
        self.calls.withLock { $0.append("unload \(request.name) \(request.intID)") }
        return AdapterMutationReply(status: self.status)
    }
}

@Suite("Supervised authority: the replica is fed from outside, mutations go to the given mutator", .timeLimit(.minutes(1)), .ownThreads)
struct SupervisedTests {
    @Test("routes use the injected mutator and resolve what the replica was given")
    func supervised() async throws {
        let engine = try FakeEngine()
        defer { engine.stop() }
        let mutator = RecordingMutator(status: Status(code: .unavailable, message: "no leader right now"))
        var configuration = WorkerHarness.configuration(engine: engine) {
            $0.allowRuntimeLoraUpdating = true
            $0.workerSlot = 3
        }
        configuration.stateDirectory = nil
        let service = WorkerService(
            configuration: configuration, logger: WorkerHarness.logger, authority: .supervised { _, _ in mutator })
        #expect(service.leader == nil)
        try await WorkerHarness.withWorker(service) { port, service in
            let load = try await TestHTTP.post(port: port, "/v1/load_lora_adapter", #"{"lora_name":"x","lora_path":"/a/b"}"#)
            #expect(load.status == 503)
            #expect(load.errorMessage == "no leader right now")
            #expect(try await TestHTTP.post(port: port, "/v1/unload_lora_adapter", #"{"lora_name":"x","lora_int_id":4}"#).status == 503)
            #expect(mutator.calls.withLock { $0 } == ["load x /a/b slot 3", "unload x 4"])
            // The control channel's change arrives: the adapter serves at once.
            engine.state.withLock { $0.adapters[7] = EngineAdapter(name: "x", intID: 7, path: "/a/b") }
            try service.replica.apply(
                change: TableChange(version: 1, upserts: [AdapterRecord(name: "x", intID: 7, path: "/a/b")], nextIntID: 8))
            let completion = try await TestHTTP.post(port: port, "/v1/completions", #"{"model":"x","prompt":"p","max_tokens":1}"#)
            #expect(completion.status == 200)
            #expect(engine.state.withLock { $0.generateRequests.last?.adapter?.intID } == 7)
        }
    }
}
