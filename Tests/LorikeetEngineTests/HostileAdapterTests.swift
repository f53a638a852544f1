import Foundation
import LorikeetGGUF
import LorikeetTestSupport
import Testing

@testable import LorikeetEngine

#if canImport(Glibc)
    import Glibc
#endif

/// A PEFT adapter for the fixture model, written from Swift: `adapter_config.json` from
/// `config` and an F32 `adapter_model.safetensors` for `modules` of every layer, each
/// value from `value(tensor, index)`.
enum AdapterWriter {
    /// The fixture model's shapes (hidden 64, intermediate 128, 2 layers, kv dim 32).
    static func model() throws -> LlamaConfig {
        try LlamaConfig(
            hiddenSize: 64, intermediateSize: 128, numLayers: 2, numHeads: 4, numKVHeads: 2,
            vocabSize: 258, maxPositionEmbeddings: 256, rmsNormEps: 1e-5, ropeTheta: 10_000,
            tieWordEmbeddings: false, bosTokenID: 256, eosTokenIDs: [257])
    }

    static func config(rank: Int = 4, alpha: String = "8", targets: String = #"["q_proj","v_proj"]"#, extra: String = "") -> String {
        #"{"peft_type":"LORA","r":\#(rank),"lora_alpha":\#(alpha),"target_modules":\#(targets),"bias":"none"\#(extra)}"#
    }

    static func weights(
        model: LlamaConfig, rank: Int, modules: [LinearModule], value: (String, Int) -> Float = { _, i in Float(i % 7) * 0.001 }
    ) -> [UInt8] {
        var header: [String] = []
        var data: [UInt8] = []
        for layer in 0..<model.numLayers {
            for module in modules {
                let shape = module.shape(model)
                for (suffix, dims) in [("lora_A", [rank, shape[1]]), ("lora_B", [shape[0], rank])] {
                    let name = "base_model.model.\(module.path(layer: layer)).\(suffix).weight"
                    let count = dims[0] * dims[1]
                    let begin = data.count
                    data.reserveCapacity(data.count + count * 4)
                    for i in 0..<count {
                        let bits = value(name, i).bitPattern
                        for b in 0..<4 { data.append(UInt8(truncatingIfNeeded: bits >> (8 * UInt32(b)))) }
                    }
                    header.append(
                        #""\#(name)":{"dtype":"F32","shape":[\#(dims[0]),\#(dims[1])],"data_offsets":[\#(begin),\#(data.count)]}"#)
                }
            }
        }
        let h = Array(("{" + header.joined(separator: ",") + "}").utf8)
        let len = UInt64(h.count)
        return (0..<8).map { UInt8(truncatingIfNeeded: len >> (8 * UInt64($0))) } + h + data
    }

    /// Writes an adapter directory at `path`.
    static func write(_ path: String, config: String, weights: [UInt8]) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        try Data(config.utf8).write(to: URL(fileURLWithPath: path + "/adapter_config.json"))
        try Data(weights).write(to: URL(fileURLWithPath: path + "/adapter_model.safetensors"))
    }
}

/// A scratch directory under the system temporary directory, canonical, removed at the end.
final class ScratchDirectory {
    let path: String

    init(_ label: String) throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("lorikeet-\(label)-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        guard let real = SecureFile.resolvedPath(base) else { throw Fixture.Failure(description: "cannot resolve \(base)") }
        self.path = real
    }

    deinit { try? FileManager.default.removeItem(atPath: self.path) }
}

@Suite("Hostile adapter directories and files", .ownThreads)
struct HostileAdapterTests {
    struct PathCase: CustomTestStringConvertible, Sendable {
        var label: String
        /// Relative to the scratch root (joined with "/"), or absolute when it starts with "!".
        var path: String
        var code: EngineError.Code?
        var message: String = ""
        var testDescription: String { self.label }
    }

    static let notAllowed = "the adapter path is not allowed"

    static let pathCases: [PathCase] = [
        PathCase(label: "a real directory under the prefix", path: "allowed/good", code: nil),
        PathCase(label: "a trailing slash", path: "allowed/good/", code: nil),
        PathCase(label: "a symlinked adapter directory", path: "allowed/linkdir", code: .invalidArgument, message: notAllowed),
        PathCase(
            label: "an intermediate directory swapped for a symlink to outside", path: "allowed/swapped/inner",
            code: .invalidArgument, message: notAllowed),
        PathCase(label: "a directory outside the prefix", path: "outside/adapter", code: .invalidArgument, message: notAllowed),
        PathCase(label: "a sibling sharing the prefix's name", path: "allowed-evil/adapter", code: .invalidArgument, message: notAllowed),
        PathCase(label: "'..' out of the prefix", path: "allowed/../outside/adapter", code: .invalidArgument, message: notAllowed),
        PathCase(label: "'..' staying inside", path: "allowed/good/../good", code: .invalidArgument, message: notAllowed),
        PathCase(label: "a '.' component", path: "allowed/./good", code: .invalidArgument, message: notAllowed),
        PathCase(label: "an empty component", path: "allowed//good", code: .invalidArgument, message: notAllowed),
        PathCase(label: "a relative path", path: "!allowed/good", code: .invalidArgument, message: notAllowed),
        PathCase(label: "a NUL byte", path: "allowed/good\u{0}/../../outside/adapter", code: .invalidArgument, message: notAllowed),
        PathCase(label: "a missing directory", path: "allowed/missing", code: .notFound, message: "the adapter path was not found"),
        PathCase(
            label: "a file instead of a directory", path: "allowed/good/adapter_config.json", code: .invalidArgument, message: notAllowed),
        PathCase(
            label: "a FIFO as the config", path: "allowed/fifo", code: .invalidArgument,
            message: "'adapter_config.json' is not a regular file"),
        PathCase(
            label: "a symlink to /dev/zero as the weights", path: "allowed/devzero", code: .invalidArgument,
            message: "'adapter_model.safetensors' is not a regular file"),
        PathCase(
            label: "a directory as the weights", path: "allowed/dirweights", code: .invalidArgument,
            message: "'adapter_model.safetensors' is not a regular file"),
        PathCase(
            label: "a 2 MiB config", path: "allowed/bigconfig", code: .invalidArgument,
            message: "'adapter_config.json' is 2097152 bytes, more than the limit of 1048576 bytes"),
        PathCase(
            label: "a 64 GiB sparse weights file (never read)", path: "allowed/bigweights", code: .invalidArgument,
            message: "adapter_model.safetensors is 68719476736 bytes; a rank-4 adapter of this model's target modules needs at most"),
        PathCase(
            label: "a missing weights file", path: "allowed/noweights", code: .notFound, message: "'adapter_model.safetensors' not found"),
    ]

    /// Builds the tree the path cases refer to; returns the scratch directory.
    static func makeTree() throws -> ScratchDirectory {
        let scratch = try ScratchDirectory("walk")
        let root = scratch.path
        let model = try AdapterWriter.model()
        let config = AdapterWriter.config()
        let weights = AdapterWriter.weights(model: model, rank: 4, modules: [.qProj, .vProj])
        let fm = FileManager.default
        try AdapterWriter.write(root + "/allowed/good", config: config, weights: weights)
        try AdapterWriter.write(root + "/outside/adapter", config: config, weights: weights)
        try AdapterWriter.write(root + "/allowed-evil/adapter", config: config, weights: weights)
        try AdapterWriter.write(root + "/outside/inner", config: config, weights: weights)
        try fm.createSymbolicLink(atPath: root + "/allowed/linkdir", withDestinationPath: root + "/allowed/good")
        // What an attacker swaps in after a check: allowed/swapped -> outside.
        try fm.createSymbolicLink(atPath: root + "/allowed/swapped", withDestinationPath: root + "/outside")
        try fm.createDirectory(atPath: root + "/allowed/fifo", withIntermediateDirectories: true)
        #expect(mkfifo(root + "/allowed/fifo/adapter_config.json", 0o600) == 0)
        try AdapterWriter.write(root + "/allowed/devzero", config: config, weights: [])
        try fm.removeItem(atPath: root + "/allowed/devzero/adapter_model.safetensors")
        try fm.createSymbolicLink(atPath: root + "/allowed/devzero/adapter_model.safetensors", withDestinationPath: "/dev/zero")
        try AdapterWriter.write(root + "/allowed/dirweights", config: config, weights: [])
        try fm.removeItem(atPath: root + "/allowed/dirweights/adapter_model.safetensors")
        try fm.createDirectory(atPath: root + "/allowed/dirweights/adapter_model.safetensors", withIntermediateDirectories: false)
        try AdapterWriter.write(root + "/allowed/bigconfig", config: config, weights: weights)
        #expect(truncate(root + "/allowed/bigconfig/adapter_config.json", 2 << 20) == 0)
        try AdapterWriter.write(root + "/allowed/bigweights", config: config, weights: weights)
        #expect(truncate(root + "/allowed/bigweights/adapter_model.safetensors", 64 << 30) == 0)
        try AdapterWriter.write(root + "/allowed/noweights", config: config, weights: [])
        try fm.removeItem(atPath: root + "/allowed/noweights/adapter_model.safetensors")
        return scratch
    }

    /// Every path either loads or is refused with the right code and a message that says
    /// "not allowed"/"not found"/"not a regular file"/"too large" without naming anything
    /// outside the request (symlink targets, the outside directory); nothing blocks.
    @Test(arguments: pathCases)
    func secureWalkFromThePrefix(_ c: PathCase) throws {
        let scratch = try Self.makeTree()
        let root = scratch.path
        let path = c.path.hasPrefix("!") ? String(c.path.dropFirst()) : root + "/" + c.path
        let store = AdapterStore(
            model: try AdapterWriter.model(), options: AdapterStore.Options(maxLoraRank: 16, allowedPathPrefixes: [root + "/allowed"]))
        let started = Date()
        do {
            _ = try store.add(name: "a", intID: 1, path: path, epoch: 1)
            #expect(c.code == nil, "loaded, expected \(String(describing: c.code))")
            #expect(store.list().first?.path == root + "/allowed/good")
        } catch {
            #expect(error.code == c.code)
            #expect(error.message.contains(c.message), "\(error.message)")
            #expect(!error.message.contains(root + "/outside"), "the message names what a symlink points to: \(error.message)")
            #expect(!error.message.contains("/dev/zero"))
            if !c.message.contains("needs at most") {
                #expect(error.logDetail?.isEmpty == false, "the log gets the details")
            }
            #expect(store.list().isEmpty)
        }
        // A bound against hangs (a FIFO blocks forever, a backtracking regex is exponential), not a
        // speed claim: generous enough for a loaded CI machine running debug builds.
        #expect(Date().timeIntervalSince(started) < 60, "the load must not block or read a huge file")
    }

    /// Without prefixes the walk starts at `/`: real directories load, a symlinked
    /// component anywhere is refused (what the engine required before prefixes).
    @Test func withoutPrefixesTheWalkStartsAtRoot() throws {
        let scratch = try Self.makeTree()
        let store = AdapterStore(model: try AdapterWriter.model(), options: AdapterStore.Options(maxLoraRank: 16))
        _ = try store.add(name: "good", intID: 1, path: scratch.path + "/outside/adapter", epoch: 1)
        let refused = #expect(throws: EngineError.self) {
            try store.add(name: "swapped", intID: 2, path: scratch.path + "/allowed/swapped/inner", epoch: 1)
        }
        #expect(refused?.message.contains(Self.notAllowed) == true)
    }

    /// The engine reads the worker's variables with the worker's rules.
    @Test func prefixesFromTheEnvironment() throws {
        let scratch = try Self.makeTree()
        let root = scratch.path
        let both = AdapterPathPrefixes.fromEnvironment([
            "LORIKEET_RUNTIME_LORA_ALLOWED_PATH_PREFIXES": "\(root)/allowed/:relative::\(root)/nope:\(root)/allowed/linkdir",
            "VLLM_RUNTIME_LORA_ALLOWED_PATH_PREFIXES": "/ignored",
        ])
        #expect(both.allowed == [root + "/allowed", root + "/allowed/good"])
        #expect(both.ignored == ["relative", root + "/nope"])
        #expect(AdapterPathPrefixes.fromEnvironment(["VLLM_RUNTIME_LORA_ALLOWED_PATH_PREFIXES": root]).allowed == [root])
        #expect(AdapterPathPrefixes.fromEnvironment([:]).allowed.isEmpty)
    }

    struct ConfigCase: CustomTestStringConvertible, Sendable {
        var label: String
        var json: String
        /// nil: accepted.
        var message: String?
        var targets: Set<LinearModule> = [.qProj, .vProj]
        var testDescription: String { self.label }
    }

    static let configCases: [ConfigCase] = [
        ConfigCase(label: "plain", json: AdapterWriter.config(), message: nil),
        ConfigCase(label: "lora_alpha 1e300", json: AdapterWriter.config(alpha: "1e300"), message: "'lora_alpha' must be a finite number"),
        ConfigCase(label: "lora_alpha 1e400 (infinite)", json: AdapterWriter.config(alpha: "1e400"), message: "lora_alpha"),
        ConfigCase(label: "lora_alpha 0", json: AdapterWriter.config(alpha: "0"), message: "'lora_alpha' must be a finite number"),
        ConfigCase(label: "lora_alpha -16", json: AdapterWriter.config(alpha: "-16"), message: "'lora_alpha' must be a finite number"),
        ConfigCase(
            label: "lora_alpha a string", json: AdapterWriter.config(alpha: #""16""#), message: "'lora_alpha' must be a finite number"),
        ConfigCase(label: "lora_alpha 10000", json: AdapterWriter.config(alpha: "10000"), message: nil),
        ConfigCase(label: "lora_alpha 10001", json: AdapterWriter.config(alpha: "10001"), message: "at most 10000"),
        ConfigCase(
            label: "use_rslora a string", json: AdapterWriter.config(extra: #","use_rslora":"yes""#),
            message: "'use_rslora' must be true or false"),
        ConfigCase(label: "use_rslora true", json: AdapterWriter.config(extra: #","use_rslora":true"#), message: nil),
        ConfigCase(label: "r 0", json: AdapterWriter.config(rank: 0), message: "'r' must be a positive integer"),
        ConfigCase(label: "r 1e300", json: #"{"r":1e300,"target_modules":["q_proj"]}"#, message: "'r' must be a positive integer"),
        ConfigCase(
            label: "r over max_lora_rank", json: AdapterWriter.config(rank: 17), message: "LoRA rank 17 is greater than max_lora_rank 16."),
        ConfigCase(
            label: "regex: PEFT-style alternation", json: AdapterWriter.config(targets: #"".*\\.(q_proj|v_proj)$""#), message: nil),
        ConfigCase(
            label: "regex: layers and class", json: AdapterWriter.config(targets: #""model\\.layers\\.[0-9]+\\.mlp\\.(gate|up)_proj""#),
            message: nil, targets: [.gateProj, .upProj]),
        ConfigCase(
            label: "regex (a+)+$", json: AdapterWriter.config(targets: #""(a+)+$""#), message: "expected target modules in"),
        ConfigCase(label: "regex (.*)*x", json: AdapterWriter.config(targets: #""(.*)*x""#), message: "expected target modules in"),
        ConfigCase(
            label: "regex (.*.*)*q_proj matches", json: AdapterWriter.config(targets: #""(.*.*)*q_proj""#), message: nil,
            targets: [.qProj]),
        ConfigCase(
            label: "regex lookahead", json: AdapterWriter.config(targets: #""(?!.*mlp).*proj""#),
            message: "target_modules is a regular expression this engine cannot match safely"),
        ConfigCase(
            label: "regex backreference", json: AdapterWriter.config(targets: #""(q)_\\1""#),
            message: "the escape '\\1' is not supported"),
        ConfigCase(
            label: "regex nested counted repeats", json: AdapterWriter.config(targets: #""((a{100}){100}){100}""#),
            message: "too complex"),
        ConfigCase(
            label: "regex of 2000 bytes", json: AdapterWriter.config(targets: "\"" + String(repeating: "a", count: 2000) + "\""),
            message: "the limit is 1024"),
        ConfigCase(
            label: "100k bogus list entries",
            json: AdapterWriter.config(targets: "[" + Array(repeating: #""x_proj""#, count: 100_000).joined(separator: ",") + "]"),
            message: "and 99984 more"),
        ConfigCase(
            label: "a 300-byte bias",
            json: #"{"r":4,"target_modules":["q_proj","v_proj"],"bias":""# + String(repeating: "b", count: 300) + "\"}",
            message: "(300 bytes)"),
    ]

    /// Hostile `adapter_config.json` fields are refused with a message naming the field,
    /// promptly (no backtracking regex, no per-entry scans), and never echo unbounded input.
    @Test(arguments: configCases)
    func configFieldsAreBounded(_ c: ConfigCase) throws {
        let model = try AdapterWriter.model()
        let started = Date()
        do throws(AdapterLoadError) {
            let config = try AdapterLoader.parseConfig(Array(c.json.utf8), path: "/a", model: model, maxLoraRank: 16)
            #expect(c.message == nil, "accepted")
            #expect(config.targets == c.targets)
            #expect(config.scaling.isFinite)
        } catch {
            #expect(c.message != nil, "refused: \(error)")
            #expect(error.engineError.code == .invalidArgument)
            #expect(error.description.contains(c.message ?? "-"), "\(error.description)")
            #expect(error.description.utf8.count < 4096)
        }
        #expect(Date().timeIntervalSince(started) < 60, "a bound against hangs, not a speed claim")
    }

    /// `lora_alpha: 1e300` used to load and make every completion empty: now the load is
    /// refused over the real files, and the engine keeps serving.
    @Test func hugeAlphaIsRefusedAtLoad() async throws {
        let scratch = try ScratchDirectory("alpha")
        let model = try AdapterWriter.model()
        let weights = AdapterWriter.weights(model: model, rank: 4, modules: [.qProj, .vProj])
        try AdapterWriter.write(scratch.path + "/a", config: AdapterWriter.config(alpha: "1e300"), weights: weights)
        let core = try Fixture.engine()
        let error = #expect(throws: EngineError.self) { try core.adapters.add(name: "a", intID: 1, path: scratch.path + "/a", epoch: 1) }
        #expect(error?.code == .invalidArgument)
        #expect(error?.message.contains("lora_alpha") == true)
        #expect(try await core.greedy("base").tokens == Fixture.reference().cases["base"]!.greedy)
    }

    struct TensorCase: CustomTestStringConvertible, Sendable {
        var label: String
        var poison: Float
        var testDescription: String { self.label }
    }

    /// A NaN or infinite value in any tensor is refused with the tensor's name.
    @Test(arguments: [
        TensorCase(label: "NaN", poison: .nan), TensorCase(label: "+inf", poison: .infinity), TensorCase(label: "-inf", poison: -.infinity),
    ])
    func nonFiniteTensorValuesAreRefused(_ c: TensorCase) throws {
        let scratch = try ScratchDirectory("nan")
        let model = try AdapterWriter.model()
        let poisoned = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
        let weights = AdapterWriter.weights(model: model, rank: 4, modules: [.qProj, .vProj]) { name, i in
            name == poisoned && i == 17 ? c.poison : 0.01
        }
        try AdapterWriter.write(scratch.path + "/a", config: AdapterWriter.config(), weights: weights)
        let store = AdapterStore(model: model, options: AdapterStore.Options(maxLoraRank: 16))
        let error = #expect(throws: EngineError.self) { try store.add(name: "a", intID: 1, path: scratch.path + "/a", epoch: 1) }
        #expect(error?.code == .invalidArgument)
        #expect(error?.message == "LoRA tensor '\(poisoned)' contains NaN or infinite values")
    }

    /// The weights bound is exactly rank × dimensions × 4 bytes + the header slack.
    @Test func weightsBoundFollowsRankAndTargets() throws {
        let model = try AdapterWriter.model()
        // q: [64, 64], v: [32, 64]; rank 4, 2 layers, F32.
        let qv = 2 * 4 * ((64 + 64) + (32 + 64)) * 4
        #expect(AdapterLoader.maxWeightsBytes(rank: 4, targets: [.qProj, .vProj], model: model) == qv + (1 << 20))
        let all = AdapterLoader.maxWeightsBytes(rank: 8, targets: Set(LinearModule.allCases), model: model)
        #expect(all == 2 * 8 * (128 + 96 + 96 + 128 + 192 + 192 + 192) * 4 + (1 << 20))
        // A real F32 adapter at the largest rank fits its bound.
        let real = AdapterWriter.weights(model: model, rank: 16, modules: LinearModule.allCases)
        #expect(real.count <= AdapterLoader.maxWeightsBytes(rank: 16, targets: Set(LinearModule.allCases), model: model))
    }
}

@Suite("target_modules regex without backtracking", .ownThreads)
struct TargetModulePatternTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var pattern: String
        var text: String
        /// What Python's `re.fullmatch(pattern, text)` says.
        var matches: Bool
        var testDescription: String { "\(self.pattern) ~ \(self.text)" }
    }

    static let cases: [Case] = [
        Case(pattern: #".*\.(q_proj|v_proj)$"#, text: "model.layers.0.self_attn.q_proj", matches: true),
        Case(pattern: #".*\.(q_proj|v_proj)$"#, text: "model.layers.0.self_attn.k_proj", matches: false),
        Case(pattern: "q_proj", text: "model.layers.0.self_attn.q_proj", matches: false),  // fullmatch, not search
        Case(pattern: #"(.*\.)?q_proj"#, text: "q_proj", matches: true),
        Case(pattern: #"model\.layers\.\d+\.self_attn\.[qkv]_proj"#, text: "model.layers.12.self_attn.k_proj", matches: true),
        Case(pattern: #"model\.layers\.\d+\.self_attn\.[qkv]_proj"#, text: "model.layers.x.self_attn.k_proj", matches: false),
        Case(pattern: #"model\.layers\.[^0]\d*\..*"#, text: "model.layers.0.mlp.up_proj", matches: false),
        Case(pattern: #"model\.layers\.[^0]\d*\..*"#, text: "model.layers.10.mlp.up_proj", matches: true),
        Case(pattern: #"^model\.layers\.(0|1)\.mlp\.(?:gate|up)_proj$"#, text: "model.layers.1.mlp.gate_proj", matches: true),
        Case(pattern: #"(?P<kind>self_attn|mlp)"#, text: "mlp", matches: true),
        Case(pattern: "a{2,3}", text: "aaa", matches: true),
        Case(pattern: "a{2,3}", text: "aaaa", matches: false),
        Case(pattern: "a{2}b{,2}", text: "aab", matches: true),
        Case(pattern: "a{x}", text: "a{x}", matches: true),  // not a count: literal braces
        Case(pattern: "a|", text: "", matches: true),
        Case(pattern: "(a*)*b", text: "aaab", matches: true),
        Case(pattern: "[a-c-]+", text: "ab-c", matches: true),
        Case(pattern: #"[\w.]+"#, text: "model.layers.0", matches: true),
        Case(pattern: "a^b", text: "ab", matches: false),
        Case(pattern: "a*?b", text: "aab", matches: true),
    ]

    @Test(arguments: cases)
    func matchesLikePythonFullmatch(_ c: Case) throws {
        #expect(try TargetModulePattern(c.pattern).fullMatch(c.text) == c.matches)
    }

    /// Patterns that take a backtracking engine exponential time finish in linear time
    /// here, on inputs far longer than any module path.
    @Test(arguments: ["(a+)+$", "(a|a)*b", "(.*)*x", "(a*)*(a*)*(a*)*c", "(.*a){20}"])
    func pathologicalPatternsFinishPromptly(_ pattern: String) throws {
        let matcher = try TargetModulePattern(pattern)
        let text = String(repeating: "a", count: 5_000) + "!"
        let started = Date()
        #expect(matcher.fullMatch(text) == false)
        #expect(Date().timeIntervalSince(started) < 60, "a bound against hangs, not a speed claim")
    }

    @Test(arguments: ["(?=a)", "(?i)a", "(a)\\1", "\\bq", "a++", "(a", "a)", "*a", "[a", "[z-a]", "a{5,2}", "a{1000}"])
    func unsupportedPatternsAreRefused(_ pattern: String) {
        #expect(throws: TargetModulePattern.Unsupported.self) { try TargetModulePattern(pattern) }
    }
}
