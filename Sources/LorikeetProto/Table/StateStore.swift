import Glibc

/// Why the state file could not be read or written.
public enum StateStoreError: Error, CustomStringConvertible {
    case io(path: String, call: String, errno: Int32)
    case corrupt(path: String, reason: String)

    public var description: String {
        switch self {
        case .io(let path, let call, let code):
            return "\(call) \(path) failed: \(String(cString: strerror(code)))"
        case .corrupt(let path, let reason):
            return "state file \(path) is corrupt (\(reason)); move it aside to start with an empty adapter table, "
                + "or restore it from a backup"
        }
    }
}

/// The committed adapter table on disk: one protobuf `AdapterTable`, replaced
/// atomically (write temp, fsync, rename, fsync directory) before any change is
/// acknowledged. The supervisor keeps `adapters.table`; a standalone worker `adapters.pb`.
public struct StateStore: Sendable {
    public let directory: String
    public let fileName: String
    public var path: String { self.directory + "/" + self.fileName }

    public init(directory: String, fileName: String = "adapters.table") throws(StateStoreError) {
        self.directory = directory
        self.fileName = fileName
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw .io(path: directory, call: "mkdir", errno: errno)
        }
    }

    /// The stored table, or an empty one when there is no state file yet.
    public func load() throws(StateStoreError) -> AdapterTable {
        let fd = open(self.path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return AdapterTable() }
            throw .io(path: self.path, call: "open", errno: errno)
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw .io(path: self.path, call: "read", errno: errno)
            }
            if count == 0 { break }
            bytes += chunk[0..<count]
            if bytes.count > 256 * 1024 * 1024 { throw .corrupt(path: self.path, reason: "larger than 256 MiB") }
        }
        let table: AdapterTable
        do {
            table = try AdapterTable(serializedBytes: bytes)
        } catch {
            throw .corrupt(path: self.path, reason: "\(error)")
        }
        if let problem = TableRules.inconsistency(in: table) { throw .corrupt(path: self.path, reason: problem) }
        return table
    }

    /// Durably replaces the stored table.
    public func save(_ table: AdapterTable) throws(StateStoreError) {
        let temporary = self.path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .io(path: temporary, call: "open", errno: errno) }
        let bytes = table.serializedBytes()
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if written < 0 {
                if errno == EINTR { continue }
                let code = errno
                close(fd)
                throw .io(path: temporary, call: "write", errno: code)
            }
            offset += written
        }
        guard fsync(fd) == 0 else {
            let code = errno
            close(fd)
            throw .io(path: temporary, call: "fsync", errno: code)
        }
        close(fd)
        guard rename(temporary, self.path) == 0 else { throw .io(path: self.path, call: "rename", errno: errno) }
        let directoryFD = open(self.directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryFD >= 0 {
            fsync(directoryFD)
            close(directoryFD)
        }
    }
}

