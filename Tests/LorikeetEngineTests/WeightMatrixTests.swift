import Foundation
import LorikeetGGUF
import LorikeetKernelDispatch
import LorikeetTestSupport
import Testing

@testable import LorikeetEngine

@Suite("Quantized weight matrices (Q4_1, Q8_0) against dequantized fp32", .ownThreads)
struct WeightMatrixTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var format: WeightMatrix.Format
        var rows: Int
        var columns: Int
        var batch: Int
        var threads: Int
        var product: QuantizedProduct
        var testDescription: String {
            "\(self.format) \(self.rows)x\(self.columns) batch \(self.batch) threads \(self.threads) \(self.product) input"
        }
    }

    static let cases: [Case] = [QuantizedProduct.int8, .fp32].flatMap { product in
        [
            Case(format: .q4_1, rows: 8, columns: 32, batch: 1, threads: 1, product: product),
            Case(format: .q4_1, rows: 7, columns: 64, batch: 3, threads: 1, product: product),  // padded quad, batch tail
            Case(format: .q4_1, rows: 130, columns: 96, batch: 9, threads: 2, product: product),  // x4 + tail, threaded
            Case(format: .q8_0, rows: 5, columns: 32, batch: 1, threads: 1, product: product),
            Case(format: .q8_0, rows: 66, columns: 128, batch: 6, threads: 2, product: product),
        ]
    }

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
        let matrix = bytes.withUnsafeBytes { WeightMatrix(ggml: c.format, rows: c.rows, columns: c.columns, bytes: $0, product: c.product) }
        #expect(matrix.values == dense, "copyRow must reproduce GGUFDequantizer exactly")
        var rng = Xoshiro256(seed: 7)
        let x = (0..<(c.batch * c.columns)).map { _ in Float(rng.nextUnit() * 2 - 1) }
        var y = [Float](repeating: .nan, count: c.batch * c.rows)
        var scratch = [Float](repeating: 0, count: max(1, matrix.scratchCount(batch: c.batch)))
        let pool = WorkerPool(threads: c.threads)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in
                scratch.withUnsafeMutableBufferPointer { sp in
                    matrix.matmul(xp.baseAddress!, batch: c.batch, yp.baseAddress!, pool: pool, scratch: sp.baseAddress!)
                }
            }
        }
        for t in 0..<c.batch {
            for r in 0..<c.rows {
                var expected: Double = 0
                for k in 0..<c.columns { expected += Double(dense[r * c.columns + k]) * Double(x[t * c.columns + k]) }
                let got = Double(y[t * c.rows + r])
                // fp32 inputs: the exact product up to summation order; 8-bit inputs (the
                // default): within what quantizing them allows (Int8KernelTests.errorBound).
                let tolerance =
                    c.product == .fp32
                    ? 1e-4 * max(1, abs(expected))
                    : Int8KernelTests.errorBound(
                        row: Array(dense[(r * c.columns)..<((r + 1) * c.columns)]), x: x[(t * c.columns)..<((t + 1) * c.columns)])
                #expect(abs(got - expected) <= tolerance, "row \(r) input \(t): \(got) vs \(expected)")
            }
        }
    }
}

/// A model whose layers use different block types (as some GGUF mixes do: fp32 or Q8_0
/// in one layer, Q4_1 in another) runs safely and computes what its dequantized twin does.
@Suite("Models with mixed block types per layer", .ownThreads)
struct MixedFormatModelTests {
    static let config = try! LlamaConfig(
        hiddenSize: 64, intermediateSize: 128, numLayers: 3, numHeads: 4, numKVHeads: 2, vocabSize: 96,
        maxPositionEmbeddings: 64, rmsNormEps: 1e-5, ropeTheta: 10_000, tieWordEmbeddings: false, bosTokenID: nil, eosTokenIDs: [0])

    /// Layer 0 and the output projection are fp32 (no scratch at all); layer 1 is Q8_0 and
    /// layer 2 Q4_1, so only later layers need matmul scratch. `dense` builds the twin
    /// with every matrix dequantized to fp32.
    static func weights(dense: Bool, product: QuantizedProduct = .int8) throws -> LlamaWeights {
        var rng = Xoshiro256(seed: 99)
        var seed: UInt64 = 1
        return try LlamaWeights(config: Self.config) { (name, shape) throws -> WeightMatrix in
            let rows = shape[0]
            let columns = shape.count > 1 ? shape[1] : 1
            seed += 1
            let format: WeightMatrix.Format? =
                name.hasPrefix("model.layers.1.") && columns > 1 ? .q8_0 : name.hasPrefix("model.layers.2.") && columns > 1 ? .q4_1 : nil
            guard let format else {
                let values =
                    name.hasSuffix("norm.weight")
                    ? [Float](repeating: 1, count: rows)
                    : (0..<(rows * columns)).map { _ in
                        Float(rng.nextUnit() * 0.2 - 0.1)
                    }
                return WeightMatrix(dense: FloatTensor(shape: shape, values: values))
            }
            let bytes = WeightMatrixTests.randomBlocks(format, rows: rows, columns: columns, seed: seed)
            let quantized = bytes.withUnsafeBytes { WeightMatrix(ggml: format, rows: rows, columns: columns, bytes: $0, product: product) }
            return dense ? WeightMatrix(dense: FloatTensor(shape: shape, values: quantized.values)) : quantized
        }
    }

    @Test("scratch is sized for the largest layer, and the logits match the dequantized twin", arguments: [QuantizedProduct.int8, .fp32])
    func mixedLayers(_ product: QuantizedProduct) throws {
        let quantized = try Self.weights(dense: false, product: product)
        let twin = try Self.weights(dense: true)
        #expect(quantized.layers[0].linear.allSatisfy { $0.scratchCount(batch: 1) == 0 })
        #expect(quantized.scratchPerRow == quantized.layers.flatMap(\.linear).map { $0.scratchCount(batch: 1) }.max())
        #expect(quantized.scratchPerRow > 0)
        let tokens: [UInt32] = [3, 17, 42, 5, 88, 1, 60]
        let got = LlamaModel(weights: quantized).lastLogits(tokens)
        let expected = LlamaModel(weights: twin).lastLogits(tokens)
        #expect(got.count == Self.config.vocabSize)
        let worst = zip(got, expected).map { abs($0 - $1) / max(1, abs($1)) }.max() ?? .infinity
        // 8-bit inputs (the default) through 2 quantized layers: about 2 % (1.9 % measured);
        // fp32 inputs: summation order only.
        #expect(worst < (product == .fp32 ? 1e-3 : 4e-2), "largest relative difference \(worst)")
    }
}
