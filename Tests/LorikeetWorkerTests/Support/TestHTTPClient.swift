import Foundation
import LorikeetJSON
import LorikeetTestSupport

@testable import LorikeetWorker

/// A response as read off the socket.
struct TestHTTPResponse: Sendable {
    var status: Int
    var headers: [String: String]
    var body: [UInt8]

    var text: String { String(decoding: self.body, as: UTF8.self) }
    var json: JSONValue? { try? JSONParser.parse(self.body) }
    /// `error.param` / `error.type` / `error.message` of an OpenAI error envelope.
    var errorParam: String? {
        if case .string(let param)? = self.json?["error"]?["param"] { return param }
        return nil
    }
    var errorType: String? {
        if case .string(let type)? = self.json?["error"]?["type"] { return type }
        return nil
    }
    var errorMessage: String? {
        if case .string(let message)? = self.json?["error"]?["message"] { return message }
        return nil
    }
}

enum TestHTTPError: Error {
    case connect(Int32)
    case closedEarly(String)
    case malformed(String)
}

/// A small blocking HTTP/1.1 client over POSIX sockets (bounded by a receive timeout),
/// able to send raw, malformed requests and to read a response piece by piece.
///
/// `@unchecked Sendable`: a connection is used by one thread at a time; tests hand it from
/// one `offPool` block to the next, never concurrently.
final class TestHTTPConnection: @unchecked Sendable {
    let fd: Int32
    private var buffer: [UInt8] = []

    init(port: Int, timeoutSeconds: Int = 20) throws {
        self.fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(self.fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let result = TestEnvironment.withLoopbackAddress(port: UInt16(port)) { connect(self.fd, $0, $1) }
        // On failure deinit closes the fd (the object is fully initialized here).
        guard result == 0 else { throw TestHTTPError.connect(errno) }
    }

    deinit { close(self.fd) }

    /// Drops the connection now (the fd itself is closed once, by deinit).
    func disconnect() { shutdown(self.fd, Int32(SHUT_RDWR)) }

    func send(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { Glibc.send(self.fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if written <= 0 { return }
            offset += written
        }
    }

    func send(_ text: String) { self.send(Array(text.utf8)) }

    /// Sends a request with `Content-Length` (unless `headers` already has one).
    func sendRequest(_ method: String, _ path: String, headers: [(String, String)] = [], body: [UInt8]? = nil) {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        if let body, !headers.contains(where: { $0.0.lowercased() == "content-length" }) {
            head += "Content-Length: \(body.count)\r\n"
        }
        head += "\r\n"
        self.send(Array(head.utf8) + (body ?? []))
    }

    /// Reads more bytes; false at end of stream or timeout.
    @discardableResult
    func fill() -> Bool {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let count = chunk.withUnsafeMutableBytes { recv(self.fd, $0.baseAddress, $0.count, 0) }
        guard count > 0 else { return false }
        self.buffer.append(contentsOf: chunk[0..<count])
        return true
    }

    private func take(_ count: Int) -> [UInt8] {
        let bytes = Array(self.buffer[0..<count])
        self.buffer.removeFirst(count)
        return bytes
    }

    private func line() throws -> String {
        while true {
            if let index = self.buffer.firstIndex(of: 0x0A) {
                let bytes = self.take(index + 1)
                return String(decoding: bytes.dropLast(bytes.count >= 2 && bytes[bytes.count - 2] == 0x0D ? 2 : 1), as: UTF8.self)
            }
            guard self.fill() else { throw TestHTTPError.closedEarly("while reading a line") }
        }
    }

    /// Reads the status line and headers.
    func readHead() throws -> (status: Int, headers: [String: String]) {
        let statusLine = try self.line()
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, let status = Int(parts[1]) else { throw TestHTTPError.malformed(statusLine) }
        var headers: [String: String] = [:]
        while true {
            let header = try self.line()
            if header.isEmpty { break }
            guard let colon = header.firstIndex(of: ":") else { throw TestHTTPError.malformed(header) }
            headers[header[..<colon].lowercased()] = header[header.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return (status, headers)
    }

    /// Reads the next piece of a chunked body; nil after the last chunk.
    func readChunk() throws -> [UInt8]? {
        let sizeLine = try self.line()
        guard let size = Int(sizeLine.split(separator: ";")[0], radix: 16) else { throw TestHTTPError.malformed(sizeLine) }
        if size == 0 {
            while try !self.line().isEmpty {}
            return nil
        }
        while self.buffer.count < size + 2 {
            guard self.fill() else { throw TestHTTPError.closedEarly("inside a chunk") }
        }
        let data = self.take(size)
        _ = self.take(2)
        return data
    }

    /// Reads one whole response.
    func readResponse() throws -> TestHTTPResponse {
        let (status, headers) = try self.readHead()
        var body: [UInt8] = []
        if headers["transfer-encoding"]?.lowercased() == "chunked" {
            while let chunk = try self.readChunk() { body += chunk }
        } else if let length = headers["content-length"].flatMap(Int.init) {
            while self.buffer.count < length {
                guard self.fill() else { throw TestHTTPError.closedEarly("inside the body") }
            }
            body = self.take(length)
        } else {
            while self.fill() {}
            body = self.take(self.buffer.count)
        }
        return TestHTTPResponse(status: status, headers: headers, body: body)
    }
}

enum TestHTTP {
    static func request(
        port: Int, _ method: String, _ path: String, headers: [(String, String)] = [], body: [UInt8]? = nil
    ) async throws -> TestHTTPResponse {
        try await offPool {
            let connection = try TestHTTPConnection(port: port)
            connection.sendRequest(method, path, headers: headers, body: body)
            return try connection.readResponse()
        }
    }

    /// Sends raw bytes and reads one response.
    static func raw(port: Int, _ bytes: [UInt8]) async throws -> TestHTTPResponse {
        try await offPool {
            let connection = try TestHTTPConnection(port: port)
            connection.send(bytes)
            return try connection.readResponse()
        }
    }

    static func json(
        port: Int, _ method: String, _ path: String, _ body: String, headers: [(String, String)] = []
    ) async throws -> TestHTTPResponse {
        try await Self.request(
            port: port, method, path, headers: [("Content-Type", "application/json")] + headers, body: Array(body.utf8))
    }

    static func post(port: Int, _ path: String, _ body: String, headers: [(String, String)] = []) async throws -> TestHTTPResponse {
        try await Self.json(port: port, "POST", path, body, headers: headers)
    }

    static func get(port: Int, _ path: String, headers: [(String, String)] = []) async throws -> TestHTTPResponse {
        try await Self.request(port: port, "GET", path, headers: headers)
    }

    /// `data:` payloads of an SSE body, in order.
    static func events(_ body: [UInt8]) -> [String] {
        String(decoding: body, as: UTF8.self).components(separatedBy: "\n\n").compactMap { block in
            block.hasPrefix("data: ") ? String(block.dropFirst(6)) : nil
        }
    }
}
