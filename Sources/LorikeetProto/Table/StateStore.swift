import Glibc

/// Why the state directory or the state file could not be used.
package enum StateStoreError: Error, CustomStringConvertible {
    case io(path: String, call: String, errno: Int32)
    case corrupt(path: String, reason: String)
    /// The state directory is not safe to trust (a symlink, someone else's, writable by
    /// others): `reason` says what is wrong, `fix` what to do.
    case untrustedDirectory(path: String, reason: String, fix: String)

    package var description: String {
        switch self {
        case .io(let path, let call, let code):
            return "\(call) \(path) failed: \(String(cString: strerror(code)))"
        case .corrupt(let path, let reason):
            return "state file \(path) is corrupt (\(reason)); move it aside to start with an empty adapter table, "
                + "or restore it from a backup"
        case .untrustedDirectory(let path, let reason, let fix):
            return "state directory \(path) \(reason); \(fix)"
        }
    }
}

/// The state directory: created `0700` when missing, and trusted only when it is a real
/// directory (not a symlink), owned by this process's effective uid and not writable by
/// group or others. Anything else could let another local user swap the table, the audit
/// log or the sockets under the server.
package enum StateDirectory {
    /// Creates `path` (mode 0700) if it does not exist, then checks it can be trusted.
    package static func prepare(_ path: String) throws(StateStoreError) {
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw .io(path: path, call: "mkdir", errno: errno)
        }
        try self.verify(path)
    }

    /// Throws `.untrustedDirectory` unless `path` is a directory (not a symlink to one)
    /// owned by the effective uid and without group/other write permission.
    package static func verify(_ path: String) throws(StateStoreError) {
        var info = stat()
        guard lstat(path, &info) == 0 else { throw .io(path: path, call: "lstat", errno: errno) }
        let type = info.st_mode & S_IFMT
        if type == S_IFLNK {
            throw .untrustedDirectory(
                path: path, reason: "is a symlink",
                fix: "point --state-dir at the real directory (a symlink can be re-pointed by whoever owns it)")
        }
        guard type == S_IFDIR else {
            throw .untrustedDirectory(path: path, reason: "is not a directory", fix: "point --state-dir at a directory")
        }
        let uid = geteuid()
        guard info.st_uid == uid else {
            throw .untrustedDirectory(
                path: path, reason: "is owned by uid \(info.st_uid), not by this server's uid \(uid)",
                fix: "chown it to uid \(uid) (or use another --state-dir)")
        }
        let mode = info.st_mode & 0o7777
        guard mode & 0o022 == 0 else {
            throw .untrustedDirectory(
                path: path, reason: "is writable by group or others (mode \(String(mode, radix: 8)))",
                fix: "chmod 700 \(path)")
        }
    }
}

/// The committed adapter table on disk, in the `TableFile` format (magic, version,
/// length, CRC-32C, protobuf), replaced atomically (write temp, fsync, rename, fsync
/// directory) before any change is acknowledged. The supervisor keeps `adapters.table`;
/// a standalone worker `adapters.pb`.
///
/// Every file is opened with `O_NOFOLLOW` (a symlink planted in place of the table or
/// its temp file is refused, never followed) and must be a regular file.
package struct StateStore: Sendable {
    package let directory: String
    package let fileName: String
    package var path: String { self.directory + "/" + self.fileName }
    var temporaryPath: String { self.path + ".tmp" }

    /// Creates the directory (0700) when missing and refuses one that cannot be trusted
    /// (`StateDirectory.verify`).
    package init(directory: String, fileName: String = "adapters.table") throws(StateStoreError) {
        self.directory = directory
        self.fileName = fileName
        try StateDirectory.prepare(directory)
    }

    /// The stored table, or an empty one when there is no state file yet.
    package func load() throws(StateStoreError) -> AdapterTable {
        try self.loadWithFormat().table
    }

    /// The stored table and its format (nil when there is no file: an empty table).
    /// An empty, truncated, oversized, foreign or inconsistent file throws `.corrupt`.
    package func loadWithFormat() throws(StateStoreError) -> (table: AdapterTable, format: TableFile.Format?) {
        // O_NONBLOCK: a FIFO planted as the table must not block the open (it is then refused).
        let fd = open(self.path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
        if fd < 0 {
            if errno == ENOENT { return (AdapterTable(), nil) }
            if errno == ELOOP { throw .corrupt(path: self.path, reason: "it is a symlink") }
            throw .io(path: self.path, call: "open", errno: errno)
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .io(path: self.path, call: "fstat", errno: errno) }
        guard info.st_mode & S_IFMT == S_IFREG else { throw .corrupt(path: self.path, reason: "it is not a regular file") }
        guard Int(info.st_size) <= TableFile.maximumSize else {
            throw .corrupt(
                path: self.path, reason: TableFileError.tooLarge(bytes: Int(info.st_size), maximum: TableFile.maximumSize).description)
        }
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
            // The file grew after fstat: still never read more than the limit (plus one byte to tell).
            if bytes.count > TableFile.maximumSize {
                throw .corrupt(
                    path: self.path, reason: TableFileError.tooLarge(bytes: bytes.count, maximum: TableFile.maximumSize).description)
            }
        }
        do {
            let decoded = try TableFile.decode(bytes)
            return (decoded.table, decoded.format)
        } catch {
            throw .corrupt(path: self.path, reason: error.description)
        }
    }

    /// Durably replaces the stored table (in the current format).
    package func save(_ table: AdapterTable) throws(StateStoreError) {
        let bytes = TableFile.encode(table)
        guard bytes.count <= TableFile.maximumSize else {
            throw .corrupt(
                path: self.path, reason: "the table to write is \(bytes.count) bytes; the limit is \(TableFile.maximumSize) bytes")
        }
        let temporary = self.temporaryPath
        // A stale temp file (a crash mid-save), or anything planted under its name: unlink
        // removes the name itself, never what a symlink points to.
        if unlink(temporary) != 0 && errno != ENOENT { throw .io(path: temporary, call: "unlink", errno: errno) }
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .io(path: temporary, call: "open", errno: errno) }
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if written < 0 {
                if errno == EINTR { continue }
                let code = errno
                close(fd)
                unlink(temporary)
                throw .io(path: temporary, call: "write", errno: code)
            }
            offset += written
        }
        guard fsync(fd) == 0 else {
            let code = errno
            close(fd)
            unlink(temporary)
            throw .io(path: temporary, call: "fsync", errno: code)
        }
        close(fd)
        guard rename(temporary, self.path) == 0 else { throw .io(path: self.path, call: "rename", errno: errno) }
        let directoryFD = open(self.directory, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if directoryFD >= 0 {
            fsync(directoryFD)
            close(directoryFD)
        }
    }
}
