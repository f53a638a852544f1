import Glibc
import LorikeetProto

/// One adapter change as the audit log records it: one JSON object per line in
/// `<state-dir>/audit.log`.
///
/// Fields: `time` (UTC, ms), `action` (`load` | `unload`), `name`, `id` (the
/// `lora_int_id` assigned or removed, 0 if none), `path` (canonical when the leader
/// resolved it, else as requested), `via` (`worker` or `admin`), `slot` (the worker slot
/// that received the HTTP call, -1 for admin), `caller` (the HTTP peer address, or the
/// admin peer's uid and pid), `batch` (index within a batch, absent otherwise), `code`
/// (gRPC code name, `OK` on success), `message`, `table_version` (after the change).
package struct AuditEntry: Equatable {
    var timeUnixMs: Int64
    var action: String
    var name: String
    var id: UInt64
    var path: String
    var slot: Int32
    var caller: String
    var batchIndex: Int?
    var status: Status
    var tableVersion: UInt64

    /// A path is kept whole up to `Limits.adapterPathBytes` (every valid path fits).
    static let pathEchoBytes = Limits.adapterPathBytes
    /// Status messages may quote a (truncated) client value; bounded all the same.
    static let messageEchoBytes = 1024

    /// The JSON line, without the newline. Every field a client supplied (name, path,
    /// caller, and the message, which may quote them) is cut with `String.echoed`, so a
    /// refused multi-megabyte request writes a line of a few KiB at most.
    package var json: String {
        var fields: [(String, String)] = [
            ("time", Self.quote(Self.timestamp(self.timeUnixMs))),
            ("action", Self.quote(self.action)),
            ("name", Self.quote(self.name.echoed())),
            ("id", "\(self.id)"),
            ("path", Self.quote(self.path.echoed(limit: Self.pathEchoBytes))),
            ("via", Self.quote(self.slot < 0 ? "admin" : "worker")),
            ("slot", "\(self.slot)"),
            ("caller", Self.quote(self.caller.echoed())),
        ]
        if let batchIndex { fields.append(("batch", "\(batchIndex)")) }
        fields += [
            ("code", Self.quote(self.status.code.description)),
            ("message", Self.quote(self.status.message.echoed(limit: Self.messageEchoBytes))),
            ("table_version", "\(self.tableVersion)"),
        ]
        return "{" + fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
    }

    /// RFC 3339 UTC with milliseconds, e.g. `2026-05-01T12:00:00.123Z`.
    static func timestamp(_ unixMs: Int64) -> String {
        var seconds = time_t(unixMs / 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(unixMs % 1000), 3))Z"
    }

    /// A JSON string literal (RFC 8259 escaping; control characters as \u00XX).
    static func quote(_ value: String) -> String {
        var out = "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

/// Appends audit entries to a file, one `write(2)` per line (flushed to the kernel per
/// line; not fsynced: the adapter table itself is the durable record).
///
/// Opened with `O_APPEND`, so copy-truncate rotation works; after a rename-style
/// rotation, SIGUSR1 makes the supervisor `reopen()` the path.
final class AuditLog {
    let path: String
    private var fd: Int32

    init(path: String) throws(StateStoreError) {
        self.path = path
        self.fd = try Self.open(path)
    }

    /// Opens for appending without following a symlink (`O_NOFOLLOW`), without blocking
    /// on a FIFO planted in its place (`O_NONBLOCK`), and only when it is a regular file.
    static func open(_ path: String) throws(StateStoreError) -> Int32 {
        let fd = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0o640)
        if fd < 0 {
            if errno == ELOOP { throw .corrupt(path: path, reason: "the audit log is a symlink") }
            throw .io(path: path, call: "open", errno: errno)
        }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            close(fd)
            throw .corrupt(path: path, reason: "the audit log is not a regular file")
        }
        return fd
    }

    deinit { if self.fd >= 0 { close(self.fd) } }

    /// Writes one line; returns false (with errno) when the write failed.
    @discardableResult
    func record(_ entry: AuditEntry) -> Bool {
        let bytes = Array((entry.json + "\n").utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { write(self.fd, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                return false
            }
            offset += written
        }
        return true
    }

    /// Reopens the path (after log rotation moved the file away).
    func reopen() throws(StateStoreError) {
        let fd = try Self.open(self.path)
        close(self.fd)
        self.fd = fd
    }
}
