public import Foundation

/// A real `lorikeet serve` (supervisor + engine + workers) on a free loopback port, with
/// its own state directory and log file; stopped (and every child killed) by `stop()`.
public final class ServerUnderTest: @unchecked Sendable {
    // @unchecked: the stored properties are set once in init, except `process`, which
    // only the owning test touches (tests drive one server from one task).
    public let port: UInt16
    public let stateDirectory: String
    public let logPath: String
    public let adapterDirectory: String
    public let process: Process
    public let workers: Int

    /// Starts the server and waits until `workers` workers are ready.
    public init(
        workers: Int, stateDirectory: String? = nil, extraArguments: [String] = [], environment: [String: String] = [:],
        waitReady: Bool = true, upstreams: [String] = []
    ) throws {
        let fixture = try TestEnvironment.fixtureDirectory()
        self.workers = workers
        self.port = TestEnvironment.freePort()
        self.stateDirectory = stateDirectory ?? TestEnvironment.temporaryDirectory("lk-serve")
        self.logPath = self.stateDirectory + "/server.log"
        self.adapterDirectory = fixture + "/adapters"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try TestEnvironment.lorikeetBinary)
        // With upstreams (replicas in front of which it serves), no built-in engine.
        let engine = upstreams.isEmpty ? ["--model", fixture + "/model"] : upstreams.flatMap { ["--upstream", $0] }
        process.arguments =
            [
                "serve", "--workers", "\(workers)", "--port", "\(self.port)", "--state-dir", self.stateDirectory,
                "--served-model-name", "tiny", "--parent-pid", "\(getpid())",
            ] + engine + extraArguments
        var env = ProcessInfo.processInfo.environment
        env["LORIKEET_ALLOW_RUNTIME_LORA_UPDATING"] = "true"
        env["LORIKEET_PARENT_WATCH"] = "poll"
        env["LORIKEET_RUNTIME_LORA_ALLOWED_PATH_PREFIXES"] = fixture
        for (key, value) in environment { env[key] = value }
        process.environment = env
        _ = FileManager.default.createFile(atPath: self.logPath, contents: nil)
        let log = FileHandle(forWritingAtPath: self.logPath)
        process.standardOutput = log
        process.standardError = log
        try process.run()
        self.process = process
        if waitReady { try self.waitUntilReady(workers: workers) }
    }

    deinit { self.stop() }

    /// The server log so far (for failure messages).
    public var log: String { (try? String(contentsOfFile: self.logPath, encoding: .utf8)) ?? "" }

    /// Runs `lorikeet ctl VERB ... --json` against this server.
    public func ctl(_ arguments: [String]) throws -> (status: Int32, output: String) {
        try TestEnvironment.runProcess(
            try TestEnvironment.lorikeetBinary, ["ctl"] + arguments + ["--state-dir", self.stateDirectory, "--json"])
    }

    public func ctlJSON(_ arguments: [String]) throws -> Any {
        let (status, output) = try self.ctl(arguments)
        guard status == 0, let value = try? JSONSerialization.jsonObject(with: Data(output.utf8)) else {
            throw TestEnvironment.Failure("ctl \(arguments) failed (\(status)): \(output)")
        }
        return value
    }

    /// Worker slots as `ctl workers` reports them.
    public func workerList() throws -> [[String: Any]] {
        (try self.ctlJSON(["workers"]) as? [[String: Any]]) ?? []
    }

    public func status() throws -> [String: Any] { (try self.ctlJSON(["status"]) as? [String: Any]) ?? [:] }

    /// Waits until `workers` workers are ready (and the admin socket answers).
    public func waitUntilReady(workers: Int, timeoutSeconds: Double = 120) throws {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while Date() < deadline {
            guard self.process.isRunning else {
                throw TestEnvironment.Failure("server exited with \(self.process.terminationStatus):\n\(self.log.suffix(4000))")
            }
            if let status = try? self.status(), (status["ready_workers"] as? Int) == workers,
                (try? self.workerList().filter { ($0["state"] as? String) == "ready" }.count) == workers
            {
                return
            }
            usleep(100_000)
        }
        throw TestEnvironment.Failure("server not ready within \(timeoutSeconds) s:\n\(self.log.suffix(4000))")
    }

    /// Pids of every child (workers + engine) as seen in /proc.
    public func childPIDs() -> [Int32] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        let parent = self.process.processIdentifier
        return entries.compactMap { Int32($0) }.filter { pid in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return false }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 2 && Int32(fields[1]) == parent
        }
    }

    /// Sends a signal to the supervisor.
    public func signal(_ number: Int32) { kill(self.process.processIdentifier, number) }

    /// Stops the server: SIGINT, then SIGKILL to the supervisor and any child left.
    public func stop() {
        guard self.process.isRunning else { return }
        let children = self.childPIDs()
        kill(self.process.processIdentifier, SIGINT)
        let deadline = Date().addingTimeInterval(10)
        while self.process.isRunning && Date() < deadline { usleep(50_000) }
        if self.process.isRunning { kill(self.process.processIdentifier, SIGKILL) }
        for child in children where kill(child, 0) == 0 { kill(child, SIGKILL) }
        self.process.waitUntilExit()
    }

    /// Waits for the supervisor to exit by itself; returns its exit status.
    public func waitForExit(timeoutSeconds: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while self.process.isRunning && Date() < deadline { usleep(50_000) }
        return self.process.isRunning ? nil : self.process.terminationStatus
    }
}
