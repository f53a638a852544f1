import Foundation
import LorikeetGGUF
import Testing

@Suite("GGUF parser on crafted bytes")
struct GGUFParserTests {
    @Test("a minimal valid file parses with every value type")
    func parsesSample() throws {
        let file = try GGUFFile(bytes: Data(GGUFBuilder.sample().bytes()))
        #expect(file.version == 3)
        #expect(file.alignment == 32)
        #expect(file.metadataKeys.first == "general.architecture")
        #expect(file["u8"] == .uint8(200))
        #expect(file["i8"] == .int8(-5))
        #expect(file["u16"] == .uint16(65000))
        #expect(file["i16"] == .int16(-30000))
        #expect(file["u32"] == .uint32(4_000_000_000))
        #expect(file["i32"] == .int32(-2_000_000_000))
        #expect(file["u64"] == .uint64(.max))
        #expect(file["i64"] == .int64(.min))
        #expect(file["f32"] == .float32(1.5))
        #expect(file["f64"] == .float64(-2.25))
        #expect(file["yes"] == .bool(true))
        #expect(file["unicode"]?.stringValue == "héllo 🦜")
        #expect(file["ints"]?.arrayValue?.compactMap(\.intValue) == [1, -2, 3])
        #expect(file["strings"]?.arrayValue?.compactMap(\.stringValue) == ["a", "", "ccc"])
        #expect(file["nested"]?.arrayValue?.count == 2)
        #expect(file["nested"]?.arrayValue?[1].arrayValue == [.string("x")])
        #expect(file["empty"] == .array(elementType: .float32, values: []))
        #expect(file["u64"]?.intValue == nil, "UInt64.max does not fit in Int")
        #expect(file.tensors.map(\.name) == ["vec", "q8"])
        let vec = try #require(file.tensor(named: "vec"))
        #expect(vec.dims == [4] && vec.type == .f32 && vec.byteCount == 16)
        let q8 = try #require(file.tensor(named: "q8"))
        #expect(q8.byteCount == 34 && q8.offset == 32)
        #expect(file.dataOffset % 32 == 0)
        let values = try file.withTensorBytes(vec) { raw throws(GGUFModelError) in
            try GGUFDequantizer.dequantize(raw, type: .f32, count: 4)
        }
        #expect(values == [1, -2, 0.5, 3])
        let q = try file.withTensorBytes(q8) { raw throws(GGUFModelError) in
            try GGUFDequantizer.dequantize(raw, type: .q8_0, count: 32)
        }
        #expect(q == (0..<32).map { Float($0 - 16) })
    }

    @Test("general.alignment is honoured")
    func customAlignment() throws {
        var b = GGUFBuilder.sample()
        b.alignment = 64
        b.kvs.append(("general.alignment", .uint32(64)))
        b.tensors[1].offset = 64
        b.data = Array(b.data[0..<16]) + [UInt8](repeating: 0, count: 48) + Array(b.data[32...])
        let file = try GGUFFile(bytes: Data(b.bytes()))
        #expect(file.alignment == 64)
        #expect(file.dataOffset % 64 == 0)
    }

    @Test("every strict prefix of a valid file is rejected with a truncation error, never a crash")
    func truncatedEverywhere() throws {
        let bytes = GGUFBuilder.sample().bytes()
        #expect(throws: Never.self) { try GGUFFile(bytes: Data(bytes)) }
        var kinds: [String: Int] = [:]
        for length in 0..<bytes.count {
            let error = #expect(throws: GGUFError.self, "prefix of \(length) bytes") {
                try GGUFFile(bytes: Data(bytes[0..<length]))
            }
            switch error {
            case .truncated?: kinds["truncated", default: 0] += 1
            case .countTooLarge?: kinds["countTooLarge", default: 0] += 1
            case .stringTooLong?: kinds["stringTooLong", default: 0] += 1
            case .tensorDataOutOfBounds?: kinds["tensorDataOutOfBounds", default: 0] += 1
            case let other?: Issue.record("prefix of \(length) bytes: unexpected error \(other)")
            case nil: break
            }
        }
        #expect(kinds["truncated", default: 0] > 0)
        #expect(kinds["tensorDataOutOfBounds", default: 0] > 0)
    }

    /// One hostile file and the error it must produce.
    struct HostileCase: Sendable, CustomTestStringConvertible {
        var name: String
        var bytes: [UInt8]
        var matches: @Sendable (GGUFError) -> Bool
        var testDescription: String { self.name }
    }

    static let hostile: [HostileCase] = {
        var cases: [HostileCase] = []
        /// Starts from the sample file, applies `edit` to the builder and `patch` to the bytes.
        func add(
            _ name: String,
            _ edit: (inout GGUFBuilder) -> Void,
            patch: ((inout [UInt8]) -> Void)? = nil,
            _ matches: @escaping @Sendable (GGUFError) -> Bool
        ) {
            var b = GGUFBuilder.sample()
            edit(&b)
            var bytes = b.bytes()
            patch?(&bytes)
            cases.append(HostileCase(name: name, bytes: bytes, matches: matches))
        }
        func write<T: FixedWidthInteger>(_ v: T, at offset: Int, in bytes: inout [UInt8]) {
            withUnsafeBytes(of: v.littleEndian) { bytes.replaceSubrange(offset..<(offset + MemoryLayout<T>.size), with: $0) }
        }
        add("bad magic", { $0.magic = Array("GGML".utf8) }) { $0 == .badMagic(found: Array("GGML".utf8)) }
        add("version 2", { $0.version = 2 }) { $0 == .unsupportedVersion(2) }
        add("version 4", { $0.version = 4 }) { $0 == .unsupportedVersion(4) }
        add("huge tensor count", { $0.tensorCountOverride = .max }) {
            if case .countTooLarge("tensor count", .max, 8, _) = $0 { return true } else { return false }
        }
        add("huge metadata count", { $0.kvCountOverride = 1 << 40 }) {
            if case .countTooLarge("metadata count", 1 << 40, 16, _) = $0 { return true } else { return false }
        }
        // The first key's length is at offset 24, right after the header.
        add("huge key length", { _ in }, patch: { write(UInt64(1 << 40), at: 24, in: &$0) }) {
            if case .stringTooLong("key of metadata entry 0", 1 << 40, 24, _) = $0 { return true } else { return false }
        }
        // header 24 + key (8 + 3) + type 4 + element type 4 = 43: the array count.
        add(
            "huge array count",
            { $0.kvs = [("arr", .array(elementType: .uint32, values: [.uint32(1)]))] },
            patch: { write(UInt64(1 << 60), at: 43, in: &$0) }
        ) { if case .countTooLarge("array count of 'arr'", 1 << 60, 43, _) = $0 { return true } else { return false } }
        // 24 + key (8 + 4) + type 4 + element type 4 + count 8 = 52: the first string's length.
        add(
            "array element string too long",
            { $0.kvs = [("strs", .array(elementType: .string, values: [.string("ab")]))] },
            patch: { write(UInt64.max, at: 52, in: &$0) }
        ) { if case .stringTooLong(_, .max, 52, _) = $0 { return true } else { return false } }
        // 24 + key (8 + 1) = 33: the value type.
        add("unknown value type", { $0.kvs = [("k", .uint8(1))] }, patch: { write(UInt32(99), at: 33, in: &$0) }) {
            $0 == .invalidValueType(key: "k", rawType: 99, offset: 33)
        }
        add("bool byte 7", { $0.kvs = [("b", .uint8(7))] }, patch: { write(GGUFValueType.bool.rawValue, at: 33, in: &$0) }) {
            if case .wrongValueType("b", _, _) = $0 { return true } else { return false }
        }
        add(
            "arrays nested too deep",
            { b in
                var v = GGUFValue.array(elementType: .uint8, values: [.uint8(1)])
                for _ in 0..<10 { v = .array(elementType: .array, values: [v]) }
                b.kvs = [("deep", v)]
            }
        ) { if case .arrayNestingTooDeep("deep", _, 8) = $0 { return true } else { return false } }
        add("duplicate key", { $0.kvs += [("u8", .uint8(1))] }) { $0 == .duplicateKey("u8") }
        add("alignment 3", { $0.kvs.append(("general.alignment", .uint32(3))) }) { $0 == .invalidAlignment(3) }
        add("alignment 0", { $0.kvs.append(("general.alignment", .uint32(0))) }) { $0 == .invalidAlignment(0) }
        add("alignment as string", { $0.kvs.append(("general.alignment", .string("32"))) }) {
            $0 == .wrongValueType(key: "general.alignment", expected: "uint32", found: "string")
        }
        add("tensor offset beyond data", { $0.tensors[1].offset = 4096 }) {
            $0 == .tensorDataOutOfBounds(tensor: "q8", offset: 4096, byteCount: 34, dataSectionSize: 66)
        }
        add("tensor offset near UInt64.max", { $0.tensors[1].offset = UInt64.max - 31 }) {
            if case .tensorDataOutOfBounds("q8", _, 34, 66) = $0 { return true } else { return false }
        }
        add("tensor larger than data", { $0.tensors[0].dims = [1000] }) {
            $0 == .tensorDataOutOfBounds(tensor: "vec", offset: 0, byteCount: 4000, dataSectionSize: 66)
        }
        add("misaligned tensor offset", { $0.tensors[1].offset = 20 }) {
            $0 == .misalignedTensor(tensor: "q8", offset: 20, alignment: 32)
        }
        add("five dimensions", { $0.tensors[0].dims = [1, 1, 1, 1, 4] }) {
            if case .tooManyDimensions("vec", 5, _) = $0 { return true } else { return false }
        }
        add("element count overflow", { $0.tensors[0].dims = [1 << 40, 1 << 40] }) {
            $0 == .invalidDimensions(tensor: "vec", dims: [1 << 40, 1 << 40])
        }
        add("negative dimension", { $0.tensors[0].dims = [UInt64.max] }) {
            $0 == .invalidDimensions(tensor: "vec", dims: [.max])
        }
        add("unknown tensor type", { $0.tensors[0].type = 77 }) { $0 == .unknownTensorType(tensor: "vec", rawType: 77) }
        add("quantized row not a block multiple", { $0.tensors[1].dims = [33] }) {
            $0 == .shapeNotBlockAligned(tensor: "q8", innermost: 33, blockSize: 32)
        }
        add("duplicate tensor", { $0.tensors[1].name = "vec" }) { $0 == .duplicateTensor("vec") }
        return cases
    }()

    @Test("hostile files give their own clear error", arguments: Self.hostile)
    func hostileFile(_ c: HostileCase) throws {
        let error = #expect(throws: GGUFError.self) { try GGUFFile(bytes: Data(c.bytes)) }
        guard let error else { return }
        #expect(c.matches(error), "\(c.name): got \(error)")
        #expect(!error.description.isEmpty)
    }

    @Test("error messages name what went wrong and where")
    func messages() {
        let truncated = GGUFError.truncated(what: "value of 'x'", offset: 40, needed: 4, available: 1)
        #expect(truncated.description.contains("value of 'x'") && truncated.description.contains("offset 40"))
        #expect(GGUFError.badMagic(found: [1, 2, 3, 4]).description.contains("not a GGUF file"))
        #expect(GGUFError.misalignedTensor(tensor: "t", offset: 20, alignment: 32).description.contains("alignment 32"))
    }

    @Test("an unreadable path is a typed error")
    func unreadable() {
        let error = #expect(throws: GGUFError.self) {
            try GGUFFile(contentsOf: URL(fileURLWithPath: "/nonexistent/model.gguf"))
        }
        if case .unreadable(let path, _)? = error {
            #expect(path == "/nonexistent/model.gguf")
        } else {
            Issue.record("got \(String(describing: error))")
        }
    }
}
