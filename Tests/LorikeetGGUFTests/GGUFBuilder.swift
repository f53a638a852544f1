import LorikeetGGUF

/// Writes GGUF bytes field by field, so tests can craft valid and hostile files.
struct GGUFBuilder {
    /// One tensor info as written, including deliberately wrong values.
    struct Tensor {
        var name: String
        var dims: [UInt64]
        var type: UInt32
        var offset: UInt64
    }

    var magic: [UInt8] = Array("GGUF".utf8)
    var version: UInt32 = 3
    var kvs: [(String, GGUFValue)] = []
    var tensors: [Tensor] = []
    /// Overrides the written tensor count (to lie about it).
    var tensorCountOverride: UInt64?
    /// Overrides the written metadata count.
    var kvCountOverride: UInt64?
    var alignment = 32
    var data: [UInt8] = []

    /// The encoded file: header, metadata, tensor infos, padding, data.
    func bytes() -> [UInt8] {
        var out = self.magic
        Self.put(&out, self.version)
        Self.put(&out, self.tensorCountOverride ?? UInt64(self.tensors.count))
        Self.put(&out, self.kvCountOverride ?? UInt64(self.kvs.count))
        for (key, value) in self.kvs {
            Self.putString(&out, key)
            Self.put(&out, value.type.rawValue)
            Self.putValue(&out, value)
        }
        for t in self.tensors {
            Self.putString(&out, t.name)
            Self.put(&out, UInt32(t.dims.count))
            for d in t.dims { Self.put(&out, d) }
            Self.put(&out, t.type)
            Self.put(&out, t.offset)
        }
        while out.count % self.alignment != 0 { out.append(0) }
        return out + self.data
    }

    static func put<T: FixedWidthInteger>(_ out: inout [UInt8], _ v: T) {
        withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) }
    }

    static func putString(_ out: inout [UInt8], _ s: String) {
        Self.put(&out, UInt64(s.utf8.count))
        out.append(contentsOf: s.utf8)
    }

    static func putValue(_ out: inout [UInt8], _ value: GGUFValue) {
        switch value {
        case .uint8(let v): Self.put(&out, v)
        case .int8(let v): Self.put(&out, v)
        case .uint16(let v): Self.put(&out, v)
        case .int16(let v): Self.put(&out, v)
        case .uint32(let v): Self.put(&out, v)
        case .int32(let v): Self.put(&out, v)
        case .uint64(let v): Self.put(&out, v)
        case .int64(let v): Self.put(&out, v)
        case .float32(let v): Self.put(&out, v.bitPattern)
        case .float64(let v): Self.put(&out, v.bitPattern)
        case .bool(let v): out.append(v ? 1 : 0)
        case .string(let s): Self.putString(&out, s)
        case .array(let elementType, let values):
            Self.put(&out, elementType.rawValue)
            Self.put(&out, UInt64(values.count))
            for v in values { Self.putValue(&out, v) }
        }
    }

    /// A small valid file: every value type, nested arrays, an F32 and a Q8_0 tensor.
    static func sample() -> GGUFBuilder {
        var b = GGUFBuilder()
        b.kvs = [
            ("general.architecture", .string("llama")),
            ("u8", .uint8(200)), ("i8", .int8(-5)), ("u16", .uint16(65000)), ("i16", .int16(-30000)),
            ("u32", .uint32(4_000_000_000)), ("i32", .int32(-2_000_000_000)),
            ("u64", .uint64(UInt64.max)), ("i64", .int64(Int64.min)),
            ("f32", .float32(1.5)), ("f64", .float64(-2.25)), ("yes", .bool(true)),
            ("unicode", .string("héllo 🦜")),
            ("ints", .array(elementType: .int32, values: [.int32(1), .int32(-2), .int32(3)])),
            ("strings", .array(elementType: .string, values: [.string("a"), .string(""), .string("ccc")])),
            (
                "nested",
                .array(
                    elementType: .array,
                    values: [
                        .array(elementType: .uint8, values: [.uint8(1), .uint8(2)]),
                        .array(elementType: .string, values: [.string("x")]),
                    ])
            ),
            ("empty", .array(elementType: .float32, values: [])),
        ]
        // F32 [4] at offset 0 (16 bytes), then Q8_0 [32] at offset 32 (34 bytes).
        b.tensors = [
            Tensor(name: "vec", dims: [4], type: GGMLType.f32.rawValue, offset: 0),
            Tensor(name: "q8", dims: [32], type: GGMLType.q8_0.rawValue, offset: 32),
        ]
        var data: [UInt8] = []
        for f: Float in [1, -2, 0.5, 3] { Self.put(&data, f.bitPattern) }
        data += [UInt8](repeating: 0, count: 16)
        Self.put(&data, UInt16(0x3C00))  // d = 1.0
        for i in 0..<32 { data.append(UInt8(bitPattern: Int8(i - 16))) }
        b.data = data
        return b
    }
}
