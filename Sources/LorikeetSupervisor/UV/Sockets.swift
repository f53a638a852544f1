import Glibc

/// Socket fds the supervisor creates and hands to children (all close-on-exec: a child
/// gets one only through an explicit stdio slot).
enum SupervisorSockets {
    /// A listening TCP socket with SO_REUSEPORT, so each worker slot gets its own.
    static func listener(host: String, port: UInt16, backlog: Int32 = 1024) throws(UVError) -> Int32 {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICHOST | AI_PASSIVE
        var info: UnsafeMutablePointer<addrinfo>?
        let lookup = getaddrinfo(host, String(port), &hints, &info)
        guard lookup == 0, let info else {
            throw UVError(code: -EINVAL, call: "listen address \(host):\(port) (\(String(cString: gai_strerror(lookup))))")
        }
        defer { freeaddrinfo(info) }
        let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw UVError(code: -errno, call: "socket") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size))
        guard bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
            let code = errno
            close(fd)
            throw UVError(code: -code, call: "bind \(host):\(port)")
        }
        guard listen(fd, backlog) == 0 else {
            let code = errno
            close(fd)
            throw UVError(code: -code, call: "listen \(host):\(port)")
        }
        return fd
    }

    /// The port a listener is bound to (for port 0).
    static func boundPort(_ fd: Int32) -> UInt16 {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
        }
    }

    /// A connected Unix socket pair, both ends close-on-exec: (supervisor end, child end).
    static func controlPair() throws(UVError) -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw UVError(code: -errno, call: "socketpair")
        }
        return (fds[0], fds[1])
    }
}
