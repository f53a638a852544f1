import Foundation
import Logging
import LorikeetJSON
import LorikeetProto
import LorikeetTestSupport
import Testing

@testable import LorikeetWorker

/// The worker in front of the REAL built-in engine process (`lorikeet engine` on the
/// tiny-Llama fixture). Enabled when the debug binary has the `engine` subcommand and the
/// Python venv exists (bin/test prepares both).
@Suite("Worker with the real engine process", .serialized, .enabled(if: RealEngine.available), .timeLimit(.minutes(3)), .ownThreads)
struct RealEngineTests {
    static func reference() throws -> JSONValue {
        let data = try Data(contentsOf: URL(fileURLWithPath: try RealEngine.fixture() + "/reference.json"))
        return try JSONParser.parse(Array(data))
    }

    static func greedy(_ reference: JSONValue, _ name: String) -> JSONValue? { reference["cases"]?[name]?["greedy"] }

    static func configuration(engine: EngineProcess, fixture: String) -> WorkerConfiguration {
        WorkerConfiguration(
            engineSocket: engine.socket, listen: .address(host: "127.0.0.1", port: 0), servedModelNames: ["tiny"],
            allowRuntimeLoraUpdating: true, pathPolicy: PathPolicy(allowedPrefixes: [fixture]), drainGrace: .seconds(2),
            engineStartupTimeout: .seconds(30), version: "test")
    }

    /// `openai_e2e.py`: routes, adapters, JSON and SSE. `openai_sampling_e2e.py`: logprobs,
    /// echo, penalties, vLLM's defaults and refusals against numpy's references (issue 16).
    /// The worker is a child process, so a starved test pool cannot stall the script.
    @Test(
        "openai SDK end to end against `lorikeet worker` + `lorikeet engine` processes",
        arguments: ["openai_e2e.py", "openai_sampling_e2e.py"])
    func openAISDK(script: String) async throws {
        let fixture = try RealEngine.fixture()
        let engine = try EngineProcess()
        // The engine process stops when this object goes: keep it to the end of the test.
        defer { withExtendedLifetime(engine) {} }
        let worker = try ChildProcess(
            [
                "worker", "--engine-socket", engine.socket, "--port", "0", "--parent-pid", "\(getpid())", "--served-model-name", "tiny",
                "--state-dir", engine.directory + "/state", "--api-key", "sk-e2e",
            ],
            environment: [
                "LORIKEET_ALLOW_RUNTIME_LORA_UPDATING": "true", "VLLM_RUNTIME_LORA_ALLOWED_PATH_PREFIXES": fixture,
            ],
            logPath: engine.directory + "/worker.log")
        let port = try await offPool { () throws -> Int in
            let deadline = ContinuousClock.now + .seconds(60)
            while ContinuousClock.now < deadline, worker.isRunning {
                if let line = worker.log.split(separator: "\n").first(where: { $0.contains("lorikeet worker ready") }),
                    let port = line.split(separator: " ").last.flatMap({ Int($0) })
                {
                    return port
                }
                usleep(50_000)
            }
            throw RealEngine.Failure("worker did not start:\n\(worker.log)")
        }
        let (status, output) = try await offPool {
            try RealEngine.run(
                RealEngine.python,
                [
                    RealEngine.repoRoot + "/Tests/Fixtures/" + script, "--base-url", "http://127.0.0.1:\(port)/v1",
                    "--fixture", fixture, "--api-key", "sk-e2e",
                ])
        }
        #expect(status == 0, "\(output)\n--- worker log:\n\(worker.log.suffix(3000))")
        #expect(output.contains(" passed, 0 failed"))
        // SIGTERM drains and exits cleanly.
        try await offPool { worker.stop(grace: .seconds(10)) }
        #expect(worker.exitStatus == 0, "\(worker.log.suffix(2000))")
    }

    @Test("reference tokens, engine refusals of broken adapters, errors")
    func routes() async throws {
        let fixture = try RealEngine.fixture()
        let reference = try Self.reference()
        let engine = try EngineProcess()
        // The engine process stops when this object goes: keep it to the end of the test.
        defer { withExtendedLifetime(engine) {} }
        let configuration = Self.configuration(engine: engine, fixture: fixture)
        try await WorkerHarness.withWorker(configuration) { port, service in
            guard case .array(let prompt)? = reference["prompt_tokens"] else { throw RealEngine.Failure("no prompt") }
            let promptJSON = String(decoding: JSONWriter.encode(.array(prompt)), as: UTF8.self)
            func greedy(_ model: String) async throws -> JSONValue? {
                let response = try await TestHTTP.post(
                    port: port, "/v1/completions",
                    #"{"model":"\#(model)","prompt":\#(promptJSON),"max_tokens":16,"temperature":0,"ignore_eos":true,"return_token_ids":true}"#
                )
                guard case .array(let choices)? = response.json?["choices"] else { return nil }
                return choices.first?["token_ids"]
            }
            #expect(try await greedy("tiny") == Self.greedy(reference, "base"))
            for name in ["plain", "rslora", "rank32"] {
                let loaded = try await TestHTTP.post(
                    port: port, "/v1/load_lora_adapter", #"{"lora_name":"\#(name)","lora_path":"\#(fixture)/adapters/\#(name)"}"#)
                #expect(loaded.status == 200, "\(name): \(loaded.text)")
                #expect(try await greedy(name) == Self.greedy(reference, name), "\(name)")
            }
            // Broken adapters: the engine refuses, the table does not change.
            let before = service.replica.snapshot()
            let broken = (try? FileManager.default.contentsOfDirectory(atPath: fixture + "/broken")) ?? []
            #expect(!broken.isEmpty)
            for name in broken.sorted() {
                let response = try await TestHTTP.post(
                    port: port, "/v1/load_lora_adapter", #"{"lora_name":"bad-\#(name)","lora_path":"\#(fixture)/broken/\#(name)"}"#)
                #expect((400..<500).contains(response.status), "\(name): \(response.status) \(response.text)")
                #expect(response.errorMessage?.isEmpty == false)
            }
            #expect(service.replica.snapshot() == before)
            let held = try await service.engine.adapters.host.listAdapters()
            #expect(Set(held.map(\.intID)) == Set(before.adapters.map(\.intID)))
            // Unload then refused; ids are not reused.
            #expect(try await TestHTTP.post(port: port, "/v1/unload_lora_adapter", #"{"lora_name":"plain","lora_int_id":1}"#).status == 200)
            #expect(try await TestHTTP.post(port: port, "/v1/completions", #"{"model":"plain","prompt":"x"}"#).status == 404)
            #expect(
                try await TestHTTP.post(
                    port: port, "/v1/load_lora_adapter", #"{"lora_name":"again","lora_path":"\#(fixture)/adapters/plain"}"#
                ).status == 200)
            #expect(service.replica.resolve(model: "again")?.adapter?.intID == 4)
            #expect(try await greedy("again") == Self.greedy(reference, "plain"))
            // Errors.
            #expect(try await TestHTTP.post(port: port, "/v1/completions", #"{"model":"tiny","prompt":[999999]}"#).status == 400)
            #expect(try await TestHTTP.post(port: port, "/v1/completions", #"{"model":"tiny"}"#).errorParam == "prompt")
            #expect(try await TestHTTP.get(port: port, "/health").status == 200)
        }
    }

    @Test("stop_reason (vLLM): the stop string that matched, the stop token id, null at max_tokens; streamed on the finishing chunk")
    func stopReason() async throws {
        let fixture = try RealEngine.fixture()
        let engine = try EngineProcess()
        defer { withExtendedLifetime(engine) {} }
        try await WorkerHarness.withWorker(Self.configuration(engine: engine, fixture: fixture)) { port, _ in
            func choice(_ route: String, _ fields: String) async throws -> JSONValue? {
                let body = route == "/v1/completions" ? #""prompt":"hello""# : #""messages":[{"role":"user","content":"hello"}]"#
                let response = try await TestHTTP.post(
                    port: port, route, #"{\#(body),"max_tokens":12,"temperature":0,"ignore_eos":true,\#(fields)}"#)
                #expect(response.status == 200, "\(response.text)")
                if fields.contains(#""stream":true"#) {
                    let events = response.text.split(separator: "\n").filter { $0.hasPrefix("data: {") }
                    let finishing = events.compactMap { line -> JSONValue? in
                        guard let event = try? JSONParser.parse(Array(line.dropFirst(6).utf8)),
                            case .array(let choices)? = event["choices"], let first = choices.first,
                            first["finish_reason"] != .null
                        else { return nil }
                        return first
                    }
                    #expect(finishing.count == 1, "\(response.text)")
                    return finishing.first
                }
                guard case .array(let choices)? = response.json?["choices"] else { return nil }
                return choices.first
            }
            for route in ["/v1/completions", "/v1/chat/completions"] {
                let plain = try await choice(route, #""return_token_ids":true"#)
                #expect(plain?["finish_reason"] == .string("length") && plain?["stop_reason"] == .null, "\(route)")
                guard case .array(let ids)? = plain?["token_ids"], let firstID = ids.first,
                    case .string(let text)? = plain?["text"] ?? plain?["message"]?["content"], text.unicodeScalars.count >= 4
                else {
                    Issue.record("\(route): no greedy text to stop on: \(String(describing: plain))")
                    continue
                }
                let stop = String(String.UnicodeScalarView(text.unicodeScalars.dropFirst(2).prefix(2)))
                let stopJSON = String(decoding: JSONWriter.encode(.array([.string(stop)])), as: UTF8.self)
                for stream in ["false", "true"] {
                    let byString = try await choice(route, #""stop":\#(stopJSON),"stream":\#(stream)"#)
                    #expect(byString?["finish_reason"] == .string("stop"), "\(route) stream \(stream)")
                    #expect(byString?["stop_reason"] == .string(stop), "\(route) stream \(stream): \(String(describing: byString))")
                    let byToken = try await choice(
                        route, #""stop_token_ids":[\#(String(decoding: JSONWriter.encode(firstID), as: UTF8.self))],"stream":\#(stream)"#)
                    #expect(byToken?["finish_reason"] == .string("stop"), "\(route) stream \(stream)")
                    #expect(byToken?["stop_reason"] == firstID, "\(route) stream \(stream): \(String(describing: byToken))")
                }
            }
        }
    }

    @Test("a client that disconnects mid-stream aborts the generation in the engine")
    func disconnectAborts() async throws {
        let fixture = try RealEngine.fixture()
        let engine = try EngineProcess()
        // The engine process stops when this object goes: keep it to the end of the test.
        defer { withExtendedLifetime(engine) {} }
        let configuration = Self.configuration(engine: engine, fixture: fixture)
        let probe = EngineClient(socketPath: engine.socket, logger: WorkerHarness.logger)
        try await WorkerHarness.withWorker(configuration) { port, _ in
            // Long streams keep the engine busy; on a loaded machine the engine may still
            // finish before we look, so the scenario is retried until the running requests
            // are observed (a run that never observes them fails below).
            var observed = false
            for _ in 0..<10 where !observed {
                let streams = 16
                let connections = try await offPool { () throws -> [TestHTTPConnection] in
                    var connections: [TestHTTPConnection] = []
                    for _ in 0..<streams {
                        let connection = try TestHTTPConnection(port: port)
                        connection.sendRequest(
                            "POST", "/v1/completions", headers: [("Content-Type", "application/json")],
                            body: Array(#"{"model":"tiny","prompt":"Hello","max_tokens":240,"ignore_eos":true,"stream":true}"#.utf8))
                        connections.append(connection)
                    }
                    _ = try connections[0].readHead()
                    _ = try connections[0].readChunk()
                    return connections
                }
                let runningBefore = try await probe.health().runningRequests
                for connection in connections { connection.disconnect() }
                let deadline = ContinuousClock.now + .seconds(10)
                var running = runningBefore
                while running > 0, ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(10))
                    running = try await probe.health().runningRequests
                }
                #expect(running == 0, "generations kept running after their clients disconnected")
                observed = runningBefore > 0
                _ = connections
            }
            // Without the abort, 240 tokens x 16 streams would still be running at the check.
            #expect(observed, "the engine finished before every disconnect; the test never observed an abort")
        }
        probe.shutdown()
    }

    /// vLLM's `/tokenize` and `/detokenize` (`serve/tokenize/protocol.py@343bacaf`) through
    /// the engine process's tokenizer, against the fixture's reference (`reference.json`:
    /// `prompt` and its `prompt_tokens`, BOS included, from make_tiny_llama.py).
    @Test("/tokenize and /detokenize round trip against the fixture's reference tokens")
    func tokenizeRoundTrip() async throws {
        let fixture = try RealEngine.fixture()
        let reference = try Self.reference()
        let engine = try EngineProcess()
        let configuration = Self.configuration(engine: engine, fixture: fixture)
        try await WorkerHarness.withWorker(configuration) { port, _ in
            guard case .string(let prompt)? = reference["prompt"], case .array(let expected)? = reference["prompt_tokens"] else {
                throw RealEngine.Failure("no prompt in reference.json")
            }
            let promptJSON = String(decoding: JSONWriter.encode(.string(prompt)), as: UTF8.self)
            let maxModelLength = try await TestHTTP.get(port: port, "/v1/models/tiny").json?["max_model_len"]
            #expect(maxModelLength != nil && maxModelLength != .null)

            // Prompt form: add_special_tokens defaults to true (BOS).
            let tokenized = try await TestHTTP.post(port: port, "/tokenize", #"{"model":"tiny","prompt":\#(promptJSON)}"#)
            #expect(tokenized.status == 200, "\(tokenized.text)")
            #expect(
                tokenized.json
                    == .object([
                        ("count", .int(Int64(expected.count))), ("max_model_len", maxModelLength ?? .null), ("tokens", .array(expected)),
                        ("token_strs", .null),
                    ]))
            // Without special tokens: the same ids less BOS; token strings on request; model "" is the default.
            let plain = try await TestHTTP.post(
                port: port, "/tokenize", #"{"model":"","prompt":\#(promptJSON),"add_special_tokens":false,"return_token_strs":true}"#)
            #expect(plain.json?["tokens"] == .array(Array(expected.dropFirst())))
            #expect(plain.json?["token_strs"] == .array(prompt.map { .string(String($0)) }))

            // Back to text, special tokens kept as vLLM's /detokenize does (BOS is "<s>").
            let detokenized = try await TestHTTP.post(
                port: port, "/detokenize",
                #"{"model":"tiny","tokens":\#(String(decoding: JSONWriter.encode(.array(expected)), as: UTF8.self))}"#)
            #expect(detokenized.json == .object([("prompt", .string("<s>" + prompt))]), "\(detokenized.text)")

            // Chat form: the template's text, parts joined with "\n"; add_generation_prompt
            // (default true) adds the assistant opener; add_special_tokens defaults to false.
            let messages = #"[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]"#
            let chat = try await TestHTTP.post(port: port, "/tokenize", #"{"messages":\#(messages)}"#)
            let rendered = "<|user|>\na\nb\n<|assistant|>\n"
            #expect(chat.json?["tokens"] == .array(rendered.utf8.map { .int(Int64($0)) }), "\(chat.text)")
            let open = try await TestHTTP.post(port: port, "/tokenize", #"{"messages":\#(messages),"add_generation_prompt":false}"#)
            #expect(open.json?["count"] == .int(Int64("<|user|>\na\nb\n".utf8.count)))

            // vLLM's errors: unknown model, ids outside the vocabulary, a prompt over the context.
            let missing = try await TestHTTP.post(port: port, "/tokenize", #"{"model":"nope","prompt":"x"}"#)
            #expect(missing.status == 404 && missing.json?["error"]?["code"] == .string("model_not_found"))
            let outside = try await TestHTTP.post(port: port, "/detokenize", #"{"tokens":[1,99999]}"#)
            #expect(outside.status == 400 && outside.errorParam == "tokens", "\(outside.text)")
            let long = String(repeating: "x", count: 4096)
            let tooLong = try await TestHTTP.post(port: port, "/tokenize", #"{"prompt":"\#(long)"}"#)
            #expect(tooLong.status == 400 && tooLong.errorParam == "prompt", "\(tooLong.text)")
            let both = try await TestHTTP.post(port: port, "/tokenize", #"{"messages":\#(messages),"continue_final_message":true}"#)
            #expect(both.status == 400 && both.errorParam == "continue_final_message")
            let noTokens = try await TestHTTP.post(port: port, "/detokenize", #"{"model":"tiny"}"#)
            #expect(noTokens.status == 400 && noTokens.json?["error"]?["code"] == .string("json_parse_error"))
        }
    }
}
