import Foundation
import LorikeetProto
import LorikeetSupervisor
import LorikeetTestSupport
import Testing

@Suite("Committed table: state file and table rules", .ownThreads)
struct StateStoreTests {
    static func temporaryDirectory() -> String {
        let path = NSTemporaryDirectory() + "lk-state-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        return path
    }

    @Test("a saved table loads back identical; a fresh directory loads an empty table")
    func roundTrip() throws {
        let directory = Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try StateStore(directory: directory)
        #expect(try store.load() == AdapterTable())
        let table = AdapterTable(
            version: 5, adapters: [AdapterRecord(name: "a", intID: 1, path: "/x/a"), AdapterRecord(name: "b", intID: 3, path: "/x/b")],
            nextIntID: 4)
        try store.save(table)
        #expect(try StateStore(directory: directory).load() == table)
        #expect(!FileManager.default.fileExists(atPath: store.path + ".tmp"))
        let mode = try FileManager.default.attributesOfItem(atPath: store.path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }

    @Test(
        "a corrupt state file refuses to start with a message saying what to do",
        arguments: [
            [0xFF, 0xFF, 0xFF] as [UInt8],
            // Two adapters with the same id.
            AdapterTable(
                version: 1, adapters: [AdapterRecord(name: "a", intID: 1, path: "/a"), AdapterRecord(name: "b", intID: 1, path: "/b")],
                nextIntID: 2
            ).serializedBytes(),
            // An id at or above the next id (would be reused).
            AdapterTable(version: 1, adapters: [AdapterRecord(name: "a", intID: 5, path: "/a")], nextIntID: 3).serializedBytes(),
        ]
    )
    func corrupt(_ bytes: [UInt8]) throws {
        let directory = Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try StateStore(directory: directory)
        #expect(FileManager.default.createFile(atPath: store.path, contents: Data(bytes)))
        #expect {
            try store.load()
        } throws: { error in
            "\(error)".contains("is corrupt") && "\(error)".contains("move it aside")
        }
    }

    @Test("ids are never reused; reloads keep their id; removal of an unknown name is refused")
    func rules() throws {
        let table = AdapterTable(version: 3, adapters: [AdapterRecord(name: "a", intID: 1, path: "/a")], nextIntID: 4)
        // A new adapter must get an id >= next id.
        guard
            case .failure(let reused) = TableRules.apply(TableChange(upserts: [AdapterRecord(name: "b", intID: 2, path: "/b")]), to: table)
        else {
            Issue.record("reused id accepted")
            return
        }
        #expect(reused.code == .failedPrecondition)
        let added = try TableRules.apply(TableChange(upserts: [AdapterRecord(name: "b", intID: 4, path: "/b")]), to: table).get()
        #expect(added.version == 4 && added.nextIntID == 5 && added.adapters.map(\.name) == ["a", "b"])
        // Reload in place keeps the id; a different id is refused.
        #expect(
            try TableRules.apply(TableChange(upserts: [AdapterRecord(name: "a", intID: 1, path: "/a2")]), to: table).get().adapters[0].path
                == "/a2")
        guard case .failure = TableRules.apply(TableChange(upserts: [AdapterRecord(name: "a", intID: 9, path: "/a")]), to: table) else {
            Issue.record("id change accepted")
            return
        }
        // Removing then re-adding a name gets a new id, never the old one.
        let removed = try TableRules.apply(TableChange(removes: ["a"]), to: table).get()
        #expect(removed.adapters.isEmpty && removed.nextIntID == 4)
        guard case .failure = TableRules.apply(TableChange(upserts: [AdapterRecord(name: "a", intID: 1, path: "/a")]), to: removed) else {
            Issue.record("old id reused after removal")
            return
        }
        guard case .failure(let missing) = TableRules.apply(TableChange(removes: ["zzz"]), to: table) else {
            Issue.record("unknown removal accepted")
            return
        }
        #expect(missing.code == .notFound)
    }
}
