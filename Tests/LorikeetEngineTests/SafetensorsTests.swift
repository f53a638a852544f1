import Foundation
import LorikeetTestSupport
import Testing

@testable import LorikeetEngine

/// Builds a safetensors file from a header string and raw data bytes.
func safetensorsBytes(_ header: String, data: [UInt8] = [], declaredLength: UInt64? = nil) -> [UInt8] {
    let h = Array(header.utf8)
    let len = declaredLength ?? UInt64(h.count)
    return (0..<8).map { UInt8(truncatingIfNeeded: len >> (8 * UInt64($0))) } + h + data
}

private func f32Bytes(_ values: [Float]) -> [UInt8] {
    values.flatMap { v in (0..<4).map { UInt8(truncatingIfNeeded: v.bitPattern >> (8 * UInt32($0))) } }
}

@Suite("Safetensors parser", .ownThreads)
struct SafetensorsTests {
    @Test func decodesF32F16BF16() throws {
        // F16: 1.0 = 0x3C00, -2.0 = 0xC000, 65504 = 0x7BFF, smallest subnormal 0x0001.
        // BF16: 1.0 = 0x3F80, -0.5 = 0xBF00.
        let f16: [UInt8] = [0x00, 0x3C, 0x00, 0xC0, 0xFF, 0x7B, 0x01, 0x00]
        let bf16: [UInt8] = [0x80, 0x3F, 0x00, 0xBF]
        let f32 = f32Bytes([3.5, -1.25])
        let header = """
            {"__metadata__":{"format":"pt"},
             "a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
             "b":{"dtype":"F16","shape":[2,2],"data_offsets":[8,16]},
             "c":{"dtype":"BF16","shape":[2],"data_offsets":[16,20]}}
            """
        let file = try SafetensorsFile(bytes: safetensorsBytes(header, data: f32 + f16 + bf16))
        #expect(file.metadata == ["format": "pt"])
        #expect(try file.floats("a").values == [3.5, -1.25])
        let b = try file.floats("b")
        #expect(b.shape == [2, 2])
        #expect(b.values == [1.0, -2.0, 65504.0, Float(bitPattern: 0x3380_0000)])  // 2^-24
        #expect(try file.floats("c").values == [1.0, -0.5])
        #expect(throws: SafetensorsError.missingTensor("zzz")) { try file.floats("zzz") }
    }

    @Test func halfSpecialValues() {
        #expect(halfToFloat(0x7C00) == .infinity)
        #expect(halfToFloat(0xFC00) == -.infinity)
        #expect(halfToFloat(0x7E00).isNaN)
        #expect(halfToFloat(0x8000) == 0 && halfToFloat(0x8000).sign == .minus)
        #expect(halfToFloat(0x03FF) == Float(1023) * Float(bitPattern: 0x3380_0000))  // largest subnormal
    }

    struct Hostile: CustomTestStringConvertible, Sendable {
        var name: String
        var bytes: [UInt8]
        var expected: SafetensorsError
        var testDescription: String { self.name }
    }

    static let hostile: [Hostile] = [
        Hostile(name: "empty", bytes: [], expected: .tooShort(size: 0)),
        Hostile(name: "7 bytes", bytes: [1, 0, 0, 0, 0, 0, 0], expected: .tooShort(size: 7)),
        Hostile(
            name: "header longer than file", bytes: safetensorsBytes("{}", declaredLength: 100),
            expected: .headerLengthOutOfBounds(headerLength: 100, fileSize: 10)),
        Hostile(
            name: "header length near UInt64.max", bytes: safetensorsBytes("{}", declaredLength: .max),
            expected: .headerLengthOutOfBounds(headerLength: .max, fileSize: 10)),
        Hostile(name: "header not JSON", bytes: safetensorsBytes("{nope"), expected: .invalidHeader("")),
        Hostile(name: "header is an array", bytes: safetensorsBytes("[]"), expected: .invalidHeader("not a JSON object")),
        Hostile(
            name: "unsupported dtype",
            bytes: safetensorsBytes(#"{"t":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}}"#, data: [0]),
            expected: .unsupportedDType(tensor: "t", dtype: "I8")),
        Hostile(
            name: "missing dtype", bytes: safetensorsBytes(#"{"t":{"shape":[1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]),
            expected: .invalidEntry(tensor: "t", reason: "missing string 'dtype'")),
        Hostile(
            name: "negative shape",
            bytes: safetensorsBytes(#"{"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]),
            expected: .invalidEntry(tensor: "t", reason: "'shape' must contain non-negative integers")),
        Hostile(
            name: "fractional offset",
            bytes: safetensorsBytes(#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4.5]}}"#, data: [0, 0, 0, 0]),
            expected: .invalidEntry(tensor: "t", reason: "'data_offsets' must contain non-negative integers")),
        Hostile(
            name: "three offsets",
            bytes: safetensorsBytes(#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}"#, data: [0, 0, 0, 0]),
            expected: .invalidEntry(tensor: "t", reason: "'data_offsets' must be an array of two integers")),
        Hostile(
            name: "offsets past end",
            bytes: safetensorsBytes(#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, data: [0, 0, 0, 0]),
            expected: .offsetsOutOfBounds(tensor: "t", begin: 0, end: 8, dataSize: 4)),
        Hostile(
            name: "reversed offsets",
            bytes: safetensorsBytes(#"{"t":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}}"#, data: [0, 0, 0, 0]),
            expected: .offsetsOutOfBounds(tensor: "t", begin: 4, end: 0, dataSize: 4)),
        Hostile(
            name: "size mismatch",
            bytes: safetensorsBytes(#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]),
            expected: .sizeMismatch(tensor: "t", expectedBytes: 8, actualBytes: 4)),
        Hostile(
            name: "overflowing shape",
            bytes: safetensorsBytes(
                #"{"t":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]),
            expected: .shapeOverflow(tensor: "t", shape: [4_611_686_018_427_387_904, 4])),
        Hostile(
            name: "byte size overflows",
            bytes: safetensorsBytes(#"{"t":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]),
            expected: .shapeOverflow(tensor: "t", shape: [4_611_686_018_427_387_904])),
        Hostile(
            name: "overlapping tensors",
            bytes: safetensorsBytes(
                #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                data: [UInt8](repeating: 0, count: 8)),
            expected: .overlappingTensors("a", "b")),
    ]

    @Test(arguments: hostile)
    func refusesHostileInput(_ c: Hostile) {
        do {
            _ = try SafetensorsFile(bytes: c.bytes)
            Issue.record("parsed hostile input '\(c.name)'")
        } catch {
            if case .invalidHeader = c.expected, case .invalidHeader = error {
                return  // The JSON decoder's wording varies.
            }
            #expect(error == c.expected)
        }
    }

    @Test func truncatedRealFileIsRefused() throws {
        let bytes = try SecureFile.read(try Fixture.modelDir() + "/model.safetensors")
        for cut in [1, 100, bytes.count / 2] {
            #expect(throws: SafetensorsError.self) { try SafetensorsFile(bytes: Array(bytes.dropLast(cut))) }
        }
        let whole = try SafetensorsFile(bytes: bytes)
        #expect(whole.tensors["model.embed_tokens.weight"]?.dtype == .f16)
        #expect(whole.tensors["lm_head.weight"]?.shape == [258, 64])
    }
}
