import LorikeetGGUF
package import LorikeetKernelDispatch

/// A `[rows, columns]` weight matrix for `y = W·x`, stored either as fp32 or in a ggml
/// quantization (Q4_1, Q8_0) repacked for `QuantKernels`.
///
/// Quantized matrices are multiplied without dequantizing, as `product` says: by default the
/// input is quantized to 8 bits per 32-column block and multiplied with the integer codes
/// in integer dot products (`Int8Kernels`, llama.cpp's scheme: the dequantized weights times
/// the rounded input); with `.fp32` the fp32 input meets the codes, and results equal an
/// fp32 product with the dequantized weights up to summation order.
// Why it is safe: the storage is written only in `init` (before the object is
// shared), only read afterwards, and freed in `deinit` when no reference remains.
// Unchecked sendability is safe here: storage written only in init, read-only once shared.
package final class WeightMatrix: @unchecked Sendable {  // Safe: storage immutable once shared.
    /// How the elements are stored.
    package enum Format: String, Sendable {
        case f32, q4_1, q8_0
    }

    /// Output rows.
    package let rows: Int
    /// Input columns.
    package let columns: Int
    /// Storage format.
    package let format: Format
    /// How a quantized matrix meets its input (8-bit or fp32 activations).
    package let product: QuantizedProduct
    private let dense: FloatTensor?
    private let packed: UnsafeMutableRawPointer?
    private let blocks: Int
    private let quads: Int

    /// Wraps an fp32 tensor of shape `[rows, columns]`.
    package init(dense tensor: FloatTensor) {
        self.rows = tensor.rows
        self.columns = tensor.columns
        self.format = .f32
        self.product = .fp32
        self.dense = tensor
        self.packed = nil
        self.blocks = 0
        self.quads = 0
    }

    /// Repacks ggml-encoded rows (`rows × columns/32` blocks of Q4_1 or Q8_0, row-major) for
    /// the quantized kernels, which multiply them with the input as `product` says. `columns`
    /// must be a multiple of 32 and `bytes` exactly the size of the encoded matrix (the caller
    /// checked both).
    package init(ggml format: Format, rows: Int, columns: Int, bytes: UnsafeRawBufferPointer, product: QuantizedProduct = .int8) {
        precondition(format != .f32 && columns % 32 == 0 && rows > 0)
        let blocks = columns / 32
        let quads = (rows + 3) / 4
        let sourceBlock = format == .q4_1 ? 20 : 34
        precondition(bytes.count == rows * blocks * sourceBlock, "WeightMatrix: \(bytes.count) bytes for \(rows)x\(columns) \(format)")
        let quadBlock = format == .q4_1 ? Kernels.q41QuadBlockBytes : Kernels.q80QuadBlockBytes
        let packed = UnsafeMutableRawPointer.allocate(byteCount: quads * blocks * quadBlock, alignment: 64)
        packed.initializeMemory(as: UInt8.self, repeating: 0, count: quads * blocks * quadBlock)
        let src = bytes.baseAddress!
        for q in 0..<quads {
            for b in 0..<blocks {
                let dst = packed + (q * blocks + b) * quadBlock
                for r in 0..<4 where q * 4 + r < rows {
                    let block = src + ((q * 4 + r) * blocks + b) * sourceBlock
                    // Scales keep GGUF's fp16 bits (see QuantKernels' layouts).
                    dst.storeBytes(of: block.loadUnaligned(as: UInt16.self), toByteOffset: 2 * r, as: UInt16.self)
                    if format == .q4_1 {
                        dst.storeBytes(
                            of: block.loadUnaligned(fromByteOffset: 2, as: UInt16.self), toByteOffset: 8 + 2 * r, as: UInt16.self)
                        let qs = block + 4
                        for i in 0..<4 {
                            var word: UInt32 = 0
                            for k in 0..<8 {
                                let e = 4 * k + i
                                let byte = qs.load(fromByteOffset: e % 16, as: UInt8.self)
                                let nibble = e < 16 ? byte & 0x0F : byte >> 4
                                word |= UInt32(nibble) << (4 * k)
                            }
                            dst.storeBytes(of: word.littleEndian, toByteOffset: 16 + 4 * (4 * r + i), as: UInt32.self)
                        }
                    } else {
                        let qs = block + 2
                        for h in 0..<2 {
                            for i in 0..<4 {
                                var word: UInt32 = 0
                                for k in 0..<4 {
                                    let v = Int(qs.load(fromByteOffset: 16 * h + 4 * k + i, as: Int8.self)) + 128
                                    word |= UInt32(v) << (8 * k)
                                }
                                dst.storeBytes(
                                    of: word.littleEndian, toByteOffset: 8 + 64 * h + 4 * (4 * r + i), as: UInt32.self)
                            }
                        }
                    }
                }
            }
        }
        self.rows = rows
        self.columns = columns
        self.format = format
        self.product = product
        self.dense = nil
        self.packed = packed
        self.blocks = blocks
        self.quads = quads
    }

    deinit {
        self.packed?.deallocate()
    }

    /// `[rows, columns]`.
    package var shape: [Int] { [self.rows, self.columns] }

    /// Bytes the weights occupy in memory.
    package var byteCount: Int {
        switch self.format {
        case .f32: self.rows * self.columns * 4
        case .q4_1: self.quads * self.blocks * Kernels.q41QuadBlockBytes
        case .q8_0: self.quads * self.blocks * Kernels.q80QuadBlockBytes
        }
    }

    private static func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        halfToFloat(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
    }

    /// Floats of scratch `matmul` needs for `batch` input rows: the input prepared for the
    /// quantized kernels (`Input`).
    package func scratchCount(batch: Int) -> Int {
        guard self.format != .f32 else { return 0 }
        return batch * Self.preparedFloats(columns: self.columns, product: self.product)
    }

    /// Floats one input row of `columns` takes once prepared for `product`: 8-bit blocks
    /// (`Int8Kernels.blockBytes` per 32 columns), or the fp32 expansion and block sums.
    static func preparedFloats(columns: Int, product: QuantizedProduct) -> Int {
        switch product {
        case .int8: columns / 32 * Int8Kernels.blockBytes / MemoryLayout<Float>.size
        case .fp32: Kernels.expandedCount(columns: columns) + columns / 32
        }
    }

    /// Groups of four output rows: the unit products are split on.
    package var quadCount: Int { (self.rows + 3) / 4 }

    /// The activations of one or more products over the same input rows: fp32 `x`
    /// (`[batch, columns]`) and, when some matrix is quantized, the rows prepared for the
    /// quantized kernels in the caller's scratch: 8-bit blocks (`Int8Kernels.quantize`, row
    /// after row), or for `QuantizedProduct.fp32` the expansion `xq` of every row, then the
    /// per-block sums.
    package struct Input {
        let x: UnsafePointer<Float>
        let prepared: UnsafeMutablePointer<Float>
        let batch: Int
        let columns: Int

        /// Prepares `batch` rows of `x` in `scratch` for `product` (nothing when `prepare` is
        /// false: every matrix is fp32).
        init(
            _ x: UnsafePointer<Float>, batch: Int, columns: Int, scratch: UnsafeMutablePointer<Float>, product: QuantizedProduct,
            prepare: Bool
        ) {
            self.x = x
            self.prepared = scratch
            self.batch = batch
            self.columns = columns
            let stride = WeightMatrix.preparedFloats(columns: columns, product: product)
            for t in 0..<(prepare ? batch : 0) {
                switch product {
                case .int8:
                    Int8Kernels.quantize(x + t * columns, columns: columns, into: UnsafeMutableRawPointer(scratch + t * stride))
                case .fp32:
                    let xqCount = Kernels.expandedCount(columns: columns)
                    Kernels.quantized.expand(
                        x + t * columns, columns: columns, scratch + t * xqCount, scratch + batch * xqCount + t * (columns / 32))
                }
            }
        }
    }

    /// `y[t][o] = W[o] · x[t]` for `t < batch`; `x` is `[batch, columns]`, `y` is
    /// `[batch, rows]`; `scratch` holds at least `scratchCount(batch:)` floats. Splits the
    /// rows across the pool's threads in one region.
    package func matmul(
        _ x: UnsafePointer<Float>, batch: Int, _ y: UnsafeMutablePointer<Float>, pool: WorkerPool,
        scratch: UnsafeMutablePointer<Float>
    ) {
        Self.multiply([self], into: [y], x, batch: batch, scratch: scratch, pool: pool)
    }

    /// Several products over the same input in one pool region, the input expanded once
    /// (fused Q/K/V, fused gate/up). Every matrix has `columns` equal to the input's;
    /// `outputs[m]` is `[batch, matrices[m].rows]`; `scratch` holds the largest
    /// `scratchCount(batch:)` of the matrices.
    ///
    /// Without `epilogue` the region's items are the quads of every matrix in turn. With it
    /// (all matrices with the same `rows`), an item computes the same quads of every matrix,
    /// then calls `epilogue(rowRange)` on those rows while they are in cache (SwiGLU).
    /// Each output element is computed the same way whatever the chunking or thread count.
    package static func multiply(
        _ matrices: [WeightMatrix], into outputs: [UnsafeMutablePointer<Float>], _ x: UnsafePointer<Float>,
        batch: Int, scratch: UnsafeMutablePointer<Float>, pool: WorkerPool, epilogue: ((Range<Int>) -> Void)? = nil
    ) {
        let columns = matrices[0].columns
        precondition(matrices.count == outputs.count && matrices.allSatisfy { $0.columns == columns })
        let product = matrices.first { $0.packed != nil }?.product
        precondition(matrices.allSatisfy { $0.packed == nil || $0.product == product }, "one input prepared for two kinds of product")
        let input = Input(x, batch: batch, columns: columns, scratch: scratch, product: product ?? .int8, prepare: product != nil)
        if let epilogue {
            let rows = matrices[0].rows
            precondition(matrices.allSatisfy { $0.rows == rows })
            let quads = matrices[0].quadCount
            pool.run(count: quads, grain: Self.grain(quads, columns: columns, batch: batch, pool: pool)) { range, _ in
                for m in matrices.indices { matrices[m].multiply(quads: range, input, outputs[m]) }
                epilogue((4 * range.lowerBound)..<min(4 * range.upperBound, rows))
            }
            return
        }
        let total = matrices.reduce(0) { $0 + $1.quadCount }
        pool.run(count: total, grain: Self.grain(total, columns: columns, batch: batch, pool: pool)) { range, _ in
            var offset = 0
            for m in matrices.indices {
                let count = matrices[m].quadCount
                let lo = max(range.lowerBound, offset)
                let hi = min(range.upperBound, offset + count)
                if lo < hi { matrices[m].multiply(quads: (lo - offset)..<(hi - offset), input, outputs[m]) }
                offset += count
            }
        }
    }

    /// Quads per chunk: about 8 chunks per thread (dynamic chunking evens out the threads),
    /// at least 4 quads (the atomic counter's cost) and at most 64 (fewer for big batches).
    /// A product under `WorkerPool.minimumParallelWork` multiply-adds is one chunk: it runs
    /// inline, as handing it over would cost more than it saves (tiny models).
    private static func grain(_ quads: Int, columns: Int, batch: Int, pool: WorkerPool) -> Int {
        guard pool.threads > 1, quads * 4 * columns * batch >= WorkerPool.minimumParallelWork else { return quads }
        let cap = max(4, 64 / max(1, (batch + 3) / 4))
        return min(max(4, quads / (pool.threads * 8)), cap)
    }

    /// Rows `4 * quads.lowerBound ..< min(4 * quads.upperBound, rows)` of the product for
    /// every input row of `input`.
    package func multiply(quads range: Range<Int>, _ input: Input, _ output: UnsafeMutablePointer<Float>) {
        let batch = input.batch
        guard let packed = self.packed else {
            Kernels.fp32.matmulRows(
                self.dense!.pointer, (4 * range.lowerBound)..<min(4 * range.upperBound, self.rows), rows: self.rows,
                cols: self.columns, input.x, batch: batch, output)
            return
        }
        let weights = UnsafeRawPointer(packed)
        if self.product == .int8 {
            self.multiplyInt8(quads: range, weights, input, output)
            return
        }
        let xqCount = Kernels.expandedCount(columns: self.columns)
        // Quads in slices of 16 so a slice of weights stays in cache across the batch.
        var lo = range.lowerBound
        while lo < range.upperBound {
            let hi = min(lo + 16, range.upperBound)
            var t = 0
            while t + 4 <= batch {
                let xq = UnsafePointer(input.prepared) + t * xqCount
                let y = output + t * self.rows
                if self.format == .q4_1 {
                    let xsum = UnsafePointer(input.prepared) + batch * xqCount + t * self.blocks
                    Kernels.quantized.q41x4(
                        weights, blocks: self.blocks, rows: self.rows, quads: lo..<hi, xq, xqStride: xqCount, xsum, y,
                        yStride: self.rows)
                } else {
                    Kernels.quantized.q80x4(
                        weights, blocks: self.blocks, rows: self.rows, quads: lo..<hi, xq, xqStride: xqCount, y, yStride: self.rows)
                }
                t += 4
            }
            while t < batch {
                let xq = UnsafePointer(input.prepared) + t * xqCount
                let y = output + t * self.rows
                if self.format == .q4_1 {
                    let xsum = UnsafePointer(input.prepared) + batch * xqCount + t * self.blocks
                    Kernels.quantized.q41(weights, blocks: self.blocks, rows: self.rows, quads: lo..<hi, xq, xsum, y)
                } else {
                    Kernels.quantized.q80(weights, blocks: self.blocks, rows: self.rows, quads: lo..<hi, xq, y)
                }
                t += 1
            }
            lo = hi
        }
    }

    /// `multiply(quads:)` with the integer kernels: up to 4 input rows per call, quads in
    /// slices of 16 so a slice of weights stays in cache across the batch.
    private func multiplyInt8(
        quads range: Range<Int>, _ weights: UnsafeRawPointer, _ input: Input, _ output: UnsafeMutablePointer<Float>,
        build: Int8Kernels = Kernels.int8
    ) {
        let stride = Self.preparedFloats(columns: self.columns, product: .int8)
        let xStride = self.blocks
        var lo = range.lowerBound
        while lo < range.upperBound {
            let hi = min(lo + 16, range.upperBound)
            var t = 0
            while t < input.batch {
                let inputs = min(4, input.batch - t)
                let x = UnsafeRawPointer(input.prepared + t * stride)
                let y = output + t * self.rows
                build.multiply(
                    self.format == .q4_1 ? .q4_1 : .q8_0, weights, blocks: self.blocks, rows: self.rows, quads: lo..<hi, x, inputs: inputs,
                    xStride: xStride, y, yStride: self.rows)
                t += inputs
            }
            lo = hi
        }
    }

    /// `y = W·x` for `batch` rows of `x` on the calling thread with the integer kernels of
    /// `build`, whatever `Kernels.product` is (tests compare the builds).
    func int8Product(_ x: [Float], batch: Int, build: Int8Kernels) -> [Float] {
        precondition(self.packed != nil && x.count == batch * self.columns)
        var y = [Float](repeating: .nan, count: batch * self.rows)
        var scratch = [Float](repeating: 0, count: batch * Self.preparedFloats(columns: self.columns, product: .int8))
        x.withUnsafeBufferPointer { xp in
            scratch.withUnsafeMutableBufferPointer { sp in
                y.withUnsafeMutableBufferPointer { yp in
                    let input = Input(
                        xp.baseAddress!, batch: batch, columns: self.columns, scratch: sp.baseAddress!, product: .int8, prepare: true)
                    self.multiplyInt8(quads: 0..<self.quadCount, UnsafeRawPointer(self.packed!), input, yp.baseAddress!, build: build)
                }
            }
        }
        return y
    }

    /// Writes row `r` as fp32 into `out` (`columns` floats): the embedding lookup.
    package func copyRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        precondition(r >= 0 && r < self.rows)
        guard let packed = self.packed else {
            out.update(from: self.dense!.pointer + r * self.columns, count: self.columns)
            return
        }
        let q = r / 4
        let rr = r % 4
        let quadBlock = self.format == .q4_1 ? Kernels.q41QuadBlockBytes : Kernels.q80QuadBlockBytes
        for b in 0..<self.blocks {
            let block = UnsafeRawPointer(packed + (q * self.blocks + b) * quadBlock)
            let d = Self.half(block, 2 * rr)
            let o = out + 32 * b
            if self.format == .q4_1 {
                let m = Self.half(block, 8 + 2 * rr)
                for i in 0..<4 {
                    let word = UInt32(littleEndian: block.load(fromByteOffset: 16 + 4 * (4 * rr + i), as: UInt32.self))
                    for k in 0..<8 { o[4 * k + i] = Float((word >> (4 * k)) & 0xF) * d + m }
                }
            } else {
                for h in 0..<2 {
                    for i in 0..<4 {
                        let word = UInt32(littleEndian: block.load(fromByteOffset: 8 + 64 * h + 4 * (4 * rr + i), as: UInt32.self))
                        for k in 0..<4 { o[16 * h + 4 * k + i] = Float(Int((word >> (8 * k)) & 0xFF) - 128) * d }
                    }
                }
            }
        }
    }

    /// All elements as fp32, row-major (tests and tools).
    package var values: [Float] {
        if let dense = self.dense { return dense.values }
        var out = [Float](repeating: 0, count: self.rows * self.columns)
        out.withUnsafeMutableBufferPointer { buffer in
            for r in 0..<self.rows { self.copyRow(r, into: buffer.baseAddress! + r * self.columns) }
        }
        return out
    }
}
