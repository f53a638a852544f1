import Foundation
import LorikeetTestSupport
import Synchronization

/// The built-in engine as a real process (`lorikeet engine`), on the tiny-Llama fixture
/// written by Tests/Fixtures/make_tiny_llama.py (cached in /tmp under the script's hash,
/// the same key the other integration suites use).
enum RealEngine {
    struct Failure: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    static let repoRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static var binary: String { Self.repoRoot + "/.build/debug/lorikeet" }
    static var python: String { Self.repoRoot + "/.venv/bin/python" }

    /// Whether the binary has the `engine` subcommand and the fixture can be made.
    static let available: Bool = {
        guard FileManager.default.isExecutableFile(atPath: Self.binary),
            FileManager.default.isExecutableFile(atPath: Self.python)
        else { return false }
        guard let help = try? Self.run(Self.binary, ["engine", "--help"]) else { return false }
        return help.status == 0 && help.output.contains("--socket")
    }()

    static func fixture() throws -> String { try TestEnvironment.fixtureDirectory() }

    @discardableResult
    static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws -> (
        status: Int32, output: String
    ) {
        try TestEnvironment.runProcess(executable, arguments, environment: environment)
    }
}

/// A child process with its output in a log file; killed by pid when released.
final class ChildProcess: Sendable {
    let pid: Int32
    let logPath: String
    private let process: Process

    init(_ arguments: [String], environment: [String: String] = [:], logPath: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: RealEngine.binary)
        process.arguments = arguments
        process.environment = TestEnvironment.childEnvironment.merging(environment) { $1 }
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = FileHandle(forWritingAtPath: logPath)
        process.standardOutput = log
        process.standardError = log
        try process.run()
        self.process = process
        self.pid = process.processIdentifier
        self.logPath = logPath
    }

    var log: String { (try? String(contentsOfFile: self.logPath, encoding: .utf8)) ?? "" }
    var isRunning: Bool { self.process.isRunning }

    /// SIGTERM, then SIGKILL after `grace`.
    func stop(grace: Duration = .seconds(5)) {
        guard self.process.isRunning else { return }
        kill(self.pid, SIGTERM)
        let deadline = ContinuousClock.now + grace
        while self.process.isRunning, ContinuousClock.now < deadline { usleep(20_000) }
        if self.process.isRunning { kill(self.pid, SIGKILL) }
        self.process.waitUntilExit()
    }

    var exitStatus: Int32 { self.process.terminationStatus }

    deinit { self.stop(grace: .milliseconds(500)) }
}

/// A running `lorikeet engine` on the fixture model.
final class EngineProcess: Sendable {
    let socket: String
    let directory: String
    let child: ChildProcess

    init() throws {
        let fixture = try RealEngine.fixture()
        self.directory = makeTemporaryDirectory("lk-real")
        self.socket = self.directory + "/engine.sock"
        self.child = try ChildProcess(
            ["engine", "--model", fixture + "/model", "--socket", self.socket, "--max-lora-rank", "64", "--parent-pid", "\(getpid())"],
            logPath: self.directory + "/engine.log")
        let deadline = ContinuousClock.now + .seconds(30)
        while !FileManager.default.fileExists(atPath: self.socket) {
            guard self.child.isRunning, ContinuousClock.now < deadline else {
                throw RealEngine.Failure("engine did not start:\n\(self.child.log)")
            }
            usleep(20_000)
        }
    }

    deinit {
        self.child.stop()
        try? FileManager.default.removeItem(atPath: self.directory)
    }
}
