import Glibc
import Logging

/// systemd's `sd_notify` protocol, spoken directly (no libsystemd): one datagram per
/// message to the Unix socket named by `NOTIFY_SOCKET` (a path, or `@name` for the
/// abstract namespace), each a newline-separated list of `KEY=VALUE` assignments.
///
/// The supervisor sends `READY=1` once every worker slot is ready the first time,
/// `STATUS=...` when the summary changes, `STOPPING=1` when it starts to stop,
/// and `WATCHDOG=1` every half `WATCHDOG_USEC` when systemd's watchdog is on.
final class SystemdNotifier {
    private let fd: Int32
    private var address = sockaddr_un()
    private let addressLength: socklen_t
    private let logger: Logger
    /// systemd's `WATCHDOG_USEC` in ms (0 = no watchdog).
    let watchdogIntervalMs: UInt64
    private var lastStatus = ""

    /// Nil when `NOTIFY_SOCKET` is unset, empty or unusable.
    init?(environment: [String: String], logger: Logger) {
        guard let path = environment["NOTIFY_SOCKET"], !path.isEmpty else { return nil }
        var bytes = Array(path.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        guard bytes.first == UInt8(ascii: "/") || bytes.first == 0,
            bytes.count < MemoryLayout.size(ofValue: self.address.sun_path)
        else {
            logger.warning("NOTIFY_SOCKET is not a Unix socket path; not notifying systemd", metadata: ["path": "\(path)"])
            return nil
        }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else {
            logger.warning("cannot create the sd_notify socket", metadata: ["errno": "\(errno)"])
            return nil
        }
        self.fd = fd
        self.logger = logger
        self.address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &self.address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        self.addressLength = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        let usec = environment["WATCHDOG_USEC"].flatMap(UInt64.init) ?? 0
        // WATCHDOG_PID, when set, names the process the watchdog is meant for.
        let forUs = environment["WATCHDOG_PID"].flatMap(Int32.init).map { $0 == getpid() } ?? true
        self.watchdogIntervalMs = forUs ? usec / 2000 : 0
    }

    deinit { close(self.fd) }

    /// Messages systemd has not taken yet (its socket's queue was full), oldest first.
    private var pending: [[UInt8]] = []
    /// At most this many messages wait; beyond it the oldest `STATUS=` goes first.
    private static let pendingLimit = 16
    /// Whether the "systemd is not reading" warning was logged for the current backlog.
    private var warnedBacklog = false

    /// Sends one message (`KEY=VALUE` lines); never blocks the supervisor's loop, never fatal.
    ///
    /// The socket is written with `MSG_DONTWAIT`: a reader that stops reading (a stuck
    /// systemd, a test's listener) fills the datagram queue (`net.unix.max_dgram_qlen`, 10
    /// by default), and a blocking `sendto` would then freeze the whole supervisor. A
    /// `WATCHDOG=1` that does not fit is dropped (the next one says the same); any other
    /// message waits in order and goes out at the next `flush()` (every heartbeat).
    func send(_ assignments: [String], droppable: Bool = false) {
        let message = Array(assignments.joined(separator: "\n").utf8)
        self.flush()
        if self.pending.isEmpty, self.transmit(message) { return }
        guard !droppable else { return }
        if self.pending.count >= Self.pendingLimit,
            let oldestStatus = self.pending.firstIndex(where: { $0.starts(with: Array("STATUS=".utf8)) })
        {
            self.pending.remove(at: oldestStatus)
        }
        if self.pending.count < Self.pendingLimit { self.pending.append(message) }
    }

    /// Sends what waits, in order, until systemd's queue is full again.
    func flush() {
        while let next = self.pending.first, self.transmit(next) { self.pending.removeFirst() }
    }

    /// One datagram without blocking: true when it was sent or can never be (dropped),
    /// false when systemd's queue is full and it should be tried again.
    private func transmit(_ message: [UInt8]) -> Bool {
        let sent = message.withUnsafeBytes { bytes in
            withUnsafePointer(to: &self.address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(self.fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT), $0, self.addressLength)
                }
            }
        }
        if sent >= 0 {
            if self.warnedBacklog {
                self.warnedBacklog = false
                self.logger.info("systemd reads the notify socket again")
            }
            return true
        }
        let error = errno
        guard error == EAGAIN || error == EWOULDBLOCK else {
            self.logger.debug("sd_notify failed", metadata: ["errno": "\(error)"])
            return true
        }
        if !self.warnedBacklog {
            self.warnedBacklog = true
            self.logger.warning("systemd is not reading NOTIFY_SOCKET (its queue is full); notifications wait, watchdog pings are skipped")
        }
        return false
    }

    /// Sends `STATUS=` only when the text changed.
    func status(_ text: String) {
        guard text != self.lastStatus else { return }
        self.lastStatus = text
        self.send(["STATUS=" + text])
    }
}
