import Foundation
import HTTPTypes
import LorikeetJSON
import LorikeetProto
import LorikeetTestSupport
import Testing

@testable import LorikeetWorker

@Suite("Request validation names the param", .ownThreads)
struct ValidationTests {
    static let cases: [(String, GenerationRoute, String?)] = [
        (#"{"model":"m"}"#, .completions, "prompt"),
        (#"{"model":"m","prompt":5}"#, .completions, "prompt"),
        (#"{"model":"m","prompt":[]}"#, .completions, "prompt"),
        (#"{"model":"m","prompt":[1,-1]}"#, .completions, "prompt"),
        (#"{"model":7,"prompt":"x"}"#, .completions, "model"),
        (#"{"prompt":"x","max_tokens":"5"}"#, .completions, "max_tokens"),
        (#"{"prompt":"x","max_tokens":1.5}"#, .completions, "max_tokens"),
        (#"{"prompt":"x","max_tokens":0}"#, .completions, "max_tokens"),
        (#"{"prompt":"x","temperature":"hot"}"#, .completions, "temperature"),
        (#"{"prompt":"x","temperature":3}"#, .completions, "temperature"),
        (#"{"prompt":"x","top_p":0}"#, .completions, "top_p"),
        (#"{"prompt":"x","stream":"yes"}"#, .completions, "stream"),
        (#"{"prompt":"x","n":17}"#, .completions, "n"),
        (#"{"prompt":"x","n":0}"#, .completions, "n"),
        (#"{"prompt":"x","n":3,"best_of":2}"#, .completions, "best_of"),
        (#"{"prompt":"x","best_of":3,"stream":true}"#, .completions, "best_of"),
        (#"{"prompt":"x","best_of":17}"#, .completions, "best_of"),
        (#"{"prompt":"x","best_of":2,"temperature":0}"#, .completions, "best_of"),
        (#"{"prompt":["a","b"],"best_of":9}"#, .completions, "best_of"),
        (#"{"messages":[{"role":"user","content":"x"}],"best_of":2}"#, .chatCompletions, "best_of"),
        (#"{"prompt":["a","b","c"],"n":6}"#, .completions, "n"),
        (#"{"prompt":["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p","q"]}"#, .completions, "prompt"),
        (#"{"prompt":["a",[1,2],3]}"#, .completions, "prompt"),
        (#"{"prompt":"x","stop":[1]}"#, .completions, "stop[0]"),
        (#"{"prompt":"x","stream_options":{"include_usage":true}}"#, .completions, "stream_options"),
        (#"{"prompt":"x","stream":true,"stream_options":{"include_usage":1}}"#, .completions, "stream_options.include_usage"),
        (#"{"prompt":"x","user":3}"#, .completions, "user"),
        (#"{"model":"m"}"#, .chatCompletions, "messages"),
        (#"{"messages":{}}"#, .chatCompletions, "messages"),
        (#"{"messages":[]}"#, .chatCompletions, "messages"),
        (#"{"messages":[1]}"#, .chatCompletions, "messages[0]"),
        (#"{"messages":[{"content":"x"}]}"#, .chatCompletions, "messages[0].role"),
        (#"{"messages":[{"role":"wizard","content":"x"}]}"#, .chatCompletions, "messages[0].role"),
        (#"{"messages":[{"role":"user"}]}"#, .chatCompletions, "messages[0].content"),
        (#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#, .chatCompletions, "messages[0].content"),
        (#"{"messages":[{"role":"user","content":"x"}],"max_completion_tokens":"a"}"#, .chatCompletions, "max_completion_tokens"),
        // The sampling surface (issue 16): every range and refusal names its field.
        (#"{"prompt":"x","logprobs":21}"#, .completions, "logprobs"),
        (#"{"prompt":"x","logprobs":true}"#, .completions, "logprobs"),
        (#"{"prompt":"x","echo":"yes"}"#, .completions, "echo"),
        (#"{"prompt":"x","prompt_logprobs":2}"#, .completions, "prompt_logprobs"),
        (#"{"prompt":"x","min_p":1.5}"#, .completions, "min_p"),
        (#"{"prompt":"x","presence_penalty":3}"#, .completions, "presence_penalty"),
        (#"{"prompt":"x","frequency_penalty":-2.5}"#, .completions, "frequency_penalty"),
        (#"{"prompt":"x","repetition_penalty":0}"#, .completions, "repetition_penalty"),
        (#"{"prompt":"x","repetition_penalty":101}"#, .completions, "repetition_penalty"),
        (#"{"prompt":"x","min_tokens":17}"#, .completions, "min_tokens"),
        (#"{"prompt":"x","logit_bias":[1]}"#, .completions, "logit_bias"),
        (#"{"prompt":"x","logit_bias":{"a":1}}"#, .completions, "logit_bias"),
        (#"{"prompt":"x","logit_bias":{"-1":1}}"#, .completions, "logit_bias"),
        (#"{"prompt":"x","logit_bias":{"5":"high"}}"#, .completions, "logit_bias"),
        (#"{"prompt":"x","include_stop_str_in_output":1}"#, .completions, "include_stop_str_in_output"),
        (#"{"prompt":"x","skip_special_tokens":"no"}"#, .completions, "skip_special_tokens"),
        (#"{"prompt":"x","response_format":{"type":"json_schema"}}"#, .completions, "response_format"),
        (#"{"prompt":"x","response_format":{"type":"json_schema","json_schema":{"name":"a"}}}"#, .completions, "response_format"),
        (#"{"prompt":"x","response_format":{"type":"yaml"}}"#, .completions, "response_format"),
        (#"{"prompt":"x","guided_json":{"type":"string","format":"email"}}"#, .completions, "guided_json"),
        (#"{"prompt":"x","guided_json":"{not json"}"#, .completions, "guided_json"),
        (#"{"prompt":"x","guided_json":3}"#, .completions, "guided_json"),
        (#"{"prompt":"x","guided_choice":[]}"#, .completions, "guided_choice"),
        (#"{"prompt":"x","guided_choice":["a",1]}"#, .completions, "guided_choice"),
        (#"{"prompt":"x","guided_regex":"a+"}"#, .completions, "guided_regex"),
        (#"{"prompt":"def f(","suffix":"\n    return x"}"#, .completions, "suffix"),
        (#"{"prompt":"x","suffix":""}"#, .completions, "suffix"),
        (#"{"prompt":"x","structured_outputs":{"grammar":"root ::= x"}}"#, .completions, "structured_outputs"),
        (#"{"prompt":"x","guided_json":{},"guided_choice":["a"]}"#, .completions, "guided_choice"),
        (#"{"prompt":"x","structured_outputs":{}}"#, .completions, "structured_outputs"),
        (#"{"prompt":"x","structured_outputs":{"choice":["a"],"json":{}}}"#, .completions, "structured_outputs"),
        (#"{"prompt":"x","bad_words":"a"}"#, .completions, "bad_words"),
        (#"{"prompt":"x","bad_words":[1]}"#, .completions, "bad_words"),
        (#"{"prompt":"x","cache_salt":""}"#, .completions, "cache_salt"),
        (#"{"prompt":"x","cache_salt":7}"#, .completions, "cache_salt"),
        (#"{"prompt":"x","cache_salt":"a\u0000b"}"#, .completions, "cache_salt"),
        ("{\"prompt\":\"x\",\"cache_salt\":\"\(String(repeating: "s", count: 257))\"}", .completions, "cache_salt"),
        (#"{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#, .chatCompletions, "tools"),
        (#"{"messages":[{"role":"user","content":"x"}],"tool_choice":"auto"}"#, .chatCompletions, "tool_choice"),
        (#"{"messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":21}"#, .chatCompletions, "top_logprobs"),
        (#"{"messages":[{"role":"user","content":"x"}],"top_logprobs":2}"#, .chatCompletions, "top_logprobs"),
        (#"{"messages":[{"role":"user","content":"x"}],"logprobs":5}"#, .chatCompletions, "logprobs"),
        (#"{"messages":[{"role":"user","content":"x"}],"echo":true}"#, .chatCompletions, "echo"),
    ]

    @Test("structured output in each spelling reaches the engine as a schema text or a choice list")
    func structuredOutput() throws {
        func sampling(_ body: String, _ route: GenerationRoute = .chatCompletions) throws -> SamplingParams {
            try RequestValidation.generation(try RequestValidation.object(Array(body.utf8)), route: route).sampling
        }
        let chat = #""messages":[{"role":"user","content":"x"}]"#
        #expect(try sampling("{\(chat),\"response_format\":{\"type\":\"json_object\"}}").jsonSchema == #"{"type":"object"}"#)
        let schema = try sampling(
            "{\(chat),\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"p\",\"schema\":{\"type\":\"integer\"}}}}")
        #expect(schema.jsonSchema == #"{"type":"integer"}"# && schema.choices.isEmpty)
        #expect(try sampling(#"{"prompt":"x","guided_json":"{\"type\":\"null\"}"}"#, .completions).jsonSchema == #"{"type":"null"}"#)
        #expect(try sampling(#"{"prompt":"x","guided_choice":["a","b"]}"#, .completions).choices == ["a", "b"])
        #expect(try sampling("{\(chat),\"structured_outputs\":{\"choice\":[\"y\"]}}").choices == ["y"])
        #expect(try sampling("{\(chat),\"structured_outputs\":{\"json_object\":true}}").jsonSchema == #"{"type":"object"}"#)
        // vLLM's merge: response_format's schema replaces structured_outputs.json.
        let merged = try sampling(
            "{\(chat),\"structured_outputs\":{\"json\":{\"type\":\"string\"}},\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"n\",\"schema\":{\"type\":\"null\"}}}}"
        )
        #expect(merged.jsonSchema == #"{"type":"null"}"#)
        let plain = try sampling("{\(chat),\"response_format\":{\"type\":\"text\"}}")
        #expect(plain.jsonSchema == nil && plain.choices.isEmpty)
        #expect(try sampling("{\(chat),\"cache_salt\":\"tenant-7\"}").cacheSalt == "tenant-7")
        #expect(try sampling("{\(chat),\"cache_salt\":null}").cacheSalt == nil)
    }

    @Test("vLLM's defaults: omitted fields are left to the engine (the model's generation defaults, else vLLM's)")
    func defaults() throws {
        let completion = try RequestValidation.generation(
            try RequestValidation.object(Array(#"{"prompt":"x"}"#.utf8)), route: .completions)
        #expect(completion.sampling.maxTokens == 16)
        #expect(completion.sampling.temperature == nil && completion.sampling.topP == nil && completion.sampling.topK == nil)
        #expect(completion.sampling.minP == nil && completion.sampling.repetitionPenalty == nil)
        #expect(completion.logprobs == nil && !completion.echo && completion.sampling.promptLogprobs == nil)
        let chat = try RequestValidation.generation(
            try RequestValidation.object(Array(#"{"messages":[{"role":"user","content":"x"}]}"#.utf8)),
            route: .chatCompletions)
        #expect(chat.sampling.maxTokens == 0, "0 on the wire: the rest of the context")
        #expect(chat.sampling.temperature == nil)
    }

    @Test("processors, logprobs and echo are carried to the wire")
    func processors() throws {
        let body = try RequestValidation.object(
            Array(
                #"{"prompt":"x","max_tokens":9,"min_p":0.1,"presence_penalty":0.5,"frequency_penalty":-1,"repetition_penalty":1.2,"min_tokens":3,"logit_bias":{"65":150,"66":-3.5},"include_stop_str_in_output":true,"skip_special_tokens":true,"logprobs":4,"echo":true,"tool_choice":"none","response_format":{"type":"text"}}"#
                    .utf8))
        let p = try RequestValidation.generation(body, route: .completions)
        #expect(p.sampling.minP == 0.1 && p.sampling.presencePenalty == 0.5 && p.sampling.frequencyPenalty == -1)
        #expect(p.sampling.repetitionPenalty == 1.2 && p.sampling.minTokens == 3 && p.sampling.includeStopStrInOutput)
        #expect(p.sampling.logitBias == [LogitBias(tokenID: 65, bias: 100), LogitBias(tokenID: 66, bias: -3.5)], "clamped as vLLM")
        #expect(p.logprobs == 4 && p.echo && p.sampling.logprobs == 4 && p.sampling.promptLogprobs == 4)
        let chat = try RequestValidation.generation(
            try RequestValidation.object(
                Array(#"{"messages":[{"role":"user","content":"x"}],"logprobs":true}"#.utf8)), route: .chatCompletions)
        #expect(chat.logprobs == 0 && chat.sampling.logprobs == 0)
    }

    @Test("bad generation bodies", arguments: Self.cases)
    func badBodies(_ testCase: (String, GenerationRoute, String?)) throws {
        let body = try RequestValidation.object(Array(testCase.0.utf8))
        do {
            _ = try RequestValidation.generation(body, route: testCase.1)
            Issue.record("accepted \(testCase.0)")
        } catch {
            #expect(error.param == testCase.2, "\(testCase.0): \(error.message)")
            #expect(error.status == .badRequest)
        }
    }

    @Test("good bodies map to the engine's sampling parameters")
    func goodBodies() throws {
        let body = try RequestValidation.object(
            Array(
                #"{"model":"m","prompt":[[1,2,3]],"max_tokens":4,"temperature":0.5,"top_p":0.9,"top_k":-1,"seed":-1,"stop":"x","stream":true,"stream_options":{"include_usage":true},"n":1,"user":"u","ignore_eos":true}"#
                    .utf8))
        let parameters = try RequestValidation.generation(body, route: .completions)
        #expect(parameters.prompt == .tokens([1, 2, 3]))
        #expect(parameters.sampling.maxTokens == 4)
        #expect(parameters.sampling.topK == 0)
        #expect(parameters.sampling.seed == UInt64.max)
        #expect(parameters.sampling.stop == ["x"])
        #expect(parameters.sampling.ignoreEOS)
        #expect(parameters.stream && parameters.includeUsage)
        let chat = try RequestValidation.object(
            Array(
                #"{"messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},{"role":"assistant","content":null}],"max_completion_tokens":7}"#
                    .utf8))
        let chatParameters = try RequestValidation.generation(chat, route: .chatCompletions)
        #expect(
            chatParameters.prompt
                == .messages([
                    ChatMessage(role: "system", content: "s"), ChatMessage(role: "user", content: "a\nb"),
                    ChatMessage(role: "assistant", content: ""),
                ]))
        #expect(chatParameters.sampling.maxTokens == 7)
    }

    @Test("API key comparison")
    func constantTime() {
        #expect(WorkerRoutes.constantTimeEquals(Array("secret".utf8), Array("secret".utf8)))
        #expect(!WorkerRoutes.constantTimeEquals(Array("secret".utf8), Array("secreT".utf8)))
        #expect(!WorkerRoutes.constantTimeEquals(Array("secret".utf8), Array("secret2".utf8)))
        #expect(!WorkerRoutes.constantTimeEquals([], Array("x".utf8)))
    }

    @Test("--lora-modules forms")
    func loraModules() throws {
        #expect(try LoraModule(parsing: "a=/x/y") == LoraModule(name: "a", path: "/x/y"))
        #expect(
            try LoraModule(parsing: #"{"name":"b","path":"/p","base_model_name":"m"}"#)
                == LoraModule(name: "b", path: "/p", baseModelName: "m"))
        #expect(throws: Status.self) { try LoraModule(parsing: "nopath") }
        #expect(throws: Status.self) { try LoraModule(parsing: "=x") }
        #expect(throws: Status.self) { try LoraModule(parsing: #"{"name":"b"}"#) }
    }

    /// vLLM's rule (`vllm/envs.py`: `value.strip().lower() in ("1", "true")`; the Rust
    /// frontend's `runtime_lora_updating_enabled` trims and lowercases the same way).
    @Test(
        "runtime updating flag: trimmed, any case, only 1 and true (vLLM's envs.py)",
        arguments: [
            ("1", true), ("true", true), ("TRUE", true), ("TrUe", true), (" 1 ", true), ("true\n", true), ("\t1\r\n", true),
            ("", false), ("0", false), ("yes", false), ("on", false), ("2", false), ("false", false), ("t rue", false),
        ])
    func flags(value: String, on: Bool) {
        #expect(RouteConfiguration.runtimeLoraUpdatingEnabled(["VLLM_ALLOW_RUNTIME_LORA_UPDATING": value]) == on)
        #expect(RouteConfiguration.runtimeLoraUpdatingEnabled(["LORIKEET_ALLOW_RUNTIME_LORA_UPDATING": value]) == on)
    }

    @Test("runtime updating flag: unset is off")
    func flagUnset() {
        #expect(!RouteConfiguration.runtimeLoraUpdatingEnabled([:]))
    }
}

@Suite("Adapter table replica", .ownThreads)
struct ReplicaTests {
    @Test("resolve reads one snapshot; changes apply in order, gaps are refused, replays ignored")
    func changes() throws {
        let replica = AdapterTableReplica(baseModels: ["base"])
        #expect(replica.resolve(model: "base")! == ("base", nil))
        #expect(replica.resolve(model: "a") == nil)
        let a = AdapterRecord(name: "a", intID: 1, path: "/p/a")
        try replica.apply(change: TableChange(version: 1, upserts: [a], nextIntID: 2))
        #expect(replica.resolve(model: "a")?.base == "base")
        #expect(replica.resolve(model: "a")?.adapter == a)
        try replica.apply(change: TableChange(version: 1, upserts: [], removes: ["a"], nextIntID: 2))  // replay: ignored
        #expect(replica.resolve(model: "a") != nil)
        #expect(throws: Status.self) { try replica.apply(change: TableChange(version: 3, removes: ["a"], nextIntID: 2)) }
        try replica.apply(change: TableChange(version: 2, removes: ["a"], nextIntID: 2))
        #expect(replica.resolve(model: "a") == nil)
        #expect(replica.snapshot().nextIntID == 2)
        replica.apply(snapshot: AdapterTable(version: 9, adapters: [a], nextIntID: 5))
        #expect(replica.version == 9)
        #expect(replica.resolve(model: "a") != nil)
    }

    @Test("the state file round-trips and replaces atomically")
    func persistence() throws {
        let directory = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        #expect(try LocalTableCommitter.loadPersisted(directory: directory) == nil)
        let table = AdapterTable(version: 3, adapters: [AdapterRecord(name: "a", intID: 2, path: "/x")], nextIntID: 3)
        try LocalTableCommitter.persist(table, directory: directory)
        #expect(try LocalTableCommitter.loadPersisted(directory: directory) == table)
        #expect(!FileManager.default.fileExists(atPath: directory + "/adapters.pb.tmp"))
        try Data([0xFF, 0xFF, 0xFF]).write(to: URL(fileURLWithPath: directory + "/adapters.pb"))
        #expect(throws: Status.self) { try LocalTableCommitter.loadPersisted(directory: directory) }
    }
}

@Suite("Path policy (issue 5 item 4)", .ownThreads)
struct PathPolicyTests {
    /// A tree: root/lora/good (adapter dir), root/lora/file.txt, root/lora-evil/x,
    /// root/outside, root/lora/escape -> root/outside, root/lora/inside -> root/lora/good.
    static func makeTree() -> String {
        let root = makeTemporaryDirectory("lk-paths")
        let manager = FileManager.default
        for directory in ["lora/good", "lora-evil/x", "outside"] {
            try? manager.createDirectory(atPath: root + "/" + directory, withIntermediateDirectories: true)
        }
        _ = manager.createFile(atPath: root + "/lora/file.txt", contents: Data("x".utf8))
        try? manager.createSymbolicLink(atPath: root + "/lora/escape", withDestinationPath: root + "/outside")
        try? manager.createSymbolicLink(atPath: root + "/lora/inside", withDestinationPath: root + "/lora/good")
        return root
    }

    @Test("hostile and good paths")
    func table() throws {
        let root = Self.makeTree()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let policy = PathPolicy(allowedPrefixes: [root + "/lora", "/does/not/exist"])
        #expect(policy.allowedPrefixes == [root + "/lora"])
        #expect(policy.ignoredPrefixes == ["/does/not/exist"])
        let refused: [String] = [
            root + "/lora/../outside", root + "/lora/good/../../outside", "lora/good", "./lora/good", "~/lora",
            root + "/lora/escape", root + "/lora-evil/x", root + "/lora-evil", root + "/lora/missing",
            root + "/lora/file.txt", root + "/lora/" + String(repeating: "a", count: 5000),
            root + "/lora/" + String(repeating: "b", count: 300), root + "/lora/good\u{0}x", "",
            "some-org/some-adapter",
        ]
        for path in refused {
            #expect(throws: Status.self, "\(path.prefix(120))") { try policy.canonicalize(path) }
            do {
                _ = try policy.canonicalize(path)
            } catch {
                #expect(error.code == .invalidArgument)
                #expect(error.param == "lora_path")
            }
        }
        #expect(try policy.canonicalize(root + "/lora/good") == root + "/lora/good")
        #expect(try policy.canonicalize(root + "/lora/good/") == root + "/lora/good")
        #expect(try policy.canonicalize(root + "/lora/inside") == root + "/lora/good")
        #expect(try policy.canonicalize(root + "/lora/./good/../good") == root + "/lora/good")
        #expect(try policy.canonicalize(root + "/lora") == root + "/lora")
        // Without prefixes, every local path is refused.
        #expect(throws: Status.self) { try PathPolicy(allowedPrefixes: []).canonicalize(root + "/lora/good") }
        // vLLM's Rust frontend's messages (L7–L10 in docs/vllm-compat-spec.md).
        func message(_ policy: PathPolicy, _ path: String) -> String {
            do {
                _ = try policy.canonicalize(path)
                return ""
            } catch {
                return error.message
            }
        }
        #expect(
            message(PathPolicy(allowedPrefixes: []), root + "/lora/good")
                == "Local LoRA adapter paths require VLLM_RUNTIME_LORA_ALLOWED_PATH_PREFIXES (or LORIKEET_RUNTIME_LORA_ALLOWED_PATH_PREFIXES) to be configured."
        )
        #expect(
            message(policy, "./lora/good")
                == "Local LoRA adapter paths must be absolute and under one of the prefixes configured by VLLM_RUNTIME_LORA_ALLOWED_PATH_PREFIXES."
        )
        #expect(message(policy, root + "/lora/missing") == "Local LoRA adapter path must exist and be accessible.")
        #expect(message(policy, root + "/lora/../outside") == "Local LoRA adapter path is outside the configured allowed prefixes.")
        #expect(message(policy, root + "/lora/escape") == "Local LoRA adapter path is outside the configured allowed prefixes.")
    }

    @Test("local-path classification and component-wise prefixes")
    func classification() {
        #expect(PathPolicy.isLocalPath("/a"))
        #expect(PathPolicy.isLocalPath("~a"))
        #expect(PathPolicy.isLocalPath(".a"))
        #expect(PathPolicy.isLocalPath("a/../b"))
        #expect(!PathPolicy.isLocalPath("org/name"))
        #expect(PathPolicy.isUnder("/x/lora/a", prefix: "/x/lora"))
        #expect(PathPolicy.isUnder("/x/lora", prefix: "/x/lora"))
        #expect(!PathPolicy.isUnder("/x/lora-evil", prefix: "/x/lora"))
        #expect(PathPolicy.isUnder("/anything", prefix: "/"))
        let policy = PathPolicy.fromEnvironment(["VLLM_RUNTIME_LORA_ALLOWED_PATH_PREFIXES": "/tmp:/"])
        #expect(policy.allowedPrefixes.contains("/"))
    }
}
