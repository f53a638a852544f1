import Foundation
import LorikeetGGUF
import Testing

@testable import LorikeetEngine

@Suite("Quantized weight matrices (Q4_1, Q8_0) against dequantized fp32")
struct WeightMatrixTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var format: WeightMatrix.Format
        var rows: Int
        var columns: Int
        var batch: Int
        var threads: Int
        var testDescription: String { "\(self.format) \(self.rows)x\(self.columns) batch \(self.batch) threads \(self.threads)" }
    }

    static let cases: [Case] = [
        Case(format: .q4_1, rows: 8, columns: 32, batch: 1, threads: 1),
        Case(format: .q4_1, rows: 7, columns: 64, batch: 3, threads: 1),  // padded quad, batch tail
        Case(format: .q4_1, rows: 130, columns: 96, batch: 9, threads: 2),  // x4 + tail, threaded
        Case(format: .q8_0, rows: 5, columns: 32, batch: 1, threads: 1),
        Case(format: .q8_0, rows: 66, columns: 128, batch: 6, threads: 2),
    ]

    /// Random ggml blocks: fp16 scales and mins in a sane range, random codes.
    static func randomBlocks(_ format: WeightMatrix.Format, rows: Int, columns: Int, seed: UInt64) -> [UInt8] {
        var rng = Xoshiro256(seed: seed)
        let blocks = rows * columns / 32
        var bytes: [UInt8] = []
        func half(_ v: Float) -> [UInt8] {
            // Values here are normal fp16 numbers: sign, 5-bit exponent, 10-bit mantissa.
            let bits = v.bitPattern
            let sign = UInt16((bits >> 16) & 0x8000)
            let exponent = UInt16(Int((bits >> 23) & 0xFF) - 127 + 15)
            let mantissa = UInt16((bits >> 13) & 0x3FF)
            let h = sign | (exponent << 10) | mantissa
            return [UInt8(h & 0xFF), UInt8(h >> 8)]
        }
        for _ in 0..<blocks {
            let d = Float(rng.nextUnit() * 0.02 + 0.001)
            bytes += half(d)
            if format == .q4_1 {
                bytes += half(Float(-rng.nextUnit() * 0.1 - 0.001))
                for _ in 0..<16 { bytes.append(UInt8(truncatingIfNeeded: rng.next())) }
            } else {
                for _ in 0..<32 { bytes.append(UInt8(truncatingIfNeeded: rng.next())) }
            }
        }
        return bytes
    }

    @Test(arguments: cases)
    func matchesDequantized(_ c: Case) throws {
        let bytes = Self.randomBlocks(c.format, rows: c.rows, columns: c.columns, seed: UInt64(c.rows * 1000 + c.columns))
        let type: GGMLType = c.format == .q4_1 ? .q4_1 : .q8_0
        let dense = try bytes.withUnsafeBytes { try GGUFDequantizer.dequantize($0, type: type, count: c.rows * c.columns) }
        let matrix = bytes.withUnsafeBytes { WeightMatrix(ggml: c.format, rows: c.rows, columns: c.columns, bytes: $0) }
        #expect(matrix.values == dense, "copyRow must reproduce GGUFDequantizer exactly")
        var rng = Xoshiro256(seed: 7)
        let x = (0..<(c.batch * c.columns)).map { _ in Float(rng.nextUnit() * 2 - 1) }
        var y = [Float](repeating: .nan, count: c.batch * c.rows)
        var scratch = [Float](repeating: 0, count: max(1, matrix.scratchCount(batch: c.batch)))
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in
                scratch.withUnsafeMutableBufferPointer { sp in
                    matrix.matmul(xp.baseAddress!, batch: c.batch, yp.baseAddress!, threads: c.threads, scratch: sp.baseAddress!)
                }
            }
        }
        for t in 0..<c.batch {
            for r in 0..<c.rows {
                var expected: Double = 0
                for k in 0..<c.columns { expected += Double(dense[r * c.columns + k]) * Double(x[t * c.columns + k]) }
                let got = Double(y[t * c.rows + r])
                #expect(abs(got - expected) <= 1e-4 * max(1, abs(expected)), "row \(r) input \(t): \(got) vs \(expected)")
            }
        }
    }
}
