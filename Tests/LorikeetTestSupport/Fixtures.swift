public import Foundation
import Synchronization

/// Shared by the integration suites: the repository paths, the tiny-Llama fixture
/// (model + PEFT adapters + numpy reference, written by Tests/Fixtures/make_tiny_llama.py
/// once per script version into /tmp) and the built `lorikeet` binary.
/// Runs blocking socket code on its own thread: the Swift concurrency pool has as many
/// threads as cores (2 here), and the server under test may need them (a test blocked in
/// `recv` on the pool while another does the same starves the server: a deadlock).
public func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread { continuation.resume(with: Result { try body() }) }
        thread.start()
    }
}

public enum TestEnvironment {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    /// Repository root, found from this file's path.
    public static let repoRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    /// The debug `lorikeet` binary built by `swift build` (bin/test builds it first).
    public static var lorikeetBinary: String {
        get throws {
            let path = repoRoot + "/.build/debug/lorikeet"
            guard FileManager.default.isExecutableFile(atPath: path) else {
                throw Failure("\(path) is missing: run bin/test (it builds the binary before the tests)")
            }
            return path
        }
    }

    private static let fixture = Mutex<String?>(nil)

    /// The fixture directory: model/, adapters/<name>/, broken/, reference.json.
    public static func fixtureDirectory() throws -> String {
        try self.fixture.withLock { cached in
            if let cached { return cached }
            let directory = try self.generateFixture()
            cached = directory
            return directory
        }
    }

    private static func generateFixture() throws -> String {
        let script = repoRoot + "/Tests/Fixtures/make_tiny_llama.py"
        let python = repoRoot + "/.venv/bin/python"
        guard let source = FileManager.default.contents(atPath: script) else { throw Failure("fixture script missing at \(script)") }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a, same key as the engine suite's cache
        for byte in source {
            hash ^= UInt64(byte)
            hash &*= 0x100_0000_01b3
        }
        let directory = "/tmp/lorikeet-fixtures-" + String(hash, radix: 16)
        if FileManager.default.fileExists(atPath: directory + "/reference.json") { return directory }
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw Failure("Python venv missing at \(python): run bin/test (it creates .venv)")
        }
        let temporary = directory + ".tmp-\(getpid())"
        try? FileManager.default.removeItem(atPath: temporary)
        let (status, output) = try runProcess(python, [script, temporary])
        guard status == 0 else { throw Failure("fixture script failed: \(output)") }
        if rename(temporary, directory) != 0 { try? FileManager.default.removeItem(atPath: temporary) }
        return directory
    }

    /// The environment for a `lorikeet` process a test starts with `--parent-pid` = the test
    /// process: the parent watch polls getppid() instead of arming PR_SET_PDEATHSIG, which
    /// follows the *thread* that spawned the child — a test runner's pool threads come and
    /// go, and the child would be killed mid-test when its spawning thread retires.
    public static var childEnvironment: [String: String] {
        ProcessInfo.processInfo.environment.merging(["LORIKEET_PARENT_WATCH": "poll"]) { $1 }
    }

    /// Runs a command to completion; returns its exit status and combined output.
    @discardableResult
    public static func runProcess(
        _ executable: String, _ arguments: [String], environment: [String: String]? = nil, input: [UInt8]? = nil
    ) throws -> (Int32, String) {
        // Files, not pipes: a pipe's write end is inherited by whatever other process a
        // concurrent test spawns at that moment (Foundation's pipes are not close-on-exec),
        // and reading to EOF then waits for that process to exit — an etcd member kept a
        // fixture script's output "open" for good.
        let directory = Self.temporaryDirectory("lorikeet-run")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let inputPath = directory + "/stdin"
        let outputPath = directory + "/output"
        _ = FileManager.default.createFile(atPath: inputPath, contents: Data(input ?? []))
        _ = FileManager.default.createFile(atPath: outputPath, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let environment { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let stdin = try FileHandle(forReadingFrom: URL(fileURLWithPath: inputPath))
        let output = try FileHandle(forWritingTo: URL(fileURLWithPath: outputPath))
        process.standardInput = stdin
        process.standardOutput = output
        process.standardError = output
        do {
            defer {
                try? stdin.close()
                try? output.close()
            }
            try process.run()
        }
        process.waitUntilExit()
        let text = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        return (process.terminationStatus, text)
    }

    /// A fresh temporary directory (removed by the caller).
    public static func temporaryDirectory(_ prefix: String) -> String {
        let path = NSTemporaryDirectory() + "\(prefix)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// A TCP port that was free a moment ago on 127.0.0.1.
    public static func freePort() -> UInt16 { self.freePorts(consecutive: 1) }

    /// The first of `count` consecutive TCP ports that were all free a moment ago on 127.0.0.1.
    public static func freePorts(consecutive count: Int) -> UInt16 {
        while true {
            var held: [Int32] = []
            defer { for fd in held { close(fd) } }
            guard let (fd, first) = self.bindLoopback(port: 0) else { continue }
            held.append(fd)
            for offset in 1..<max(count, 1) {
                guard Int(first) + offset <= 65535, let (next, _) = self.bindLoopback(port: first + UInt16(offset)) else { break }
                held.append(next)
            }
            if held.count == max(count, 1) { return first }
        }
    }

    /// A TCP socket bound to 127.0.0.1:`port` (0 = any) and the port it got; nil when taken.
    private static func bindLoopback(port: UInt16) -> (Int32, UInt16)? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard self.withLoopbackAddress(port: port, { bind(fd, $0, $1) }) == 0 else {
            close(fd)
            return nil
        }
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        return (fd, UInt16(bigEndian: address.sin_port))
    }

    /// Calls `body` (`bind` or `connect`) with the address 127.0.0.1:`port`.
    public static func withLoopbackAddress(port: UInt16, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = port.bigEndian
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }
}
