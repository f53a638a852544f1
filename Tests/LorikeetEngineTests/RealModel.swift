import Foundation
import LorikeetGGUF
import LorikeetTestSupport
import Testing

@testable import LorikeetCLI

/// Why a real-model test could not be set up; the message says how to fix it.
struct RealModelSetupError: Error, CustomStringConvertible {
    var description: String
}

/// The real SmolLM2-135M-Instruct GGUF, downloaded once into the cache through the command's `ModelDownload`
/// and parsed once per test process, plus the Python reference outputs (cached beside it).
enum RealModel {
    static let repoRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let fixtures = repoRoot.appendingPathComponent("Tests/Fixtures")

    struct Loaded: Sendable {
        var url: URL
        var file: GGUFFile
        var tokenizer: BPETokenizer
    }

    /// Parsed once; `static let` initialisation is thread-safe (swift_once), which is the lock.
    private static let loaded: Result<Loaded, any Error> = Result {
        let url = try ModelDownload().resolveDefaultModel()
        let clock = ContinuousClock()
        let start = clock.now
        let file = try GGUFFile(contentsOf: url)
        let parsed = clock.now
        let tokenizer = try BPETokenizer(gguf: file)
        print("parsed \(url.lastPathComponent) in \(parsed - start), built the tokenizer in \(clock.now - parsed)")
        return Loaded(url: url, file: file, tokenizer: tokenizer)
    }

    static func get() throws -> Loaded { try Self.loaded.get() }

    struct Chat: Sendable {
        var messages: [ChatMessage]
        var withPrompt: String
        var withoutPrompt: String
    }

    struct ReferenceTensor: Sendable {
        var shape: [Int]
        var savedRows: Int
        var values: [Float]
    }

    struct Reference: Sendable {
        var encodings: [(text: String, ids: [Int])]
        var chats: [Chat]
        var tensors: [String: ReferenceTensor]
        var template: String
    }

    private static let reference: Result<Reference, any Error> = Result { try Self.loadReference() }

    static func getReference() throws -> Reference { try Self.reference.get() }

    /// FNV-1a: a stable content hash (Swift's `Hasher` is seeded per process).
    static func fnv1a(_ bytes: Data) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h
    }

    private static func loadReference() throws -> Reference {
        let model = try Self.get()
        let script = Self.fixtures.appendingPathComponent("tokenizer_reference.py")
        let corpus = Self.fixtures.appendingPathComponent("tokenizer_corpus.json")
        let key = Self.fnv1a(try Data(contentsOf: script) + Data(contentsOf: corpus))
        let dir = ModelDownload().cacheDirectory
            .appendingPathComponent("test-fixtures/reference-\(String(key, radix: 16))", isDirectory: true)
        let json = dir.appendingPathComponent("reference.json")
        if !FileManager.default.fileExists(atPath: json.path) {
            let python = Self.repoRoot.appendingPathComponent(".venv/bin/python")
            guard FileManager.default.isExecutableFile(atPath: python.path) else {
                throw RealModelSetupError(
                    description: """
                        \(python.path) is missing: the tokenizer reference needs a Python venv with numpy, tokenizers, \
                        gguf, safetensors and jinja2. Run bin/test (it creates .venv), or: python3 -m venv .venv && \
                        .venv/bin/pip install numpy tokenizers gguf safetensors jinja2
                        """)
            }
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            try Self.runPython(python, script: script, [model.url.path, corpus.path, dir.path])
        }
        let object = try JSONSerialization.jsonObject(with: Data(contentsOf: json))
        guard let root = object as? [String: Any],
            let encodings = root["encodings"] as? [[Any]],
            let chats = root["chats"] as? [[String: Any]],
            let tensors = root["tensors"] as? [String: [String: Any]],
            let template = root["template"] as? String
        else { throw RealModelSetupError(description: "\(json.path) has an unexpected layout; delete it to regenerate") }
        var reference = Reference(encodings: [], chats: [], tensors: [:], template: template)
        for pair in encodings {
            guard pair.count == 2, let text = pair[0] as? String, let ids = pair[1] as? [Int] else {
                throw RealModelSetupError(description: "bad encoding entry in \(json.path)")
            }
            reference.encodings.append((text, ids))
        }
        for chat in chats {
            guard let messages = chat["messages"] as? [[String: String]],
                let with = chat["with_prompt"] as? String, let without = chat["without_prompt"] as? String
            else { throw RealModelSetupError(description: "bad chat entry in \(json.path)") }
            reference.chats.append(
                Chat(
                    messages: messages.map { ChatMessage(role: $0["role"] ?? "", content: $0["content"] ?? "") },
                    withPrompt: with, withoutPrompt: without))
        }
        for (name, info) in tensors {
            guard let shape = info["shape"] as? [Int], let rows = info["saved_rows"] as? Int, let file = info["file"] as? String else {
                throw RealModelSetupError(description: "bad tensor entry \(name) in \(json.path)")
            }
            let data = try Data(contentsOf: dir.appendingPathComponent(file))
            let values = data.withUnsafeBytes { raw in
                (0..<(data.count / 4)).map {
                    Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self)))
                }
            }
            reference.tensors[name] = ReferenceTensor(shape: shape, savedRows: rows, values: values)
        }
        return reference
    }

    /// Runs a reference script of Tests/Fixtures with the venv's `python`; throws with its
    /// stderr when it fails.
    static func runPython(_ python: URL, script: URL, _ arguments: [String]) throws {
        let (status, output) = try TestEnvironment.runProcess(python.path, [script.path] + arguments)
        guard status == 0 else {
            throw RealModelSetupError(description: "\(script.lastPathComponent) failed (\(status)): \(output)")
        }
    }

    /// Peak and current resident memory of this process in MiB (Linux `/proc/self/status`).
    static func memoryMiB() -> (peak: Int, current: Int)? {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        func field(_ name: String) -> Int? {
            guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(name + ":") }) else { return nil }
            return line.split(separator: " ").compactMap { Int($0) }.first.map { $0 / 1024 }
        }
        guard let peak = field("VmHWM"), let current = field("VmRSS") else { return nil }
        return (peak, current)
    }
}
