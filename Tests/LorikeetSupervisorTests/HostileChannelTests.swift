import Foundation
import LorikeetProto
import LorikeetTestSupport
import Testing

/// Garbage on the admin socket and on a worker's control channel: a clear rejection,
/// never a crash, nothing committed lost.
@Suite("Hostile bytes on the supervisor's channels", .serialized, .ownThreads)
struct HostileChannelTests {
    @Test(
        "garbage on the admin socket closes that connection only; the server and its table are intact",
        arguments: [
            [0xFF, 0, 0, 0, 1, 0] as [UInt8],  // unknown flag
            [0, 0xFF, 0xFF, 0xFF, 0xFF],  // length far above the maximum
            [0, 0, 0, 0, 3, 0xFF, 0xFF, 0xFF],  // payload that is not an AdminEnvelope
            Array(repeating: 0x41, count: 100_000),  // a flood of text
        ]
    )
    func adminGarbage(_ bytes: [UInt8]) throws {
        let server = try ServerUnderTest(workers: 1)
        defer { server.stop() }
        #expect(try ServeTests.load(server, "kept").status == 200)
        let fd = try UnixSocket.connect(path: server.stateDirectory + "/admin.sock")
        defer { close(fd) }
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 64)
        let received = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        let code = errno
        // Closed: EOF, or a reset when unread garbage was still queued at the close.
        #expect(
            received == 0 || (received < 0 && code == ECONNRESET),
            "the supervisor kept a connection that sent garbage (recv = \(received), errno \(code))")
        #expect(try ServeTests.table(server) == ["kept": 1])
        #expect((try server.status()["ready_workers"] as? Int) == 1)
        #expect(server.log.contains("closing admin connection"))
    }

    @Test("garbage on a worker's control channel makes the worker exit with a logged reason")
    func controlGarbage() throws {
        var fds: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0)
        let directory = TestEnvironment.temporaryDirectory("lk-control")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let logPath = directory + "/worker.log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try TestEnvironment.lorikeetBinary)
        process.arguments = ["worker", "--control-fd", "0", "--engine-socket", directory + "/none.sock", "--port", "0"]
        process.standardInput = FileHandle(fileDescriptor: fds[1], closeOnDealloc: true)
        process.standardOutput = FileHandle(forWritingAtPath: logPath)
        process.standardError = FileHandle(forWritingAtPath: logPath)
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        let control = FramedConnection<ControlEnvelope>(fd: fds[0])
        guard case .hello(let hello) = try control.receive()?.body else {
            Issue.record("no Hello from the worker")
            return
        }
        #expect(hello.pid == process.processIdentifier)
        _ = [UInt8]([9, 0, 0, 0, 4, 1, 2, 3, 4]).withUnsafeBytes { send(fds[0], $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning && Date() < deadline { usleep(50_000) }
        #expect(!process.isRunning)
        #expect(process.terminationStatus == 1)
        let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        #expect(log.contains("unsupported frame flag 9"), "\(log)")
    }
}
