import Foundation
import LorikeetProto
import Testing

/// The state directory and the files and sockets in it, on the real file system: what
/// is trusted, what is refused, and that nothing is ever followed through a symlink.
@Suite("State directory, state file and socket files on disk")
struct StateDirectoryTests {
    /// A fresh path under the temporary directory (not created).
    static func path(_ label: String) -> String {
        NSTemporaryDirectory() + "lk-\(label)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    }

    static func reason(_ body: () throws -> Void) -> String? {
        do {
            try body()
            return nil
        } catch {
            return "\(error)"
        }
    }

    static func mode(_ path: String) -> mode_t {
        var info = stat()
        return lstat(path, &info) == 0 ? info.st_mode & 0o7777 : 0
    }

    @Test("a missing directory is created 0700; an existing 0700 or 0755 one is accepted")
    func created() throws {
        let directory = Self.path("created")
        defer { rmdir(directory) }
        _ = try StateStore(directory: directory)
        #expect(Self.mode(directory) == 0o700)
        chmod(directory, 0o755)
        _ = try StateStore(directory: directory)
    }

    @Test(
        "a group- or world-writable directory is refused with the chmod that fixes it",
        arguments: [0o777, 0o770, 0o720, 0o702, 0o1777] as [mode_t])
    func writableByOthers(_ mode: mode_t) throws {
        let directory = Self.path("mode")
        #expect(mkdir(directory, 0o700) == 0)
        defer { rmdir(directory) }
        #expect(chmod(directory, mode) == 0)
        let reason = Self.reason { _ = try StateStore(directory: directory) }
        #expect(reason?.contains("writable by group or others") == true, "\(String(describing: reason))")
        #expect(reason?.contains("chmod 700 \(directory)") == true)
        #expect(reason?.contains("\n") == false)
        // Nothing was created in it.
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).isEmpty)
    }

    @Test("a symlink to a good directory is refused (it is not followed)")
    func symlinked() throws {
        let target = Self.path("target")
        let link = Self.path("link")
        #expect(mkdir(target, 0o700) == 0)
        #expect(symlink(target, link) == 0)
        defer {
            unlink(link)
            rmdir(target)
        }
        let reason = Self.reason { _ = try StateStore(directory: link) }
        #expect(reason?.contains("is a symlink") == true, "\(String(describing: reason))")
    }

    @Test("a file where the directory should be is refused")
    func notADirectory() throws {
        let file = Self.path("file")
        #expect(FileManager.default.createFile(atPath: file, contents: Data("x".utf8)))
        defer { unlink(file) }
        let reason = Self.reason { _ = try StateStore(directory: file) }
        #expect(reason?.contains("is not a directory") == true, "\(String(describing: reason))")
    }

    @Test("a directory owned by another uid is refused (needs root to set up; skipped otherwise)")
    func foreignOwner() throws {
        guard geteuid() == 0 else { return }
        let directory = Self.path("owner")
        #expect(mkdir(directory, 0o700) == 0)
        defer { rmdir(directory) }
        #expect(chown(directory, 54_321, 54_321) == 0)
        let reason = Self.reason { _ = try StateStore(directory: directory) }
        #expect(reason?.contains("owned by uid 54321") == true, "\(String(describing: reason))")
    }

    @Test("the table file is never read through a symlink, nor from a FIFO (which would block)")
    func tableNotFollowed() throws {
        let directory = Self.path("table")
        let store = try StateStore(directory: directory)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let elsewhere = Self.path("elsewhere")
        try Data(TableFile.encode(AdapterTable(version: 1, adapters: [], nextIntID: 1))).write(to: URL(fileURLWithPath: elsewhere))
        defer { unlink(elsewhere) }
        #expect(symlink(elsewhere, store.path) == 0)
        #expect(Self.reason { _ = try store.load() }?.contains("symlink") == true)
        unlink(store.path)
        #expect(mkfifo(store.path, 0o600) == 0)
        #expect(Self.reason { _ = try store.load() }?.contains("not a regular file") == true)
        unlink(store.path)
        #expect(try store.loadWithFormat().format == nil)
    }

    @Test("save replaces a stale temp file (even a symlink) without writing through it")
    func staleTemporary() throws {
        let directory = Self.path("temp")
        let store = try StateStore(directory: directory)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let victim = Self.path("victim")
        try Data("precious".utf8).write(to: URL(fileURLWithPath: victim))
        defer { unlink(victim) }
        #expect(symlink(victim, store.path + ".tmp") == 0)
        let table = AdapterTable(version: 2, adapters: [AdapterRecord(name: "a", intID: 1, path: "/a")], nextIntID: 2)
        try store.save(table)
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "precious")
        #expect(try store.load() == table)
        #expect(Self.mode(store.path) == 0o600)
        #expect(!FileManager.default.fileExists(atPath: store.path + ".tmp"))
    }

    @Test("a legacy table loads, and the next save rewrites it with the header")
    func migration() throws {
        let directory = Self.path("legacy")
        let store = try StateStore(directory: directory)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let table = AdapterTable(version: 3, adapters: [AdapterRecord(name: "old", intID: 2, path: "/old")], nextIntID: 3)
        try Data(table.serializedBytes()).write(to: URL(fileURLWithPath: store.path))
        let loaded = try store.loadWithFormat()
        #expect(loaded.table == table && loaded.format == .legacy)
        try store.save(loaded.table)
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: store.path)))
        #expect(bytes.starts(with: Array("LKTB".utf8)))
        #expect(try store.loadWithFormat().format == .current)
        #expect(try store.load() == table)
    }

    @Test("a 0-byte table file refuses to load (it is not an empty table)")
    func zeroBytes() throws {
        let directory = Self.path("zero")
        let store = try StateStore(directory: directory)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        #expect(FileManager.default.createFile(atPath: store.path, contents: Data()))
        let reason = Self.reason { _ = try store.load() }
        #expect(reason?.contains("empty (0 bytes)") == true && reason?.contains("move it aside") == true, "\(String(describing: reason))")
    }

    // MARK: - Sockets

    @Test("listen replaces a stale socket of ours, and the new socket is 0600 from creation")
    func staleSocket() throws {
        let path = Self.path("sock")
        let first = try UnixSocket.listen(path: path)
        close(first)
        let second = try UnixSocket.listen(path: path, mode: 0o600)
        defer {
            close(second)
            unlink(path)
        }
        #expect(Self.mode(path) == 0o600)
        let client = try UnixSocket.connect(path: path)
        close(client)
    }

    @Test("listen refuses to remove a regular file or a symlink at the socket path, and leaves both intact")
    func socketPathOccupied() throws {
        let file = Self.path("sockfile")
        try Data("keep".utf8).write(to: URL(fileURLWithPath: file))
        defer { unlink(file) }
        #expect(Self.reason { _ = try UnixSocket.listen(path: file) }?.contains("is not a socket") == true)
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "keep")

        let link = Self.path("socklink")
        #expect(symlink(file, link) == 0)
        defer { unlink(link) }
        #expect(Self.reason { _ = try UnixSocket.listen(path: link) }?.contains("is not a socket") == true)
        var info = stat()
        #expect(lstat(link, &info) == 0 && info.st_mode & S_IFMT == S_IFLNK)
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "keep")
    }

    @Test("withUmask restores the process umask and keeps the body's errno")
    func umaskRestored() {
        let before = umask(0o022)
        umask(before)
        let result = UnixSocket.withUmask(for: 0o600) { () -> Int32 in
            let current = umask(0o177)
            errno = EADDRINUSE
            return Int32(current)
        }
        #expect(result == 0o177)
        #expect(errno == EADDRINUSE)
        let after = umask(before)
        umask(after)
        #expect(after == before)
    }
}
