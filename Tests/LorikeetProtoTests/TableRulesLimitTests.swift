import LorikeetProto
import Testing

/// The supervisor's inner re-check of what the HTTP edge already refuses: record text
/// rules and the adapter count (`--max-adapters`).
@Suite("Table rules: limits on committed records")
struct TableRulesLimitTests {
    static let table = AdapterTable(
        version: 2, adapters: [AdapterRecord(name: "a", intID: 1, path: "/a"), AdapterRecord(name: "b", intID: 2, path: "/b")],
        nextIntID: 3)

    static let badRecords: [(AdapterRecord, String)] = [
        (AdapterRecord(name: String(repeating: "n", count: Limits.adapterNameBytes + 1), intID: 3, path: "/x"), "lora_name"),
        (AdapterRecord(name: "nul\u{0}/../x", intID: 3, path: "/x"), "lora_name"),
        (AdapterRecord(name: "line\nbreak", intID: 3, path: "/x"), "lora_name"),
        (AdapterRecord(name: "bidi\u{202E}txt", intID: 3, path: "/x"), "lora_name"),
        (AdapterRecord(name: "x", intID: 3, path: "/" + String(repeating: "p", count: Limits.adapterPathBytes)), "lora_path"),
        (AdapterRecord(name: "x", intID: 3, path: "/dir\u{0}/../etc"), "lora_path"),
        (
            AdapterRecord(name: "x", intID: 3, path: "/x", baseModel: String(repeating: "m", count: Limits.baseModelNameBytes + 1)),
            "base_model_name"
        ),
    ]

    @Test(
        "a record over a byte limit or with control/bidi characters is refused (INVALID_ARGUMENT, param set)",
        arguments: Self.badRecords.indices)
    func badRecord(_ index: Int) {
        let (record, param) = Self.badRecords[index]
        guard case .failure(let status) = TableRules.apply(TableChange(upserts: [record]), to: Self.table) else {
            Issue.record("accepted \(param)")
            return
        }
        #expect(status.code == .invalidArgument && status.param == param, "\(status)")
        #expect(status.message.utf8.count < 200, "the refusal repeats the value: \(status.message.utf8.count) bytes")
    }

    @Test("removing a name over the limit is refused before anything else")
    func badRemoval() {
        guard case .failure(let status) = TableRules.apply(TableChange(removes: [String(repeating: "r", count: 3_000_000)]), to: Self.table)
        else {
            Issue.record("accepted")
            return
        }
        #expect(status.code == .invalidArgument && status.message.utf8.count < 200)
    }

    @Test("--max-adapters: growth beyond it is refused; reloads and removals of a full table still work")
    func maxAdapters() throws {
        let add = TableChange(upserts: [AdapterRecord(name: "c", intID: 3, path: "/c")])
        guard case .failure(let full) = TableRules.apply(add, to: Self.table, maxAdapters: 2) else {
            Issue.record("a third adapter was accepted with --max-adapters 2")
            return
        }
        #expect(full.code == .failedPrecondition && full.message.contains("--max-adapters is 2"))
        #expect(try TableRules.apply(add, to: Self.table, maxAdapters: 3).get().adapters.count == 3)
        // Over the limit already (the operator lowered it): reload and unload still pass.
        let reload = TableChange(upserts: [AdapterRecord(name: "a", intID: 1, path: "/a2")])
        #expect(try TableRules.apply(reload, to: Self.table, maxAdapters: 1).get().adapters.count == 2)
        #expect(try TableRules.apply(TableChange(removes: ["a"]), to: Self.table, maxAdapters: 1).get().adapters.count == 1)
        // Swap (remove one, add one) at the limit keeps the count: accepted.
        let swap = TableChange(upserts: [AdapterRecord(name: "c", intID: 3, path: "/c")], removes: ["b"])
        #expect(try TableRules.apply(swap, to: Self.table, maxAdapters: 2).get().adapters.map(\.name) == ["a", "c"])
    }

    @Test("the limits are consistent: the largest legal table fits a frame")
    func consistent() {
        #expect(Limits.inconsistency() == nil)
        var adapters: [AdapterRecord] = []
        for index in 0..<Limits.maxAdaptersCeiling {
            let suffix = String(index)
            adapters.append(
                AdapterRecord(
                    name: String(repeating: "n", count: Limits.adapterNameBytes - suffix.count) + suffix, intID: UInt64.max - UInt64(index),
                    path: "/" + String(repeating: "p", count: Limits.adapterPathBytes - 1),
                    baseModel: String(repeating: "m", count: Limits.baseModelNameBytes),
                    loadInplace: true, pinned: true, loadedAtUnixMs: Int64.min))
        }
        let table = AdapterTable(version: UInt64.max, adapters: adapters, nextIntID: UInt64.max)
        let file = TableFile.encode(table)
        #expect(file.count <= TableFile.maximumSize, "\(file.count) > \(TableFile.maximumSize)")
        #expect(file.count <= Limits.channelFrameBytes)
    }
}
