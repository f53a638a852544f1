import Glibc

/// Parents and children of processes (Linux `/proc`). The supervisor kills what a killed
/// worker started (a worker that gets SIGABRT runs the Swift runtime's backtracer as a
/// child; killed mid-backtrace, that child was left behind, reparented and blocked for
/// ever, holding the worker's descriptors); the engine checks whose child a peer is.
package enum ProcessTable {
    /// The ids of the running processes whose parent is `pid` (empty when `/proc` cannot be
    /// read).
    package static func children(of pid: Int32) -> [Int32] {
        guard pid > 0, let directory = opendir("/proc") else { return [] }
        defer { closedir(directory) }
        var children: [Int32] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let candidate = Int32(name), let parent = Self.parent(of: candidate), parent == pid else { continue }
            children.append(candidate)
        }
        return children
    }

    /// The parent id in `/proc/PID/stat` (the field after the parenthesized command name,
    /// which may itself contain spaces and parentheses).
    package static func parent(of pid: Int32) -> Int32? {
        guard pid > 0 else { return nil }
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 512)
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count > 0, let close = buffer[..<count].lastIndex(of: UInt8(ascii: ")")) else { return nil }
        let fields = buffer[(close + 1)..<count].split(separator: UInt8(ascii: " "))
        guard fields.count > 1 else { return nil }
        return Int32(String(decoding: fields[1], as: UTF8.self))
    }
}
