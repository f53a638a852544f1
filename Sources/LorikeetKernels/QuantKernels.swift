/// Matrix–vector kernels on ggml-quantized weights (Q4_1, Q8_0) with fp32 activations.
///
/// This target is always compiled with optimization (see Package.swift): the generic SIMD
/// types are unusable at `-Onone`, and the engine's tests run the real 135M model in debug
/// builds.
///
/// Weights are repacked once at load into groups of four rows ("quads") so one `SIMD16`
/// operation covers four rows × four columns. Activations stay fp32 (no int8 activation
/// quantization as llama.cpp does): results equal an fp32 dot product with the dequantized
/// weights up to summation order, which is what the numpy reference checks.
///
/// Quad block layouts (one per 32 columns, four rows `r`, lane `4r + i`):
/// - Q4_1: `d[4]`, `m[4]` as fp16, GGUF's own bits (16 bytes), then 16 little-endian `UInt32`
///   words; nibble `k` (bits `4k..<4k+4`) of word `4r + i` is row `r`'s element `4k + i` of the
///   block. 80 bytes: as many per weight as GGUF's Q4_1 (fp32 scales cost 20% more bytes
///   streamed per token, for the same values: fp16 → fp32 is exact, one `vcvtph2ps`).
/// - Q8_0: `d[4]` as fp16 (8 bytes), then 32 words; byte `k` of word `4r + i` in half `h`
///   is row `r`'s element `16h + 4k + i`, stored as `q + 128`. 136 bytes.
///
/// The activation vector is expanded once per product into `xq`: for each block and each
/// `k' < 8`, the four elements `4k'..<4k'+4` repeated four times (16 floats), so the lane
/// order matches the weight words. Integer nibbles/bytes become floats exactly with the
/// `0x4B000000` exponent trick (`bits(2^23 + q) - 2^23`).
package enum QuantKernels {
    /// Bytes of one quad block.
    package static let q41QuadBlockBytes = 80
    /// Bytes of one quad block.
    package static let q80QuadBlockBytes = 136

    /// Floats of expanded input per input row of `columns` elements (`xq`).
    @inline(__always)
    package static func expandedCount(columns: Int) -> Int { columns * 4 }

    /// Expands `x` (`columns` floats, a multiple of 32) into `xq` and writes the per-block
    /// sums (needed by Q4_1's min term) into `xsum` (`columns / 32` floats).
    package static func expand(
        _ x: UnsafePointer<Float>, columns: Int, _ xq: UnsafeMutablePointer<Float>, _ xsum: UnsafeMutablePointer<Float>
    ) {
        let blocks = columns / 32
        for b in 0..<blocks {
            let xb = x + b &* 32
            let out = xq + b &* 128
            var s: Float = 0
            for k in 0..<8 {
                let v = UnsafeRawPointer(xb + 4 &* k).loadUnaligned(as: SIMD4<Float>.self)
                s += v.sum()
                let o = UnsafeMutableRawPointer(out + 16 &* k)
                o.storeBytes(
                    of: SIMD16(lowHalf: SIMD8(lowHalf: v, highHalf: v), highHalf: SIMD8(lowHalf: v, highHalf: v)), as: SIMD16<Float>.self)
            }
            xsum[b] = s
        }
    }

    /// `y[4q + r] = row(4q + r) · x` for the quads in `quads`, Q4_1. `w` is the repacked
    /// matrix, `blocks` the blocks per row; rows at or past `rows` (padding) are not written.
    package static func q41(
        _ w: UnsafeRawPointer, blocks: Int, rows: Int, quads: Range<Int>,
        _ xq: UnsafePointer<Float>, _ xsum: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>
    ) {
        let quadBytes = blocks &* Self.q41QuadBlockBytes
        let xr = UnsafeRawPointer(xq)
        for q in quads {
            let v = Self.q41Quad(w + q &* quadBytes, xr, xsum, blocks)
            Self.store(v, y, 4 &* q, rows)
        }
    }

    /// Like `q41`, for Q8_0 (no per-block sums needed).
    package static func q80(
        _ w: UnsafeRawPointer, blocks: Int, rows: Int, quads: Range<Int>,
        _ xq: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>
    ) {
        let quadBytes = blocks &* Self.q80QuadBlockBytes
        let xr = UnsafeRawPointer(xq)
        for q in quads {
            let v = Self.q80Quad(w + q &* quadBytes, xr, blocks)
            Self.store(v, y, 4 &* q, rows)
        }
    }

    /// `q41` for four input rows at once (`xq`/`xsum`/`y` of input `t` at `t * xqStride`,
    /// `t * blocks`, `t * yStride`): each weight block is decoded once for all four, which
    /// is what makes prompt processing (prefill) faster per token than decoding.
    package static func q41x4(
        _ w: UnsafeRawPointer, blocks: Int, rows: Int, quads: Range<Int>,
        _ xq: UnsafePointer<Float>, xqStride: Int, _ xsum: UnsafePointer<Float>,
        _ y: UnsafeMutablePointer<Float>, yStride: Int
    ) {
        let quadBytes = blocks &* Self.q41QuadBlockBytes
        let mask = SIMD16<UInt32>(repeating: 0xF)
        let magic = SIMD16<UInt32>(repeating: 0x4B00_0000)
        let offset = SIMD16<Float>(repeating: 8_388_608)
        let x0 = UnsafeRawPointer(xq)
        let x1 = UnsafeRawPointer(xq + xqStride)
        let x2 = UnsafeRawPointer(xq + 2 &* xqStride)
        let x3 = UnsafeRawPointer(xq + 3 &* xqStride)
        for q in quads {
            let quad = w + q &* quadBytes
            var a0 = SIMD16<Float>()
            var a1 = SIMD16<Float>()
            var a2 = SIMD16<Float>()
            var a3 = SIMD16<Float>()
            var m0 = SIMD4<Float>()
            var m1 = SIMD4<Float>()
            var m2 = SIMD4<Float>()
            var m3 = SIMD4<Float>()
            var b = 0
            while b < blocks {
                let block = quad + b &* Self.q41QuadBlockBytes
                let dm = Self.floats(halves: block.loadUnaligned(as: SIMD8<UInt16>.self))
                let d = Self.spread(dm.lowHalf)
                let m = dm.highHalf
                let u = block.loadUnaligned(fromByteOffset: 16, as: SIMD16<UInt32>.self)
                var s0 = SIMD16<Float>()
                var t0 = SIMD16<Float>()
                var s1 = SIMD16<Float>()
                var t1 = SIMD16<Float>()
                var s2 = SIMD16<Float>()
                var t2 = SIMD16<Float>()
                var s3 = SIMD16<Float>()
                var t3 = SIMD16<Float>()
                let o = b &* 512
                for k in 0..<8 {
                    let bits = ((u &>> UInt32(4 &* k)) & mask) | magic
                    let f = unsafeBitCast(bits, to: SIMD16<Float>.self) - offset
                    let ko = o &+ 64 &* k
                    if k & 1 == 0 {
                        s0 = Self.multiplyAdd(s0, f, x0.loadUnaligned(fromByteOffset: ko, as: SIMD16<Float>.self))
                    } else {
                        t0 = Self.multiplyAdd(t0, f, x0.loadUnaligned(fromByteOffset: ko, as: SIMD16<Float>.self))
                    }
                    if k & 1 == 0 {
                        s1 = Self.multiplyAdd(s1, f, x1.loadUnaligned(fromByteOffset: ko, as: SIMD16<Float>.self))
                    } else {
                        t1 = Self.multiplyAdd(t1, f, x1.loadUnaligned(fromByteOffset: ko, as: SIMD16<Float>.self))
                    }
                    if k & 1 == 0 {
                        s2 = Self.multiplyAdd(s2, f, x2.loadUnaligned(fromByteOffset: ko, as: SIMD16<Float>.self))
                    } else {
                        t2 = Self.multiplyAdd(t2, f, x2.loadUnaligned(fromByteOffset: ko, as: SIMD16<Float>.self))
                    }
                    if k & 1 == 0 {
                        s3 = Self.multiplyAdd(s3, f, x3.loadUnaligned(fromByteOffset: ko, as: SIMD16<Float>.self))
                    } else {
                        t3 = Self.multiplyAdd(t3, f, x3.loadUnaligned(fromByteOffset: ko, as: SIMD16<Float>.self))
                    }
                }
                a0 = Self.multiplyAdd(a0, s0 + t0, d)
                a1 = Self.multiplyAdd(a1, s1 + t1, d)
                a2 = Self.multiplyAdd(a2, s2 + t2, d)
                a3 = Self.multiplyAdd(a3, s3 + t3, d)
                m0 = Self.multiplyAdd(m0, m, SIMD4(repeating: xsum[b]))
                m1 = Self.multiplyAdd(m1, m, SIMD4(repeating: xsum[blocks &+ b]))
                m2 = Self.multiplyAdd(m2, m, SIMD4(repeating: xsum[2 &* blocks &+ b]))
                m3 = Self.multiplyAdd(m3, m, SIMD4(repeating: xsum[3 &* blocks &+ b]))
                b &+= 1
            }
            Self.store(Self.rowSums(a0) + m0, y, 4 &* q, rows)
            Self.store(Self.rowSums(a1) + m1, y + yStride, 4 &* q, rows)
            Self.store(Self.rowSums(a2) + m2, y + 2 &* yStride, 4 &* q, rows)
            Self.store(Self.rowSums(a3) + m3, y + 3 &* yStride, 4 &* q, rows)
        }
    }

    /// `q80` for four input rows at once (see `q41x4`).
    package static func q80x4(
        _ w: UnsafeRawPointer, blocks: Int, rows: Int, quads: Range<Int>,
        _ xq: UnsafePointer<Float>, xqStride: Int, _ y: UnsafeMutablePointer<Float>, yStride: Int
    ) {
        let quadBytes = blocks &* Self.q80QuadBlockBytes
        let mask = SIMD16<UInt32>(repeating: 0xFF)
        let magic = SIMD16<UInt32>(repeating: 0x4B00_0000)
        let offset = SIMD16<Float>(repeating: 8_388_608 + 128)
        let x0 = UnsafeRawPointer(xq)
        let x1 = UnsafeRawPointer(xq + xqStride)
        let x2 = UnsafeRawPointer(xq + 2 &* xqStride)
        let x3 = UnsafeRawPointer(xq + 3 &* xqStride)
        for q in quads {
            let quad = w + q &* quadBytes
            var a0 = SIMD16<Float>()
            var a1 = SIMD16<Float>()
            var a2 = SIMD16<Float>()
            var a3 = SIMD16<Float>()
            var b = 0
            while b < blocks {
                let block = quad + b &* Self.q80QuadBlockBytes
                let d = Self.spread(Self.floats(halves: block.loadUnaligned(as: SIMD4<UInt16>.self)))
                var s0 = SIMD16<Float>()
                var t0 = SIMD16<Float>()
                var s1 = SIMD16<Float>()
                var t1 = SIMD16<Float>()
                var s2 = SIMD16<Float>()
                var t2 = SIMD16<Float>()
                var s3 = SIMD16<Float>()
                var t3 = SIMD16<Float>()
                let o = b &* 512
                for h in 0..<2 {
                    let u = block.loadUnaligned(fromByteOffset: 8 &+ 64 &* h, as: SIMD16<UInt32>.self)
                    for k in 0..<4 {
                        let bits = ((u &>> UInt32(8 &* k)) & mask) | magic
                        let f = unsafeBitCast(bits, to: SIMD16<Float>.self) - offset
                        let ko = o &+ 64 &* (4 &* h &+ k)
                        if k & 1 == 0 {
                            s0 = Self.multiplyAdd(s0, f, x0.loadUnaligned(fromByteOffset: ko, as: SIMD16<Float>.self))
                        } else {
                            t0 = Self.multiplyAdd(t0, f, x0.loadUnaligned(fromByteOffset: ko, as: SIMD16<Float>.self))
                        }
                        if k & 1 == 0 {
                            s1 = Self.multiplyAdd(s1, f, x1.loadUnaligned(fromByteOffset: ko, as: SIMD16<Float>.self))
                        } else {
                            t1 = Self.multiplyAdd(t1, f, x1.loadUnaligned(fromByteOffset: ko, as: SIMD16<Float>.self))
                        }
                        if k & 1 == 0 {
                            s2 = Self.multiplyAdd(s2, f, x2.loadUnaligned(fromByteOffset: ko, as: SIMD16<Float>.self))
                        } else {
                            t2 = Self.multiplyAdd(t2, f, x2.loadUnaligned(fromByteOffset: ko, as: SIMD16<Float>.self))
                        }
                        if k & 1 == 0 {
                            s3 = Self.multiplyAdd(s3, f, x3.loadUnaligned(fromByteOffset: ko, as: SIMD16<Float>.self))
                        } else {
                            t3 = Self.multiplyAdd(t3, f, x3.loadUnaligned(fromByteOffset: ko, as: SIMD16<Float>.self))
                        }
                    }
                }
                a0 = Self.multiplyAdd(a0, s0 + t0, d)
                a1 = Self.multiplyAdd(a1, s1 + t1, d)
                a2 = Self.multiplyAdd(a2, s2 + t2, d)
                a3 = Self.multiplyAdd(a3, s3 + t3, d)
                b &+= 1
            }
            Self.store(Self.rowSums(a0), y, 4 &* q, rows)
            Self.store(Self.rowSums(a1), y + yStride, 4 &* q, rows)
            Self.store(Self.rowSums(a2), y + 2 &* yStride, 4 &* q, rows)
            Self.store(Self.rowSums(a3), y + 3 &* yStride, 4 &* q, rows)
        }
    }

    /// `acc + a × b`. Fused (one rounding, one instruction) where the build has FMA; a
    /// multiply then an add in the portable x86-64 build, whose CPU may lack FMA: there
    /// `addingProduct` compiles to a call of libm's software `fmaf` per lane, which made
    /// the portable kernels hundreds of times slower than the AVX2 ones.
    @inline(__always)
    private static func multiplyAdd<V: SIMD>(_ acc: V, _ a: V, _ b: V) -> V where V.Scalar == Float {
        #if LORIKEET_FMA_F16C || arch(arm64)
            acc.addingProduct(a, b)
        #else
            acc + a * b
        #endif
    }

    /// IEEE fp16 bit patterns to floats, exactly (every fp16 value is an fp32 value). With
    /// F16C (the AVX2 build) or on arm64, one conversion instruction. In the portable x86-64
    /// build a `Float16` → `Float` conversion is a library call per lane, so the bits are
    /// moved instead: exponent and mantissa shifted into place and rebiased by a multiply
    /// with 2^112 (exact, subnormals included), infinities and NaNs given the all-ones
    /// exponent, the sign put back.
    @inline(__always)
    package static func floats(halves h: SIMD8<UInt16>) -> SIMD8<Float> {
        #if LORIKEET_FMA_F16C || arch(arm64)
            return SIMD8<Float>(unsafeBitCast(h, to: SIMD8<Float16>.self))
        #else
            let w = SIMD8<UInt32>(truncatingIfNeeded: h)
            let magnitude = unsafeBitCast((w & 0x7FFF) &<< 13, to: SIMD8<Float>.self) * 0x1p112
            var bits = unsafeBitCast(magnitude, to: SIMD8<UInt32>.self)
            bits.replace(with: bits | 0x7F80_0000, where: (w & 0x7C00) .== 0x7C00)
            return unsafeBitCast(bits | ((w & 0x8000) &<< 16), to: SIMD8<Float>.self)
        #endif
    }

    /// `floats(halves:)` for four halves.
    @inline(__always)
    package static func floats(halves h: SIMD4<UInt16>) -> SIMD4<Float> {
        Self.floats(halves: SIMD8(lowHalf: h, highHalf: .zero)).lowHalf
    }

    @inline(__always)
    private static func store(_ v: SIMD4<Float>, _ y: UnsafeMutablePointer<Float>, _ row: Int, _ rows: Int) {
        if row &+ 4 <= rows {
            UnsafeMutableRawPointer(y + row).storeBytes(of: v, as: SIMD4<Float>.self)
        } else {
            for r in 0..<(rows &- row) { y[row &+ r] = v[r] }
        }
    }

    @inline(__always)
    private static func spread(_ d: SIMD4<Float>) -> SIMD16<Float> {
        SIMD16(
            lowHalf: SIMD8(lowHalf: SIMD4(repeating: d[0]), highHalf: SIMD4(repeating: d[1])),
            highHalf: SIMD8(lowHalf: SIMD4(repeating: d[2]), highHalf: SIMD4(repeating: d[3])))
    }

    @inline(__always)
    private static func rowSums(_ acc: SIMD16<Float>) -> SIMD4<Float> {
        // Lanes 4r..<4r+4 belong to row r.
        let a = acc.lowHalf.lowHalf
        let b = acc.lowHalf.highHalf
        let c = acc.highHalf.lowHalf
        let d = acc.highHalf.highHalf
        return SIMD4(a.sum(), b.sum(), c.sum(), d.sum())
    }

    @inline(__always)
    private static func q41Quad(
        _ quad: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ xsum: UnsafePointer<Float>, _ blocks: Int
    ) -> SIMD4<Float> {
        var acc = SIMD16<Float>()
        var macc = SIMD4<Float>()
        let mask = SIMD16<UInt32>(repeating: 0xF)
        let magic = SIMD16<UInt32>(repeating: 0x4B00_0000)
        let offset = SIMD16<Float>(repeating: 8_388_608)
        var b = 0
        while b < blocks {
            let block = quad + b &* Self.q41QuadBlockBytes
            let dm = Self.floats(halves: block.loadUnaligned(as: SIMD8<UInt16>.self))
            let d = dm.lowHalf
            let m = dm.highHalf
            let u = block.loadUnaligned(fromByteOffset: 16, as: SIMD16<UInt32>.self)
            let xb = xq + b &* 512
            var s = SIMD16<Float>()
            var t = SIMD16<Float>()
            for k in 0..<8 {
                let bits = ((u &>> UInt32(4 &* k)) & mask) | magic
                let f = unsafeBitCast(bits, to: SIMD16<Float>.self) - offset
                if k & 1 == 0 {
                    s = Self.multiplyAdd(s, f, xb.loadUnaligned(fromByteOffset: 64 &* k, as: SIMD16<Float>.self))
                } else {
                    t = Self.multiplyAdd(t, f, xb.loadUnaligned(fromByteOffset: 64 &* k, as: SIMD16<Float>.self))
                }
            }
            acc = Self.multiplyAdd(acc, s + t, Self.spread(d))
            macc = Self.multiplyAdd(macc, m, SIMD4(repeating: xsum[b]))
            b &+= 1
        }
        return Self.rowSums(acc) + macc
    }

    @inline(__always)
    private static func q80Quad(_ quad: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ blocks: Int) -> SIMD4<Float> {
        var acc = SIMD16<Float>()
        let mask = SIMD16<UInt32>(repeating: 0xFF)
        let magic = SIMD16<UInt32>(repeating: 0x4B00_0000)
        let offset = SIMD16<Float>(repeating: 8_388_608 + 128)
        var b = 0
        while b < blocks {
            let block = quad + b &* Self.q80QuadBlockBytes
            let d = Self.floats(halves: block.loadUnaligned(as: SIMD4<UInt16>.self))
            let xb = xq + b &* 512
            var s = SIMD16<Float>()
            var t = SIMD16<Float>()
            for h in 0..<2 {
                let u = block.loadUnaligned(fromByteOffset: 8 &+ 64 &* h, as: SIMD16<UInt32>.self)
                for k in 0..<4 {
                    let bits = ((u &>> UInt32(8 &* k)) & mask) | magic
                    let f = unsafeBitCast(bits, to: SIMD16<Float>.self) - offset
                    if k & 1 == 0 {
                        s = Self.multiplyAdd(s, f, xb.loadUnaligned(fromByteOffset: 64 &* (4 &* h &+ k), as: SIMD16<Float>.self))
                    } else {
                        t = Self.multiplyAdd(t, f, xb.loadUnaligned(fromByteOffset: 64 &* (4 &* h &+ k), as: SIMD16<Float>.self))
                    }
                }
            }
            acc = Self.multiplyAdd(acc, s + t, Self.spread(d))
            b &+= 1
        }
        return Self.rowSums(acc)
    }
}
