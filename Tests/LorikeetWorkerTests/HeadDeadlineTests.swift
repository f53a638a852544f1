import Foundation
import HTTPTypes
import HummingbirdCore
import LorikeetJSON
import LorikeetTestSupport
import NIOCore
import Testing

@testable import LorikeetWorker

/// The request-head deadline (slowloris) against a real `WorkerServer` on 127.0.0.1,
/// with a 1 s `headTimeout` and a responder that reads the whole body.
@Suite("Request-head deadline over real sockets", .serialized, .timeLimit(.minutes(3)), .ownThreads)
struct HeadDeadlineTests {
    /// Answers `got N` (N = body bytes) after reading the whole body.
    static let responder: WorkerServer.Responder = { request, writer, _ in
        var request = request
        let body = try await request.collectBody(upTo: 1 << 20)
        let text = "got \(body.readableBytes)"
        var headers = HTTPFields()
        headers[.contentLength] = "\(text.utf8.count)"
        try await writer.write(
            response: HTTPResponse(status: .ok, headerFields: headers), body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
    }

    static func withServer(headTimeout: Duration = .seconds(1), _ body: @Sendable (Int) async throws -> Void) async throws {
        let server = WorkerServer(
            configuration: HTTPServerConfiguration(listen: .address(host: "127.0.0.1", port: 0), headTimeout: headTimeout),
            responder: Self.responder, logger: WorkerHarness.logger)
        let running = Task { try await server.run() }
        var port = 0
        for _ in 0..<500 {
            if let bound = server.localAddress?.port {
                port = bound
                break
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        do {
            guard port > 0 else { throw TestHTTPError.malformed("the server did not start") }
            try await body(port)
        } catch {
            await server.drain(grace: .milliseconds(100))
            _ = try? await running.value
            throw error
        }
        await server.drain(grace: .seconds(1))
        try await running.value
    }

    /// Whether the peer closed `fd` (EOF or reset), without waiting; bytes read are added to `received`.
    static func peerClosed(_ fd: Int32, received: inout Int) -> Bool {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if count > 0 {
                received += count
                continue
            }
            return count == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)
        }
    }

    /// One request on `connection` (`sent`: already sent by the caller); throws unless the answer is 200 `got N`. (Blocking
    /// code runs on `offPool` threads, where `#expect` would not belong to the test.)
    static func roundTrip(_ connection: TestHTTPConnection, body: [UInt8]? = nil, sent: Bool = false) throws {
        if !sent { connection.sendRequest(body == nil ? "GET" : "POST", "/echo", body: body) }
        let response = try connection.readResponse()
        guard response.status == 200, response.text == "got \(body?.count ?? 0)" else {
            throw TestHTTPError.malformed("unexpected answer \(response.status) \(response.text)")
        }
    }

    /// Sends `prefix`, then one byte every 0.5 s (serving a normal client in between) until
    /// the server closes the connection or `limit` seconds pass; returns whether it closed
    /// and the seconds from the first byte to the close. The trickle never lets the 75 s
    /// idle timeout fire, so within `limit` only the head deadline can close it; `limit` is
    /// a bound against hangs on a loaded machine, not a speed claim.
    static func trickleUntilClosed(
        _ slow: TestHTTPConnection, prefix: String, port: Int, limit: Double = 30
    ) throws -> (closed: Bool, seconds: Double, bytesAnswered: Int) {
        let start = Date()
        slow.send(prefix)
        var received = 0
        var closed = false
        while Date().timeIntervalSince(start) < limit {
            Thread.sleep(forTimeInterval: 0.5)
            if Self.peerClosed(slow.fd, received: &received) {
                closed = true
                break
            }
            slow.send("a")
            // Another client is served normally meanwhile (a fresh connection each time).
            try Self.roundTrip(try TestHTTPConnection(port: port, timeoutSeconds: 30))
        }
        return (closed, Date().timeIntervalSince(start), received)
    }

    @Test("a head trickled one byte every 0.5 s is closed within the head timeout; other clients are served meanwhile")
    func trickledHeadIsClosed() async throws {
        try await Self.withServer { port in
            let (closed, elapsed, answered) = try await offPool {
                let slow = try TestHTTPConnection(port: port, timeoutSeconds: 30)
                return try Self.trickleUntilClosed(slow, prefix: "GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ", port: port)
            }
            #expect(closed, "a trickled head was kept open for \(elapsed) s")
            #expect(elapsed >= 0.9, "closed after \(elapsed) s, before the 1 s head timeout")
            #expect(answered == 0, "the server answered a request whose head never completed")
        }
    }

    @Test("a keep-alive connection idle longer than the head timeout stays open; the next head has the deadline again")
    func idleKeepAliveIsKept() async throws {
        try await Self.withServer { port in
            let (closedWhileIdle, closed, elapsed, answered) = try await offPool {
                let connection = try TestHTTPConnection(port: port, timeoutSeconds: 5)
                try Self.roundTrip(connection)
                Thread.sleep(forTimeInterval: 2.5)
                var received = 0
                let closedWhileIdle = Self.peerClosed(connection.fd, received: &received)
                try Self.roundTrip(connection, body: Array("hello".utf8))
                // A head split in two parts that arrive within the timeout is fine.
                connection.send("GET /echo HTTP/1.1\r\n")
                Thread.sleep(forTimeInterval: 0.1)
                connection.send("Host: 127.0.0.1\r\n\r\n")
                try Self.roundTrip(connection, sent: true)
                // The deadline starts again with the first byte of the next request.
                let (closed, elapsed, answered) = try Self.trickleUntilClosed(connection, prefix: "GET /echo HTTP/1.1\r\n", port: port)
                return (closedWhileIdle, closed, elapsed, answered)
            }
            #expect(!closedWhileIdle, "an idle keep-alive connection was closed")
            #expect(closed, "a trickled head was kept open for \(elapsed) s")
            #expect(elapsed >= 0.9, "closed after \(elapsed) s, before the 1 s head timeout")
            #expect(answered == 0)
        }
    }

    @Test("a head over 64 KiB (long URL or headers) is a 431 in OpenAI's envelope; a 60 KiB head and a big body are served")
    func headSizeLimit() async throws {
        try await Self.withServer(headTimeout: .seconds(30)) { port in
            let refusals = try await offPool { () -> [TestHTTPResponse] in
                // Just under the limit: served; then a small head with a 512 KiB body on the
                // same connection (body bytes do not count as head).
                let fine = try TestHTTPConnection(port: port, timeoutSeconds: 30)
                fine.send("GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: \(String(repeating: "a", count: 60_000))\r\n\r\n")
                try Self.roundTrip(fine, sent: true)
                try Self.roundTrip(fine, body: [UInt8](repeating: UInt8(ascii: "b"), count: 512 << 10))
                let over = [
                    "GET /echo?q=\(String(repeating: "q", count: 100_000)) HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                    "GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: \(String(repeating: "a", count: 70_000))\r\n\r\n",
                    // Many small headers, and a head that never ends.
                    "GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n" + String(repeating: "X-A: b\r\n", count: 10_000) + "\r\n",
                    "GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: " + String(repeating: "z", count: 200_000),
                ]
                return try over.map { request in
                    let connection = try TestHTTPConnection(port: port, timeoutSeconds: 30)
                    connection.send(request)
                    return try connection.readResponse()
                }
            }
            for response in refusals { Self.expectHeadTooLarge(response) }
        }
    }

    /// A 431 in OpenAI's envelope with code `request_header_fields_too_large`.
    static func expectHeadTooLarge(_ response: TestHTTPResponse) {
        #expect(response.status == 431, "\(response.status) \(response.text.prefix(200))")
        #expect(response.errorType == "invalid_request_error")
        #expect(response.errorMessage?.contains("65536 bytes") == true, "\(response.text.prefix(300))")
        let code = response.json?["error"]?["code"]
        #expect(code == .string("request_header_fields_too_large"), "\(response.text.prefix(300))")
    }

    @Test("a body that arrives slowly after a whole head is not cut by the head deadline")
    func slowBodyIsNotCut() async throws {
        try await Self.withServer { port in
            try await offPool {
                let connection = try TestHTTPConnection(port: port, timeoutSeconds: 10)
                connection.send("POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 8\r\n\r\n")
                for byte in "slowbody".utf8 {
                    Thread.sleep(forTimeInterval: 0.4)
                    connection.send([byte])
                }
                try Self.roundTrip(connection, body: Array("slowbody".utf8), sent: true)
                // And the connection is still usable.
                try Self.roundTrip(connection)
            }
        }
    }
}
