/// Converts ggml tensor blocks to `Float`, with block layouts exactly as ggml's
/// `ggml-quants.c` reference `dequantize_row_*` functions.
///
/// - Q4_0: fp16 `d`, 16 bytes of nibbles; element `j` is `(lo(qs[j]) - 8) * d` and element
///   `j + 16` is `(hi(qs[j]) - 8) * d`.
/// - Q4_1: fp16 `d`, fp16 `m`, 16 bytes of nibbles; `lo(qs[j]) * d + m` and `hi(qs[j]) * d + m`.
/// - Q8_0: fp16 `d`, 32 `int8`; `q[j] * d`.
/// - F16, BF16, F32: element by element.
package enum GGUFDequantizer {
    /// Whether `type` can be converted to `Float`.
    package static func supports(_ type: GGMLType) -> Bool {
        switch type {
        case .f32, .f16, .bf16, .q4_0, .q4_1, .q8_0: return true
        default: return false
        }
    }

    /// Dequantizes `count` elements of `type` from `bytes` into a new array.
    package static func dequantize(
        _ bytes: UnsafeRawBufferPointer,
        type: GGMLType,
        count: Int
    ) throws(GGUFModelError) -> [Float] {
        try Self.checkSize(bytes, type: type, count: count)
        return [Float](unsafeUninitializedCapacity: count) { out, initialized in
            Self.convert(bytes, type: type, into: out)
            initialized = count
        }
    }

    /// Dequantizes `out.count` elements of `type` from `bytes` into `out`.
    package static func dequantize(
        _ bytes: UnsafeRawBufferPointer,
        type: GGMLType,
        into out: UnsafeMutableBufferPointer<Float>
    ) throws(GGUFModelError) {
        try Self.checkSize(bytes, type: type, count: out.count)
        Self.convert(bytes, type: type, into: out)
    }

    private static func checkSize(_ bytes: UnsafeRawBufferPointer, type: GGMLType, count: Int) throws(GGUFModelError) {
        guard Self.supports(type) else { throw .unsupportedTensorType(tensor: "<buffer>", type: type) }
        guard count >= 0, count % type.blockSize == 0,
            bytes.count == count / type.blockSize * type.blockBytes
        else { throw .sizeMismatch(type: type, elements: count, bytes: bytes.count) }
    }

    /// The conversion loops; sizes were checked by the caller.
    private static func convert(_ src: UnsafeRawBufferPointer, type: GGMLType, into out: UnsafeMutableBufferPointer<Float>) {
        guard let base = src.baseAddress, let dst = out.baseAddress, out.count > 0 else { return }
        let n = out.count
        switch type {
        case .f32:
            for i in 0..<n { dst[i] = Float(bitPattern: UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
        case .f16:
            for i in 0..<n { dst[i] = halfToFloat(UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
        case .bf16:
            for i in 0..<n {
                let bits = UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                dst[i] = Float(bitPattern: UInt32(bits) << 16)
            }
        case .q4_0:
            let blocks = n / 32
            for b in 0..<blocks {
                let block = base + b * 18
                let d = halfToFloat(UInt16(littleEndian: block.loadUnaligned(as: UInt16.self)))
                let qs = (block + 2).assumingMemoryBound(to: UInt8.self)
                let o = dst + b * 32
                for j in 0..<16 {
                    let q = qs[j]
                    o[j] = Float(Int32(q & 0x0F) - 8) * d
                    o[j + 16] = Float(Int32(q >> 4) - 8) * d
                }
            }
        case .q4_1:
            let blocks = n / 32
            for b in 0..<blocks {
                let block = base + b * 20
                let d = halfToFloat(UInt16(littleEndian: block.loadUnaligned(as: UInt16.self)))
                let m = halfToFloat(UInt16(littleEndian: block.loadUnaligned(fromByteOffset: 2, as: UInt16.self)))
                let qs = (block + 4).assumingMemoryBound(to: UInt8.self)
                let o = dst + b * 32
                for j in 0..<16 {
                    let q = qs[j]
                    o[j] = Float(q & 0x0F) * d + m
                    o[j + 16] = Float(q >> 4) * d + m
                }
            }
        case .q8_0:
            let blocks = n / 32
            for b in 0..<blocks {
                let block = base + b * 34
                let d = halfToFloat(UInt16(littleEndian: block.loadUnaligned(as: UInt16.self)))
                let qs = (block + 2).assumingMemoryBound(to: Int8.self)
                let o = dst + b * 32
                for j in 0..<32 { o[j] = Float(qs[j]) * d }
            }
        default:
            preconditionFailure("unsupported type \(type) passed the size check")
        }
    }
}

/// IEEE 754 binary16 bits to `Float` (exact; handles subnormals, infinities and NaN).
///
/// Written out rather than using `Float16`, which is unavailable on macOS x86_64.
@inline(__always)
package func halfToFloat(_ h: UInt16) -> Float {
    let sign = UInt32(h & 0x8000) << 16
    let exponent = UInt32(h >> 10) & 0x1F
    let mantissa = UInt32(h & 0x03FF)
    if exponent == 0 {
        // Zero or subnormal: mantissa * 2^-24.
        let magnitude = Float(mantissa) * 0x1p-24
        return sign == 0 ? magnitude : -magnitude
    }
    if exponent == 0x1F {
        return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
    }
    return Float(bitPattern: sign | ((exponent + 112) << 23) | (mantissa << 13))
}
