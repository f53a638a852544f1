import Foundation
import LorikeetProto
import LorikeetTestSupport
import Testing

/// Slow and idle clients on the admin socket: a partial frame has a deadline, open
/// connections are capped, and `lorikeet ctl` keeps answering throughout.
@Suite("Slow and idle admin clients", .serialized, .ownThreads)
struct AdminSlowClientTests {
    static func connect(_ server: ServerUnderTest) throws -> Int32 {
        try UnixSocket.connect(path: server.stateDirectory + "/admin.sock")
    }

    static func send(_ fd: Int32, _ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Whether the supervisor closed `fd` (EOF or reset), without waiting.
    static func closedByPeer(_ fd: Int32) -> Bool {
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        return count == 0 || (count < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
    }

    static func statusFrame(callID: UInt64) -> [UInt8] {
        Frame.encode(AdminEnvelope(callID: callID, body: .status).serializedBytes())
    }

    /// Reads one reply frame from `fd` (blocking, 5 s receive timeout).
    static func readReply(_ fd: Int32) throws -> AdminEnvelope? {
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var decoder = MessageDecoder<AdminEnvelope>(maximumFrameSize: Limits.channelFrameBytes)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            if let reply = try decoder.next() { return reply }
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { return nil }
            decoder.feed(buffer[0..<count])
        }
    }

    static func openFDs(_ pid: Int32) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    @Test(
        "a half frame and a trickled frame are closed after the frame timeout; ctl status answers meanwhile; an idle kept connection is fine"
    )
    func partialFramesTimeOut() throws {
        let server = try ServerUnderTest(workers: 1, extraArguments: ["--admin-frame-timeout-ms", "1500"])
        defer { server.stop() }

        // A persistent client: one status call, idle longer than the frame timeout, another.
        let kept = try Self.connect(server)
        defer { close(kept) }
        Self.send(kept, Self.statusFrame(callID: 1))
        #expect(try Self.readReply(kept)?.callID == 1)

        let start = Date()
        let half = try Self.connect(server)
        defer { close(half) }
        Self.send(half, [0, 0, 0, 0, 20, 1, 2, 3])  // 20 bytes announced, 3 sent
        let trickle = try Self.connect(server)
        defer { close(trickle) }
        Self.send(trickle, [0, 0, 0, 0, 100])  // 100 bytes announced
        var halfClosedAfter: Double?
        var trickleClosedAfter: Double?
        var statusCalls = 0
        // 30 s bounds a hang on a loaded machine; only the frame timeout (the log lines below
        // say so) can close these connections, the trickle keeps them busy.
        while Date().timeIntervalSince(start) < 30, halfClosedAfter == nil || trickleClosedAfter == nil {
            // One byte of a 100-byte frame every 0.3 s: activity never resets the deadline.
            if trickleClosedAfter == nil { Self.send(trickle, [7]) }
            // Counted only when asked while both partial frames were still pending.
            let pending = halfClosedAfter == nil && trickleClosedAfter == nil
            if (try server.status()["ready_workers"] as? Int) == 1, pending { statusCalls += 1 }
            Thread.sleep(forTimeInterval: 0.3)
            let elapsed = Date().timeIntervalSince(start)
            if halfClosedAfter == nil, Self.closedByPeer(half) { halfClosedAfter = elapsed }
            if trickleClosedAfter == nil, Self.closedByPeer(trickle) { trickleClosedAfter = elapsed }
        }
        // At least the first: how many more fit in the 1.5 s depends on the machine's load.
        #expect(statusCalls >= 1, "ctl status did not answer while partial frames were pending")
        for (name, elapsed) in [("half frame", halfClosedAfter), ("trickled frame", trickleClosedAfter)] {
            #expect(elapsed != nil, "the \(name) connection was kept for 30 s with a 1.5 s frame timeout")
            if let elapsed { #expect(elapsed >= 1.2, "the \(name) connection was closed after \(elapsed) s, before the timeout") }
        }
        #expect(server.log.components(separatedBy: "closing admin connection: incomplete frame for 1500 ms").count == 3, "\(server.log)")

        // The persistent client was idle for all that time, with no partial frame: kept.
        #expect(!Self.closedByPeer(kept))
        Self.send(kept, Self.statusFrame(callID: 2))
        #expect(try Self.readReply(kept)?.callID == 2)
        #expect((try server.status()["ready_workers"] as? Int) == 1)
    }

    @Test("100 idle admin connections: at most 64 stay open (the idlest make room), and ctl status answers")
    func idleConnectionsAreCapped() throws {
        let server = try ServerUnderTest(workers: 1)
        defer { server.stop() }
        let pid = server.process.processIdentifier
        let baseline = Self.openFDs(pid)
        var fds: [Int32] = []
        defer { for fd in fds { close(fd) } }
        for _ in 0..<100 { fds.append(try Self.connect(server)) }
        // Let the supervisor accept them all (a status call goes through the same loop).
        #expect((try server.status()["ready_workers"] as? Int) == 1)
        for _ in 0..<5 {
            let status = try server.status()
            #expect((status["ready_workers"] as? Int) == 1)
        }
        let open = fds.filter { !Self.closedByPeer($0) }.count
        #expect(open <= 64 && open >= 55, "\(open) of 100 idle admin connections are open")
        let supervisorFDs = Self.openFDs(pid)
        #expect(supervisorFDs <= baseline + 64 + 4, "the supervisor holds \(supervisorFDs) fds (\(baseline) before)")
        #expect(server.log.contains("the one idle longest makes room"), "\(server.log.suffix(3000))")
        // The oldest connections made room: the newest ones are still open.
        #expect(Self.closedByPeer(fds[0]))
        #expect(!Self.closedByPeer(fds[99]))
    }
}
