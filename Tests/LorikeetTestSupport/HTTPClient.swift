import Foundation

/// A minimal blocking HTTP/1.1 client for tests: one request per fresh TCP connection to
/// 127.0.0.1 (so the kernel spreads requests across SO_REUSEPORT workers), raw bytes in,
/// status + headers + body out. Also sends malformed requests on purpose.
public enum TestHTTP {
    public struct Response: Sendable {
        public var status: Int
        public var headers: [String: String]
        public var body: String
        public var json: [String: Any]? { (try? JSONSerialization.jsonObject(with: Data(self.body.utf8))) as? [String: Any] }
    }

    public enum Failure: Error, CustomStringConvertible {
        case connect(Int32)
        case io(String)
        public var description: String {
            switch self {
            case .connect(let code): return "connect failed: \(String(cString: strerror(code)))"
            case .io(let message): return message
            }
        }
    }

    /// Sends one request with `Connection: close` and reads the whole response.
    public static func request(
        port: UInt16, method: String = "GET", path: String, body: String? = nil, headers: [String: String] = [:],
        timeoutSeconds: Int = 60
    ) throws -> Response {
        var text = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n"
        for (name, value) in headers { text += "\(name): \(value)\r\n" }
        if let body {
            if headers["Content-Type"] == nil { text += "Content-Type: application/json\r\n" }
            text += "Content-Length: \(body.utf8.count)\r\n\r\n\(body)"
        } else {
            text += "\r\n"
        }
        return try self.raw(port: port, Array(text.utf8), timeoutSeconds: timeoutSeconds)
    }

    /// POSTs a JSON object.
    public static func post(port: UInt16, _ path: String, _ object: [String: Any], headers: [String: String] = [:]) throws -> Response {
        let data = try JSONSerialization.data(withJSONObject: object)
        return try self.request(port: port, method: "POST", path: path, body: String(decoding: data, as: UTF8.self), headers: headers)
    }

    /// Sends raw bytes and parses what comes back.
    public static func raw(port: UInt16, _ bytes: [UInt8], timeoutSeconds: Int = 60) throws -> Response {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure.connect(errno) }
        defer { close(fd) }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard TestEnvironment.withLoopbackAddress(port: port, { connect(fd, $0, $1) }) == 0 else { throw Failure.connect(errno) }
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if written <= 0 { break }  // the server may answer (413) and close before reading it all
            offset += written
        }
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count <= 0 {
                if count < 0 && received.isEmpty { throw Failure.io("no response (\(String(cString: strerror(errno))))") }
                break
            }
            received += chunk[0..<count]
        }
        return try self.parse(received)
    }

    static func parse(_ bytes: [UInt8]) throws -> Response {
        let text = String(decoding: bytes, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n") else { throw Failure.io("incomplete response: \(text.prefix(200))") }
        let head = text[..<split.lowerBound].split(separator: "\r\n")
        guard let statusLine = head.first, statusLine.split(separator: " ").count >= 2,
            let status = Int(statusLine.split(separator: " ")[1])
        else { throw Failure.io("bad status line: \(head.first ?? "")") }
        var headers: [String: String] = [:]
        for line in head.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        var body = String(text[split.upperBound...])
        if headers["transfer-encoding"]?.lowercased() == "chunked" {
            // On bytes: a chunk boundary may split a multi-byte character.
            let headEnd = Array(text[..<split.upperBound].utf8).count
            body = String(decoding: self.dechunk(Array(bytes[min(headEnd, bytes.count)...])), as: UTF8.self)
        }
        return Response(status: status, headers: headers, body: body)
    }

    static func dechunk(_ bytes: [UInt8]) -> [UInt8] {
        var result: [UInt8] = []
        var index = 0
        while index < bytes.count {
            guard let lineEnd = (index..<bytes.count - 1).first(where: { bytes[$0] == 13 && bytes[$0 + 1] == 10 }) else { break }
            let sizeText = String(decoding: bytes[index..<lineEnd], as: UTF8.self).split(separator: ";").first.map(String.init) ?? ""
            guard let size = Int(sizeText, radix: 16), size > 0 else { break }
            let start = lineEnd + 2
            let end = min(start + size, bytes.count)
            result += bytes[start..<end]
            index = end + 2
        }
        return result
    }

    static func dechunk(_ body: String) -> String {
        var result = ""
        var rest = Substring(body)
        while let lineEnd = rest.range(of: "\r\n") {
            guard let size = Int(rest[..<lineEnd.lowerBound].split(separator: ";")[0], radix: 16), size > 0 else { break }
            let start = lineEnd.upperBound
            let utf8 = rest.utf8
            guard let end = utf8.index(start, offsetBy: size, limitedBy: utf8.endIndex) else { break }
            result += String(rest[start..<end])
            rest = rest[end...].dropFirst(2)
        }
        return result
    }
}

/// A background loop of requests (one fresh connection each) that counts outcomes until
/// stopped: the "steady traffic" of the fault tests.
public final class RequestLoop: @unchecked Sendable {
    // @unchecked: `counts` is guarded by `lock`; `thread` is written once in init.
    private let lock = NSLock()
    private var running = true
    private var counts: [Int: Int] = [:]
    private var failures: [String] = []
    private var thread: Thread?

    public init(port: UInt16, path: String = "/v1/completions", body: [String: Any], concurrency: Int = 2) {
        let data = String(decoding: (try? JSONSerialization.data(withJSONObject: body)) ?? Data(), as: UTF8.self)
        for index in 0..<concurrency {
            let thread = Thread { [self] in
                while self.isRunning {
                    do {
                        let response = try TestHTTP.request(port: port, method: "POST", path: path, body: data, timeoutSeconds: 30)
                        self.record(response.status, nil)
                    } catch {
                        self.record(0, "\(error)")
                    }
                }
            }
            thread.name = "request-loop-\(index)"
            thread.start()
        }
    }

    private var isRunning: Bool { self.lock.withLock { self.running } }

    private func record(_ status: Int, _ failure: String?) {
        self.lock.withLock {
            self.counts[status, default: 0] += 1
            if let failure, self.failures.count < 20 { self.failures.append(failure) }
        }
    }

    /// Stops the loop (waits for requests in flight) and returns status -> count (0 = no response).
    public func stop() -> (counts: [Int: Int], failures: [String]) {
        self.lock.withLock { self.running = false }
        Thread.sleep(forTimeInterval: 0.5)
        return self.lock.withLock { (self.counts, self.failures) }
    }

    public var snapshot: [Int: Int] { self.lock.withLock { self.counts } }
}
