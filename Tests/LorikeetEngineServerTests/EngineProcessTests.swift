import Foundation
import LorikeetProto
import LorikeetTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The real `lorikeet engine` process over its Unix socket.
@Suite("Engine process over its socket", .serialized, .ownThreads)
final class EngineProcessTests {
    let process: Process
    let socket: String
    let stateDir: String

    init() throws {
        let dir = try ServerFixture.directory()
        // The test bundle sits next to the built executables.
        let binDir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        var binary = binDir + "/lorikeet"
        if !FileManager.default.isExecutableFile(atPath: binary) {
            binary = ServerFixture.repoRoot + "/.build/debug/lorikeet"
        }
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw ServerFixture.Failure(description: "lorikeet binary not built at \(binary): run `swift build` (bin/test does)")
        }
        self.stateDir = FileManager.default.temporaryDirectory.appendingPathComponent("lorikeet-engine-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: self.stateDir, withIntermediateDirectories: true)
        self.socket = self.stateDir + "/engine.sock"
        self.process = Process()
        self.process.executableURL = URL(fileURLWithPath: binary)
        self.process.arguments = [
            "engine", "--model", dir + "/model", "--socket", self.socket, "--parent-pid", "\(getpid())", "--max-loras", "2",
            "--max-cpu-loras", "3",
            "--max-lora-rank", "32", "--parent-pid", "\(getpid())",
        ]
        self.process.standardError = FileHandle.nullDevice
        self.process.environment = TestEnvironment.childEnvironment
        try self.process.run()
        for _ in 0..<500 where !FileManager.default.fileExists(atPath: self.socket) { usleep(20_000) }
        guard FileManager.default.fileExists(atPath: self.socket) else {
            self.process.terminate()
            throw ServerFixture.Failure(description: "engine did not create its socket")
        }
    }

    deinit {
        let pid = self.process.processIdentifier
        if self.process.isRunning { kill(pid, SIGTERM) }
        for _ in 0..<200 where self.process.isRunning { usleep(10_000) }
        if self.process.isRunning { kill(pid, SIGKILL) }
        self.process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: self.stateDir)
    }

    @Test func referenceTokensAndEightConcurrentClients() throws {
        let ref = try ServerFixture.reference()
        let dir = try ServerFixture.directory()
        let admin = try TestEngineClient(path: self.socket)
        for (i, name) in ["plain", "rslora", "rank32"].enumerated() {
            let status = try admin.result(
                .addAdapter(AddAdapterRequest(epoch: 1, name: name, intID: UInt64(i + 1), path: dir + "/adapters/" + name)))
            #expect(status.isOK, "\(name): \(status)")
        }
        let cases: [(String, UInt64?)] = [("base", nil), ("plain", 1), ("rslora", 2), ("rank32", 3)]
        // Solo runs first, compared with the numpy reference.
        for (name, id) in cases {
            let chunks = try admin.generate(TestEngineClient.greedy("solo-\(name)", prompt: ref.promptTokens, adapter: id))
            #expect(chunks.tokens == ref.cases[name]!.greedy, "\(name)")
        }
        // 8 clients on 8 connections at once, mixing adapters (max_loras=2 for 3 adapters,
        // so some requests wait for a slot), each must get its reference tokens.
        let results = Mutex<[Int: [UInt32]]>([:])
        let socket = self.socket
        onThreads(8) { i in
            guard let client = try? TestEngineClient(path: socket),
                let chunks = try? client.generate(TestEngineClient.greedy("c\(i)", prompt: ref.promptTokens, adapter: cases[i % 4].1))
            else { return }
            results.withLock { $0[i] = chunks.tokens }
        }
        let got = results.withLock { $0 }
        for i in 0..<8 { #expect(got[i] == ref.cases[cases[i % 4].0]!.greedy, "client \(i) (\(cases[i % 4].0))") }
        guard case .adapterList(let list) = try admin.call(.listAdapters) else {
            Issue.record("no list")
            return
        }
        #expect(list.adapters.count == 3)
        #expect(list.adapters.filter(\.active).count <= 2)
    }

    /// SIGTERM drains: the listener closes at once (a new connection is refused) while the
    /// running streams finish and are delivered whole, idle connections are closed, and
    /// then the process exits 0.
    @Test func sigtermDrainsRunningGenerationsThenExitsZero() throws {
        let streaming = try TestEngineClient(path: self.socket)
        let idle = try TestEngineClient(path: self.socket)
        guard case .healthReply = try idle.call(.health) else {
            Issue.record("no health reply")
            return
        }
        // Three streams whose chunks echo a 1000-byte request id: about 750 KB, more than
        // the socket buffers, so the engine cannot finish writing them (and cannot exit)
        // before this client reads.
        for i in 0..<3 {
            try streaming.connection.send(EngineEnvelope(callID: UInt64(i + 1), body: .generate(BackPressureAndDrainTests.bulky(i))))
        }
        // SIGTERM only once every stream has produced a chunk: a request still unread in the
        // socket buffer when the drain begins is refused, as it should be (a loaded CI machine
        // once delivered the signal before the engine had read calls 2 and 3).
        var envelopes: [EngineEnvelope] = []
        var started = Set<UInt64>()
        while started.count < 3 {
            guard let envelope = try streaming.connection.receive() else {
                Issue.record("the stream ended before every call had started")
                return
            }
            envelopes.append(envelope)
            if case .chunk = envelope.body { started.insert(envelope.callID) }
        }
        kill(self.process.processIdentifier, SIGTERM)
        var refused = false
        for _ in 0..<3000 where !refused {  // hang guard
            if let fd = try? UnixSocket.connect(path: self.socket) {
                close(fd)
                usleep(10_000)
            } else {
                refused = true
            }
        }
        #expect(refused, "the engine kept accepting connections after SIGTERM")
        #expect(self.process.isRunning, "the engine exited before its streams were delivered")

        while let envelope = try streaming.connection.receive() { envelopes.append(envelope) }
        for callID in UInt64(1)...3 {
            let chunks = envelopes.filter { $0.callID == callID }.compactMap { if case .chunk(let c) = $0.body { c } else { nil } }
            #expect(chunks.last?.finishReason == "length", "stream \(callID)")
            #expect(chunks.tokens.count == 250, "stream \(callID)")
        }
        #expect(try idle.connection.receive() == nil, "the idle connection is closed by the drain")
        for _ in 0..<3000 where self.process.isRunning { usleep(10_000) }  // hang guard
        #expect(!self.process.isRunning)
        if !self.process.isRunning {
            #expect(self.process.terminationReason == .exit && self.process.terminationStatus == 0)
        }
    }

    @Test func abortEpochsAndRefusalsOverTheSocket() throws {
        let dir = try ServerFixture.directory()
        let ref = try ServerFixture.reference()
        let a = try TestEngineClient(path: self.socket)
        let b = try TestEngineClient(path: self.socket)
        // Epoch fencing across connections (two "leaders").
        #expect(try a.result(.addAdapter(AddAdapterRequest(epoch: 7, name: "plain", intID: 1, path: dir + "/adapters/plain"))).isOK)
        let fenced = try b.result(.removeAdapter(RemoveAdapterRequest(epoch: 6, intID: 1)))
        #expect(fenced.code == .failedPrecondition)
        for broken in ["dora", "bias", "modules_to_save", "shape_mismatch", "truncated", "no_tensors", "unknown_target"] {
            let s = try b.result(.addAdapter(AddAdapterRequest(epoch: 7, name: broken, intID: 5, path: dir + "/broken/" + broken)))
            #expect(s.code == .invalidArgument, "\(broken): \(s)")
            #expect(
                try b.generate(TestEngineClient.greedy("after-\(broken)", prompt: ref.promptTokens, adapter: 1)).tokens
                    == ref.cases["plain"]!.greedy)
        }
        // Abort from another connection. The engine is another process and cannot be held,
        // so the scenario repeats until the abort arrives while the request still runs.
        var observed = false
        for attempt in 0..<8 where !observed {
            let started = DispatchSemaphore(value: 0)
            let finish = Mutex("")
            let id = "to-abort-\(attempt)"
            let t = Thread {
                let chunks = try? a.generate(
                    GenerateRequest(requestID: id, promptTokens: [256, 66], sampling: SamplingParams(maxTokens: 250, ignoreEOS: true))
                ) { _ in started.signal() }
                finish.withLock { $0 = chunks?.finish ?? "none" }
                started.signal()  // ended without a chunk: the test goes on and fails, never hangs
            }
            t.start()
            started.wait()
            #expect(try b.result(.abort(AbortRequest(requestID: id))).isOK)
            for _ in 0..<3000 where finish.withLock({ $0 }).isEmpty { usleep(10_000) }
            let finished = finish.withLock { $0 }
            // "length": too late, the request had finished (an abort is acknowledged anyway).
            #expect(finished == "abort" || finished == "length", "finish \(finished)")
            observed = finished == "abort"
            if finished.isEmpty { break }  // still running after 30 s: the client is busy
        }
        #expect(observed, "the request always finished before the abort; the abort was never exercised")
        guard case .healthReply(let h) = try b.call(.health) else {
            Issue.record("no health")
            return
        }
        #expect(h.maxEpoch == 7 && h.runningRequests == 0)
    }
}
