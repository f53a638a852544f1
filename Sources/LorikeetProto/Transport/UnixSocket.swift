import Glibc
import CLorikeetSys

/// Errors of the blocking POSIX socket transport, with the failing call and errno text.
public enum TransportError: Error, Equatable, Sendable, CustomStringConvertible {
    case system(call: String, errno: Int32)
    case pathTooLong(String)
    case closed
    case frame(FrameError)

    public var description: String {
        switch self {
        case .system(let call, let code): return "\(call) failed: \(String(cString: strerror(code)))"
        case .pathTooLong(let path): return "socket path is longer than 107 bytes: \(path)"
        case .closed: return "connection closed"
        case .frame(let error): return "bad frame: \(error)"
        }
    }
}

/// Unix-domain stream socket helpers (all fds are close-on-exec).
public enum UnixSocket {
    /// Binds and listens on `path` (replacing a stale socket file) with the given mode.
    public static func listen(path: String, mode: UInt32 = 0o600, backlog: Int32 = 128) throws(TransportError) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system(call: "socket", errno: errno) }
        do {
            var address = try Self.address(path)
            unlink(path)
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard bound == 0 else { throw TransportError.system(call: "bind \(path)", errno: errno) }
            guard chmod(path, mode) == 0 else { throw TransportError.system(call: "chmod \(path)", errno: errno) }
            guard Glibc.listen(fd, backlog) == 0 else { throw TransportError.system(call: "listen", errno: errno) }
            return fd
        } catch {
            close(fd)
            throw error as! TransportError
        }
    }

    /// Connects to the socket at `path`.
    public static func connect(path: String) throws(TransportError) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system(call: "socket", errno: errno) }
        var address: sockaddr_un
        do {
            address = try Self.address(path)
        } catch {
            close(fd)
            throw error
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            let code = errno
            close(fd)
            throw .system(call: "connect \(path)", errno: code)
        }
        return fd
    }

    /// Accepts one connection (blocking); retries on EINTR.
    public static func accept(listener: Int32) throws(TransportError) -> Int32 {
        while true {
            let fd = lorikeet_accept_cloexec(listener)
            if fd >= 0 { return fd }
            if errno == EINTR || errno == ECONNABORTED { continue }
            throw .system(call: "accept", errno: errno)
        }
    }

    /// The uid of the process at the other end (SO_PEERCRED).
    public static func peerUID(_ fd: Int32) throws(TransportError) -> UInt32 {
        try Self.peerCredentials(fd).uid
    }

    /// The peer's uid and pid of a connected Unix socket (SO_PEERCRED).
    public static func peerCredentials(_ fd: Int32) throws(TransportError) -> (uid: UInt32, pid: Int32) {
        var uid: uid_t = 0
        var pid: pid_t = 0
        guard lorikeet_peer_credentials(fd, &uid, &pid) == 0 else {
            throw .system(call: "getsockopt(SO_PEERCRED)", errno: errno)
        }
        return (uid, pid)
    }

    private static func address(_ path: String) throws(TransportError) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path), !bytes.contains(0) else {
            throw .pathTooLong(path)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        return address
    }
}
