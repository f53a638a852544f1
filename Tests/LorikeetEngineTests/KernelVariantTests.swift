import Foundation
import LorikeetKernelDispatch
import LorikeetTestSupport
import Testing

/// The two builds of the kernels (portable, x86-64-v3) compute the same results, and the
/// fast one is what a process on this machine runs.
@Suite(.ownThreads) struct KernelVariantTests {
    /// A reproducible stream of floats in -1...1 (xorshift).
    struct Numbers {
        var state: UInt64
        mutating func next() -> Float {
            self.state ^= self.state << 13
            self.state ^= self.state >> 7
            self.state ^= self.state << 17
            return Float(Int64(bitPattern: self.state >> 11) % 2_000_001 - 1_000_000) / 1_000_000
        }
        mutating func floats(_ count: Int) -> [Float] { (0..<count).map { _ in self.next() } }
        /// Quad blocks of random bits whose `scales` leading fp16 values are sane scales.
        mutating func quadBlocks(_ count: Int, bytes: Int, scales: Int) -> [UInt8] {
            var out: [UInt8] = []
            for _ in 0..<count {
                var block = [UInt8](repeating: 0, count: bytes)
                for index in block.indices {
                    _ = self.next()
                    block[index] = UInt8(truncatingIfNeeded: self.state >> 24)
                }
                for s in 0..<scales {
                    let bits = Float16(0.02 + abs(self.next()) * 0.05).bitPattern
                    block[2 * s] = UInt8(bits & 0xFF)
                    block[2 * s + 1] = UInt8(bits >> 8)
                }
                out += block
            }
            return out
        }
    }

    static func maxDifference(_ a: [Float], _ b: [Float]) -> Float {
        zip(a, b).map { abs($0 - $1) / max(1, abs($0)) }.max() ?? 0
    }

    @Test("this machine runs the AVX2 build when its CPU has AVX2, FMA and F16C (unless LORIKEET_KERNELS=portable)")
    func activeVariant() {
        let forced = (try? String(contentsOfFile: "/proc/self/environ", encoding: .utf8))?.contains("LORIKEET_KERNELS=portable") == true
        #expect(KernelVariant.active == (KernelVariant.avx2.isSupported && !forced ? .avx2 : .portable))
        #if arch(x86_64)
            #expect(KernelVariant.built == [.portable, .avx2])
        #endif
    }

    @Test("fp16 scales become floats exactly in every build this CPU runs: all 65,536 bit patterns")
    func halvesConvertExactly() {
        for variant in KernelVariant.built where variant.isSupported {
            var wrong: [UInt16] = []
            for first in stride(from: 0, through: 0xFFF8, by: 8) {
                let bits = SIMD8<UInt16>((0..<8).map { UInt16(first + $0) })
                let floats = variant.quantized.floats(halves: bits)
                for lane in 0..<8 {
                    let expected = Float(Float16(bitPattern: bits[lane]))
                    let same = expected.isNaN ? floats[lane].isNaN : floats[lane].bitPattern == expected.bitPattern
                    if !same { wrong.append(bits[lane]) }
                }
            }
            #expect(wrong.isEmpty, "\(variant): \(wrong.count) patterns differ, first \(wrong.prefix(5).map { String($0, radix: 16) })")
        }
    }

    @Test("portable and AVX2 builds agree on every kernel the engine calls", .enabled(if: KernelVariant.avx2.isSupported))
    func variantsAgree() {
        var numbers = Numbers(state: 0x9E37_79B9_7F4A_7C15)
        let columns = 256
        let blocks = columns / 32
        let rows = 24
        let quads = rows / 4
        let batch = 4
        let x = numbers.floats(columns * batch)
        let q41 = numbers.quadBlocks(quads * blocks, bytes: Kernels.q41QuadBlockBytes, scales: 8)
        let q80 = numbers.quadBlocks(quads * blocks, bytes: Kernels.q80QuadBlockBytes, scales: 4)
        let w = numbers.floats(rows * columns)
        let norm = numbers.floats(columns)
        let (rank, outDim) = (8, 40)
        let loraA = numbers.floats(rank * columns)
        let loraB = numbers.floats(outDim * rank)
        let (group, span, headDim, stride) = (3, 20, 64, 128)
        let keys = numbers.floats(span * stride)
        let values = numbers.floats(span * stride)

        /// Every kernel's outputs, concatenated, from one variant.
        func outputs(_ variant: KernelVariant) -> [Float] {
            let fp32 = variant.fp32
            let quantized = variant.quantized
            let xqCount = Kernels.expandedCount(columns: columns)
            var xq = [Float](repeating: 0, count: xqCount * batch)
            var xsum = [Float](repeating: 0, count: blocks * batch)
            x.withUnsafeBufferPointer { x in
                xq.withUnsafeMutableBufferPointer { xq in
                    xsum.withUnsafeMutableBufferPointer { xsum in
                        for t in 0..<batch {
                            quantized.expand(
                                x.baseAddress! + t * columns, columns: columns, xq.baseAddress! + t * xqCount,
                                xsum.baseAddress! + t * blocks)
                        }
                    }
                }
            }
            var result = xq + xsum
            var y = [Float](repeating: 0, count: rows * batch)
            q41.withUnsafeBytes { w in quantized.q41(w.baseAddress!, blocks: blocks, rows: rows, quads: 0..<quads, xq, xsum, &y) }
            result += y.prefix(rows)
            q80.withUnsafeBytes { w in quantized.q80(w.baseAddress!, blocks: blocks, rows: rows, quads: 0..<quads, xq, &y) }
            result += y.prefix(rows)
            q41.withUnsafeBytes { w in
                quantized.q41x4(
                    w.baseAddress!, blocks: blocks, rows: rows, quads: 0..<quads, xq, xqStride: xqCount, xsum, &y, yStride: rows)
            }
            result += y
            q80.withUnsafeBytes { w in
                quantized.q80x4(w.baseAddress!, blocks: blocks, rows: rows, quads: 0..<quads, xq, xqStride: xqCount, &y, yStride: rows)
            }
            result += y
            fp32.matmulRows(w, 0..<rows, rows: rows, cols: columns, x, batch: batch, &y)
            result += y
            var normed = [Float](repeating: 0, count: columns)
            fp32.rmsNorm(x, norm, columns, eps: 1e-5, &normed)
            result += normed
            var gate = Array(x.prefix(columns))
            fp32.swiglu(&gate, norm, columns)
            result += gate
            var sum = Array(x.prefix(columns))
            fp32.addInPlace(&sum, norm, columns)
            result += sum
            var lora = [Float](repeating: 0.5, count: outDim)
            var tmp = [Float](repeating: 0, count: rank)
            fp32.addLoRA(a: loraA, b: loraB, rank: rank, inDim: columns, outDim: outDim, scaling: 2, x, tmp: &tmp, &lora)
            result += lora
            var scores = [Float](repeating: 0, count: group * span)
            var attended = [Float](repeating: 0, count: group * headDim)
            fp32.attendGroup(
                x, group: group, keys: keys, values: values, stride: stride, span: span, headDim: headDim, scale: 0.125,
                scores: &scores, &attended)
            result += scores + attended
            return result
        }
        let portable = outputs(.portable)
        let fast = outputs(.avx2)
        #expect(portable.count == fast.count)
        #expect(portable.allSatisfy { $0.isFinite }, "the inputs make finite results")
        let difference = Self.maxDifference(portable, fast)
        #expect(difference <= 1e-5, "largest relative difference \(difference)")
    }
}
