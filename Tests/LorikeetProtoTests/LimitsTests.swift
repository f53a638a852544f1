import LorikeetProto
import Testing

@Suite("Limits design")
struct LimitsTests {
    @Test("the limits are consistent: the largest legal request and table fit a frame")
    func consistent() {
        #expect(Limits.inconsistency() == nil)
        #expect(Limits.maxAdaptersCeiling * Limits.adapterRecordBytes < Limits.channelFrameBytes)
    }

    @Test("the largest legal table really encodes within the table-file and frame limits")
    func largestTableFits() {
        let name = String(repeating: "n", count: Limits.adapterNameBytes)
        let path = "/" + String(repeating: "p", count: Limits.adapterPathBytes - 1)
        let base = String(repeating: "b", count: Limits.baseModelNameBytes)
        var table = AdapterTable()
        table.version = UInt64.max
        table.nextIntID = UInt64.max
        for index in 0..<Limits.maxAdaptersCeiling {
            table.adapters.append(
                AdapterRecord(
                    name: String(name.dropLast(6)) + "\(100_000 + index)", intID: UInt64.max - UInt64(index), path: path,
                    baseModel: base, loadInplace: true, pinned: true, loadedAtUnixMs: Int64.max))
        }
        let size = table.serializedBytes().count
        #expect(size <= Limits.tableFileBytes)
        #expect(size + 1024 <= Limits.channelFrameBytes)
    }

    @Test(
        "text rules refuse control, NUL and bidi characters and oversize values, naming the field, never echoing the value",
        arguments: [
            ("a\u{0}b", "U+0000"), ("line\nbreak", "U+000A"), ("x\u{7F}", "U+007F"), ("x\u{85}", "U+0085"),
            ("bidi\u{202E}", "U+202E"), ("iso\u{2066}", "U+2066"), ("sep\u{2028}", "U+2028"), ("mark\u{200F}", "U+200F"),
        ])
    func forbiddenCharacters(_ value: String, _ code: String) {
        let problem = TextRules.problem(value, field: "lora_name", maxBytes: 64)
        #expect(problem?.contains(code) == true, "\(String(describing: problem))")
        #expect(problem?.contains("'lora_name'") == true)
    }

    @Test("text rules: byte limits count UTF-8 bytes; ordinary names pass")
    func sizes() {
        #expect(TextRules.problem("ok-name_1.v2/org", field: "f", maxBytes: 16) == nil)
        #expect(TextRules.problem("日本語", field: "f", maxBytes: 9) == nil)
        #expect(TextRules.problem("日本語", field: "f", maxBytes: 8)?.contains("9 bytes") == true)
        #expect(TextRules.problem("", field: "f", maxBytes: 8) != nil)
        #expect(TextRules.problem("", field: "f", maxBytes: 8, allowEmpty: true) == nil)
        let huge = String(repeating: "z", count: 1_000_000)
        #expect((TextRules.problem(huge, field: "f", maxBytes: 8)?.utf8.count ?? 0) < 100)
    }

    @Test("echoed cuts long input at a character boundary and says how long it was")
    func echoed() {
        #expect("short".echoed() == "short")
        let cut = String(repeating: "é", count: 1000).echoed(limit: 11)
        #expect(cut == String(repeating: "é", count: 5) + "…(2000 bytes)")
        #expect(String(repeating: "x", count: 10_000_000).echoed().utf8.count < Limits.echoBytes + 32)
    }
}
