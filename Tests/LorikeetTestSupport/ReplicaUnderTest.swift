import Foundation

/// A standalone `lorikeet engine` + `lorikeet worker` pair on a fixed loopback port: the
/// "upstream vLLM replica" of the upstream tests (the worker speaks vLLM's routes, with
/// runtime LoRA updating on). The worker can be killed and restarted on the same port.
public final class ReplicaUnderTest: @unchecked Sendable {
    // @unchecked: only the owning test (one task) starts, kills and stops the processes.
    public let port: UInt16
    public let directory: String
    public let allowedPrefix: String
    private var engine: Process?
    private var worker: Process?
    private var workerStarts = 0

    public var url: String { "http://127.0.0.1:\(self.port)" }
    public var workerPID: Int32? { self.worker?.processIdentifier }

    /// Starts the engine and the worker and waits until the worker answers `/health`.
    /// `allowedPrefix`: the worker's allowed adapter path prefix (default: the fixture).
    public init(allowedPrefix: String? = nil) throws {
        let fixture = try TestEnvironment.fixtureDirectory()
        self.port = TestEnvironment.freePort()
        self.directory = TestEnvironment.temporaryDirectory("lk-replica")
        self.allowedPrefix = allowedPrefix ?? fixture
        let engine = Process()
        engine.executableURL = URL(fileURLWithPath: try TestEnvironment.lorikeetBinary)
        engine.arguments = [
            "engine", "--model", fixture + "/model", "--socket", self.directory + "/engine.sock", "--threads", "1", "--parent-pid",
            "\(getpid())",
        ]
        try Self.redirect(engine, to: self.directory + "/engine.log")
        try engine.run()
        self.engine = engine
        try self.startWorker()
    }

    deinit { self.stop() }

    private static func redirect(_ process: Process, to path: String) throws {
        if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        guard let log = FileHandle(forWritingAtPath: path) else { throw TestEnvironment.Failure("cannot open \(path)") }
        log.seekToEndOfFile()
        process.standardOutput = log
        process.standardError = log
    }

    /// The worker's log (every incarnation).
    public var workerLog: String { (try? String(contentsOfFile: self.directory + "/worker.log", encoding: .utf8)) ?? "" }

    /// Starts (again) the worker on the same port, with an empty adapter table.
    public func startWorker() throws {
        let worker = Process()
        worker.executableURL = URL(fileURLWithPath: try TestEnvironment.lorikeetBinary)
        worker.arguments = [
            "worker", "--engine-socket", self.directory + "/engine.sock", "--port", "\(self.port)", "--parent-pid", "\(getpid())",
            "--served-model-name", "tiny",
        ]
        var env = ProcessInfo.processInfo.environment
        env["LORIKEET_ALLOW_RUNTIME_LORA_UPDATING"] = "true"
        env["LORIKEET_RUNTIME_LORA_ALLOWED_PATH_PREFIXES"] = self.allowedPrefix
        worker.environment = env
        try Self.redirect(worker, to: self.directory + "/worker.log")
        try worker.run()
        self.worker = worker
        self.workerStarts += 1
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            guard worker.isRunning else { throw TestEnvironment.Failure("replica worker exited:\n\(self.workerLog.suffix(3000))") }
            if (try? TestHTTP.request(port: self.port, path: "/health", timeoutSeconds: 2).status) == 200 { return }
            usleep(100_000)
        }
        throw TestEnvironment.Failure("replica worker not healthy within 60 s:\n\(self.workerLog.suffix(3000))")
    }

    /// `kill -9` the worker (the engine keeps running, as a GPU process would).
    public func killWorker() {
        guard let worker = self.worker, worker.isRunning else { return }
        kill(worker.processIdentifier, SIGKILL)
        worker.waitUntilExit()
    }

    /// Adapter names the replica itself lists on `/v1/models`.
    public func adapters() throws -> Set<String> {
        let response = try TestHTTP.request(port: self.port, path: "/v1/models", timeoutSeconds: 5)
        let data = response.json?["data"] as? [[String: Any]] ?? []
        return Set(data.filter { !($0["parent"] is NSNull) && $0["parent"] != nil }.compactMap { $0["id"] as? String })
    }

    /// Kills both processes (by pid) and removes the directory.
    public func stop() {
        for process in [self.worker, self.engine].compactMap({ $0 }) where process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: self.directory)
    }
}
