import LorikeetGGUF
import Testing

@Suite("Dequantization of hand-built ggml blocks")
struct DequantizeTests {
    private func half(_ bits: UInt16) -> [UInt8] { [UInt8(bits & 0xFF), UInt8(bits >> 8)] }

    private func run(_ bytes: [UInt8], _ type: GGMLType, _ count: Int) throws -> [Float] {
        try bytes.withUnsafeBytes { raw in try GGUFDequantizer.dequantize(raw, type: type, count: count) }
    }

    @Test("Q4_1: fp16 d, fp16 m, low nibbles are elements 0..15, high nibbles 16..31")
    func q4_1() throws {
        // d = 0.5, m = -1; byte j holds j in the low nibble and 15 - j in the high nibble.
        var block = half(0x3800) + half(0xBC00)
        for j in 0..<16 { block.append(UInt8(j) | UInt8(15 - j) << 4) }
        // A second block: d = 2, m = 0.25, all nibbles 0xF.
        block += half(0x4000) + half(0x3400) + [UInt8](repeating: 0xFF, count: 16)
        let values = try run(block, .q4_1, 64)
        let low: [Float] = (0..<16).map { Float($0) * 0.5 - 1 }
        let high: [Float] = (0..<16).map { Float(15 - $0) * 0.5 - 1 }
        let second = [Float](repeating: 15 * 2 + 0.25, count: 32)
        #expect(values == low + high + second)
    }

    @Test("Q8_0: fp16 d then 32 signed bytes")
    func q8_0() throws {
        let qs: [Int8] = (0..<32).map { Int8($0 * 8 - 128) }
        let block = half(0x3400) + qs.map { UInt8(bitPattern: $0) }
        let values = try run(block, .q8_0, 32)
        #expect(values == qs.map { Float($0) * 0.25 })
        #expect(values.first == -32)
    }

    @Test("Q4_0: fp16 d, nibbles offset by 8")
    func q4_0() throws {
        var block = half(0x4000)
        for j in 0..<16 { block.append(UInt8(j) | UInt8(15 - j) << 4) }
        let values = try run(block, .q4_0, 32)
        let low: [Float] = (0..<16).map { Float($0 - 8) * 2 }
        let high: [Float] = (0..<16).map { Float(7 - $0) * 2 }
        #expect(values == low + high)
    }

    @Test("F16, BF16 and F32 element by element")
    func plain() throws {
        let f16: [(UInt16, Float)] = [
            (0x3C00, 1), (0xC000, -2), (0x7BFF, 65504), (0x0001, 0x1p-24), (0x03FF, 1023 * 0x1p-24),
            (0x0400, 0x1p-14), (0x7C00, .infinity), (0xFC00, -.infinity), (0x0000, 0), (0x3555, 0.333251953125),
        ]
        let values = try run(f16.flatMap { half($0.0) }, .f16, f16.count)
        #expect(values == f16.map(\.1))
        let negativeZero = try run(half(0x8000), .f16, 1)[0]
        #expect(negativeZero == 0 && negativeZero.sign == .minus)
        #expect(try run(half(0x7E00), .f16, 1)[0].isNaN)
        #expect(try run(half(0x3F80) + half(0xC040), .bf16, 2) == [1, -3])
        let f32: [Float] = [1.25, -7, .greatestFiniteMagnitude]
        #expect(try run(f32.flatMap { v in withUnsafeBytes(of: v.bitPattern.littleEndian, Array.init) }, .f32, 3) == f32)
    }

    #if !(os(macOS) && arch(x86_64))
        @Test("halfToFloat matches Float16 on all 65536 bit patterns")
        func halfExhaustive() {
            var mismatches = 0
            for bits in 0...UInt16.max {
                let mine = halfToFloat(bits)
                let reference = Float(Float16(bitPattern: bits))
                if !(mine.bitPattern == reference.bitPattern || (mine.isNaN && reference.isNaN)) { mismatches += 1 }
            }
            #expect(mismatches == 0)
        }
    #endif

    @Test("wrong buffer size and unsupported types are typed errors")
    func errors() {
        #expect(throws: GGUFModelError.sizeMismatch(type: .q4_1, elements: 32, bytes: 19)) {
            try run([UInt8](repeating: 0, count: 19), .q4_1, 32)
        }
        #expect(throws: GGUFModelError.sizeMismatch(type: .q8_0, elements: 31, bytes: 34)) {
            try run([UInt8](repeating: 0, count: 34), .q8_0, 31)
        }
        #expect(throws: GGUFModelError.self) { try run([UInt8](repeating: 0, count: 144), .q4_K, 256) }
    }
}
