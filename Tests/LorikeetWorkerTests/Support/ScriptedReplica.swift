import Foundation
import LorikeetJSON
import LorikeetTestSupport
import Synchronization

/// A scripted upstream "vLLM replica" on loopback (blocking POSIX sockets, one thread per
/// connection), for what a real replica cannot be made to do on demand: answer a body
/// larger than the worker's cap, or stream faster than any client reads. It counts the
/// bytes of its endless stream the kernel accepted, which is how much the worker read
/// from it (plus socket buffers).
///
/// `POST /v1/completions` answers by the `prompt`: `big-declared` (a JSON body of
/// `bigBodyBytes` with `Content-Length`), `big-chunked` (the same, chunked), `endless` (an
/// SSE stream of 4 KiB events, up to `endlessLimit` bytes), `slow` (an SSE event every
/// 20 ms for up to 30 s), anything else a small JSON completion. Also `GET /v1/models`
/// (one base model, `tiny`), `GET /health`, and `/v1/embeddings*` / `/score*` (any
/// method), which echo the method, target, `Content-Type` and body as JSON.
final class ScriptedReplica: Sendable {
    let port: UInt16
    let bigBodyBytes: Int
    /// Bytes of `endless` streams accepted by the kernel so far.
    let streamedBytes = Atomic<Int>(0)
    /// `endless` / `slow` streams that ended (their connection closed or their limit reached).
    let streamsEnded = Atomic<Int>(0)
    static let endlessLimit = 256 << 20
    private let listener: Int32

    var url: String { "http://127.0.0.1:\(self.port)" }

    init(bigBodyBytes: Int = 0) throws {
        self.bigBodyBytes = bigBodyBytes
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestEnvironment.Failure("socket: \(errno)") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard TestEnvironment.withLoopbackAddress(port: 0, { bind(fd, $0, $1) }) == 0, listen(fd, 64) == 0 else {
            close(fd)
            throw TestEnvironment.Failure("bind/listen: \(errno)")
        }
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        self.port = UInt16(bigEndian: address.sin_port)
        self.listener = fd
        let thread = Thread { [self] in
            while true {
                let client = accept(fd, nil, nil)
                if client < 0 { break }
                _ = fcntl(client, F_SETFD, FD_CLOEXEC)  // not inherited by the processes other suites spawn
                Thread { self.serve(client) }.start()
            }
            // Only this thread closes the listener, after its last accept.
            close(fd)
        }
        thread.start()
    }

    /// Stops accepting (connections in progress end on their own).
    func stop() { shutdown(self.listener, Int32(SHUT_RDWR)) }

    private func serve(_ fd: Int32) {
        defer { close(fd) }
        var pending: [UInt8] = []
        while let (head, body) = Self.readRequest(fd, &pending) {
            let target = head.split(separator: " ").dropFirst().first.map(String.init) ?? ""
            let prompt = String(decoding: body, as: UTF8.self)
            switch target {
            case "/v1/models":
                guard
                    Self.respond(
                        fd, #"{"object":"list","data":[{"id":"tiny","object":"model","root":"tiny","parent":null,"max_model_len":128}]}"#)
                else { return }
            case "/health":
                guard Self.respond(fd, "{}") else { return }
            case _ where target.hasPrefix("/v1/embeddings") || target.hasPrefix("/score"):
                // Echoes what arrived, for the passthrough of routes the worker does not own.
                let method = head.split(separator: " ").first.map(String.init) ?? ""
                let contentType =
                    head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-type:") }
                    .map { String($0.dropFirst("content-type:".count)).trimmingCharacters(in: .whitespaces) } ?? ""
                let echo = JSONWriter.encode(
                    .object([
                        ("method", .string(method)), ("target", .string(target)), ("content_type", .string(contentType)),
                        ("body", .string(prompt)),
                    ]))
                guard Self.respond(fd, String(decoding: echo, as: UTF8.self)) else { return }
            case "/v1/completions" where prompt.contains("big-declared"):
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: \(self.bigBodyBytes)\r\n\r\n"
                guard Self.send(fd, Array(head.utf8)) else { return }
                let block = [UInt8](repeating: UInt8(ascii: " "), count: 65_536)
                var left = self.bigBodyBytes
                while left > 0 {
                    guard Self.send(fd, Array(block.prefix(left))) else { return }
                    left -= min(left, block.count)
                }
            case "/v1/completions" where prompt.contains("big-chunked"):
                guard Self.send(fd, Array("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".utf8))
                else { return }
                let block = [UInt8](repeating: UInt8(ascii: " "), count: 65_536)
                for _ in 0...(self.bigBodyBytes / block.count) {
                    guard Self.sendChunk(fd, block) else { return }
                }
                guard Self.send(fd, Array("0\r\n\r\n".utf8)) else { return }
            case "/v1/completions" where prompt.contains("endless"):
                defer { self.streamsEnded.add(1, ordering: .relaxed) }
                guard Self.send(fd, Self.sseHead) else { return }
                let event = Array(("data: {\"choices\":[{\"text\":\"" + String(repeating: "x", count: 4000) + "\"}]}\n\n").utf8)
                while self.streamedBytes.load(ordering: .relaxed) < Self.endlessLimit {
                    guard Self.sendChunk(fd, event) else { return }
                    self.streamedBytes.add(event.count, ordering: .relaxed)
                }
                return
            case "/v1/completions" where prompt.contains("slow"):
                defer { self.streamsEnded.add(1, ordering: .relaxed) }
                guard Self.send(fd, Self.sseHead) else { return }
                for _ in 0..<1500 {
                    guard Self.sendChunk(fd, Array("data: {\"choices\":[{\"text\":\"x\"}]}\n\n".utf8)) else { return }
                    usleep(20_000)
                }
                _ = Self.sendChunk(fd, Array("data: [DONE]\n\n".utf8))
                _ = Self.send(fd, Array("0\r\n\r\n".utf8))
                return
            default:
                guard
                    Self.respond(
                        fd,
                        #"{"id":"cmpl-1","object":"text_completion","model":"tiny","choices":[{"index":0,"text":"ok","finish_reason":"stop"}]}"#
                    )
                else { return }
            }
        }
    }

    private static let sseHead = Array(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".utf8)

    private static func respond(_ fd: Int32, _ json: String) -> Bool {
        let body = Array(json.utf8)
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\n\r\n"
        return Self.send(fd, Array(head.utf8) + body)
    }

    private static func sendChunk(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        Self.send(fd, Array((String(bytes.count, radix: 16) + "\r\n").utf8) + bytes + Array("\r\n".utf8))
    }

    private static func send(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if written <= 0 { return false }
            offset += written
        }
        return true
    }

    /// One request (head text, body bytes) off the connection; nil when it closed.
    private static func readRequest(_ fd: Int32, _ pending: inout [UInt8]) -> (String, [UInt8])? {
        let separator = Array("\r\n\r\n".utf8)
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            if let end = Self.find(separator, in: pending) {
                let head = String(decoding: pending[..<end], as: UTF8.self)
                let length =
                    head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
                    .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
                let bodyStart = end + separator.count
                if pending.count >= bodyStart + length {
                    let body = Array(pending[bodyStart..<(bodyStart + length)])
                    pending.removeFirst(bodyStart + length)
                    return (head, body)
                }
            }
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count <= 0 { return nil }
            pending += chunk[0..<count]
        }
    }

    private static func find(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        for index in 0...(haystack.count - needle.count) where haystack[index..<(index + needle.count)].elementsEqual(needle) {
            return index
        }
        return nil
    }
}
