import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A TCP proxy on loopback in front of one HTTP/1.1 server (an etcd member's client port):
/// it passes every connection through, except the first `times` requests whose bytes (head
/// and body) contain `marker`: those reach the server, the proxy waits for the first bytes
/// of its answer (so the server has acted), then closes the client's connection without
/// passing a byte of the answer on. A write that lands while its answer is lost.
///
/// One thread per direction of each connection, blocking sockets; `stop()` closes the
/// listener (connections in flight end when either side closes).
public final class AnswerDroppingProxy: Sendable {
    /// The port clients connect to.
    public let port: UInt16
    private let listener: Int32
    private let target: (host: String, port: UInt16)
    private let marker: [UInt8]
    private let state: Mutex<(dropsLeft: Int, dropped: Int, stopped: Bool)>

    /// Listens on a free loopback port, forwarding to `target` (`host:port`).
    public init(target: String, marker: String, times: Int = 1) throws {
        let parts = target.split(separator: ":")
        guard parts.count == 2, let targetPort = UInt16(parts[1]) else { throw TestEnvironment.Failure("bad target \(target)") }
        self.target = (String(parts[0]), targetPort)
        self.marker = Array(marker.utf8)
        self.state = Mutex((times, 0, false))
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestEnvironment.Failure("socket: \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 64) == 0 else {
            close(fd)
            throw TestEnvironment.Failure("bind/listen: \(errno)")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        self.listener = fd
        self.port = UInt16(bigEndian: address.sin_port)
        let thread = Thread { [self] in self.acceptLoop() }
        thread.start()
    }

    /// Answers dropped so far.
    public var dropped: Int { self.state.withLock { $0.dropped } }

    /// Stops accepting connections.
    public func stop() {
        let first = self.state.withLock { state -> Bool in
            defer { state.stopped = true }
            return !state.stopped
        }
        if first { shutdown(self.listener, Int32(SHUT_RDWR)) }
    }

    deinit { close(self.listener) }

    private func acceptLoop() {
        while true {
            let client = accept(self.listener, nil, nil)
            guard client >= 0 else {
                if errno == EINTR { continue }
                return
            }
            let connection = Thread { [self] in self.serve(client) }
            connection.start()
        }
    }

    private func serve(_ client: Int32) {
        let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr(self.target.host)
        address.sin_port = self.target.port.bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard server >= 0, connected == 0 else {
            close(client)
            if server >= 0 { close(server) }
            return
        }
        // The first request: read until its head and body are in, then decide.
        var request: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !Self.complete(request) {
            let n = read(client, &buffer, buffer.count)
            guard n > 0 else { break }
            request += buffer[0..<n]
        }
        let drop =
            Self.contains(request, self.marker)
            && self.state.withLock { state -> Bool in
                guard state.dropsLeft > 0 else { return false }
                state.dropsLeft -= 1
                return true
            }
        _ = request.withUnsafeBytes { write(server, $0.baseAddress, $0.count) }
        if drop {
            // The server has acted once it starts answering; the client never hears it.
            _ = read(server, &buffer, buffer.count)
            self.state.withLock { $0.dropped += 1 }
            close(client)
            close(server)
            return
        }
        let back = Thread { Self.pipe(from: server, to: client) }
        back.start()
        Self.pipe(from: client, to: server)
    }

    /// Copies until `source` ends, then ends `destination`'s writing side.
    private static func pipe(from source: Int32, to destination: Int32) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(source, &buffer, buffer.count)
            guard n > 0 else { break }
            var offset = 0
            while offset < n {
                let written = buffer[offset..<n].withUnsafeBytes { write(destination, $0.baseAddress, $0.count) }
                guard written > 0 else { break }
                offset += written
            }
        }
        shutdown(destination, Int32(SHUT_WR))
        shutdown(source, Int32(SHUT_RD))
    }

    /// Whether `bytes` hold a whole HTTP/1.1 request head and its `Content-Length` body.
    private static func complete(_ bytes: [UInt8]) -> Bool {
        guard let end = Self.index(of: Array("\r\n\r\n".utf8), in: bytes) else { return false }
        let head = String(decoding: bytes[0..<end], as: UTF8.self).lowercased()
        var length = 0
        for line in head.split(separator: "\r\n") where line.hasPrefix("content-length:") {
            length = Int(line.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) ?? 0
        }
        return bytes.count >= end + 4 + length
    }

    private static func contains(_ bytes: [UInt8], _ marker: [UInt8]) -> Bool { Self.index(of: marker, in: bytes) != nil }

    private static func index(of needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard !needle.isEmpty, haystack.count >= needle.count else { return nil }
        for start in 0...(haystack.count - needle.count) where haystack[start..<start + needle.count].elementsEqual(needle) {
            return start
        }
        return nil
    }
}
