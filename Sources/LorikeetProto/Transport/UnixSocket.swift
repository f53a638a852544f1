import CLorikeetSys
import Glibc

/// Errors of the blocking POSIX socket transport, with the failing call and errno text.
package enum TransportError: Error, Equatable, Sendable, CustomStringConvertible {
    case system(call: String, errno: Int32)
    case pathTooLong(String)
    case closed
    case frame(FrameError)
    /// Something other than a stale socket of ours is where a socket should be created.
    case notASocket(path: String, reason: String)

    package var description: String {
        switch self {
        case .system(let call, let code): return "\(call) failed: \(String(cString: strerror(code)))"
        case .pathTooLong(let path): return "socket path is longer than 107 bytes: \(path)"
        case .closed: return "connection closed"
        case .frame(let error): return "bad frame: \(error)"
        case .notASocket(let path, let reason): return "\(path) \(reason); remove it or choose another path"
        }
    }
}

/// Unix-domain stream socket helpers (all fds are close-on-exec).
package enum UnixSocket {
    /// Binds and listens on `path` with the given mode.
    ///
    /// The socket file gets its mode at creation: `bind` runs under `umask(~mode)` (never a
    /// `chmod` after `bind`, which would leave a window in which anyone could connect).
    /// umask is process-wide: the mask is restored right after `bind`, and callers bind at
    /// startup, before other threads create files (a thread that did would only get a
    /// stricter mode). A stale socket at `path` is removed first, but only when it is a
    /// socket owned by this uid (`removeStaleSocket`).
    package static func listen(path: String, mode: UInt32 = 0o600, backlog: Int32 = 128) throws(TransportError) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system(call: "socket", errno: errno) }
        do {
            var address = try Self.address(path)
            try Self.removeStaleSocket(path: path)
            let bound = Self.withUmask(for: mode) {
                withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
                }
            }
            guard bound == 0 else { throw TransportError.system(call: "bind \(path)", errno: errno) }
            guard Glibc.listen(fd, backlog) == 0 else { throw TransportError.system(call: "listen", errno: errno) }
            return fd
        } catch {
            close(fd)
            throw error as! TransportError
        }
    }

    /// Runs `body` (a `bind`) with the umask that gives a new socket file exactly `mode`
    /// (`~mode & 0o777`), then restores the previous umask; errno is that of `body`.
    package static func withUmask<Result>(for mode: UInt32, _ body: () -> Result) -> Result {
        let previous = umask(mode_t(~mode & 0o777))
        let result = body()
        let code = errno
        umask(previous)
        errno = code
        return result
    }

    /// Makes room for a new socket at `path`: nothing there is fine; a socket owned by this
    /// uid (a previous run's) is unlinked; anything else (a regular file, a directory, a
    /// symlink, someone else's socket) is left alone and refused. `lstat` never follows
    /// a symlink, and `unlink` removes the name itself.
    package static func removeStaleSocket(path: String) throws(TransportError) {
        var info = stat()
        if lstat(path, &info) != 0 {
            if errno == ENOENT { return }
            throw .system(call: "lstat \(path)", errno: errno)
        }
        guard info.st_mode & S_IFMT == S_IFSOCK else { throw .notASocket(path: path, reason: "exists and is not a socket") }
        guard info.st_uid == geteuid() else {
            throw .notASocket(path: path, reason: "is a socket owned by uid \(info.st_uid), not by this process")
        }
        if unlink(path) != 0 && errno != ENOENT { throw .system(call: "unlink \(path)", errno: errno) }
    }

    /// Removes the socket at `path` when it is one this uid owns (at shutdown); leaves
    /// anything else.
    package static func unlinkOwnSocket(path: String) {
        var info = stat()
        guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFSOCK, info.st_uid == geteuid() else { return }
        unlink(path)
    }

    /// Connects to the socket at `path`.
    package static func connect(path: String) throws(TransportError) -> Int32 {
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
    package static func accept(listener: Int32) throws(TransportError) -> Int32 {
        while true {
            let fd = lorikeet_accept_cloexec(listener)
            if fd >= 0 { return fd }
            if errno == EINTR || errno == ECONNABORTED { continue }
            throw .system(call: "accept", errno: errno)
        }
    }

    /// The uid of the process at the other end (SO_PEERCRED).
    package static func peerUID(_ fd: Int32) throws(TransportError) -> UInt32 {
        try Self.peerCredentials(fd).uid
    }

    /// The peer's uid and pid of a connected Unix socket (SO_PEERCRED).
    package static func peerCredentials(_ fd: Int32) throws(TransportError) -> (uid: UInt32, pid: Int32) {
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
