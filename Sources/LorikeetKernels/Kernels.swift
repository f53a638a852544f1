import Dispatch

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// fp32 compute kernels over raw pointers. Every loop here is bounds-free on purpose
/// (checked `Array` indexing measured 2.5x slower); callers guarantee the sizes.
///
/// Like `QuantKernels`, this target is always compiled with optimization and for the build
/// machine's CPU (Package.swift), so debug builds of the engine run these at full speed.
/// The engine calls whole loops (`attendHead`, `addLoRA`), never `dot` per element run: a
/// call across the module boundary per 16-element dot cost 5% of decode speed on the tiny
/// fixture model (cross-module calls are not inlined).
///
/// Results never depend on the thread count or the batch size: each output element is
/// always one `dot` over the same elements in the same order. That is what makes a
/// request's tokens identical whether it runs alone or batched with others.
package enum Kernels {
    /// Dot product with eight independent accumulators (vectorizable, fixed order).
    @inline(__always)
    package static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var s0: Float = 0
        var s1: Float = 0
        var s2: Float = 0
        var s3: Float = 0
        var s4: Float = 0
        var s5: Float = 0
        var s6: Float = 0
        var s7: Float = 0
        var i = 0
        while i &+ 8 <= n {
            s0 += a[i] * b[i]
            s1 += a[i &+ 1] * b[i &+ 1]
            s2 += a[i &+ 2] * b[i &+ 2]
            s3 += a[i &+ 3] * b[i &+ 3]
            s4 += a[i &+ 4] * b[i &+ 4]
            s5 += a[i &+ 5] * b[i &+ 5]
            s6 += a[i &+ 6] * b[i &+ 6]
            s7 += a[i &+ 7] * b[i &+ 7]
            i &+= 8
        }
        var s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
        while i < n {
            s += a[i] * b[i]
            i &+= 1
        }
        return s
    }

    /// `y[t][o] = W[o] · x[t]` for `t < batch`, `o < rows`; `W` is `[rows, cols]` row-major,
    /// `x` is `[batch, cols]`, `y` is `[batch, rows]`. Split across `threads` by output rows
    /// when the work is large enough to pay for the dispatch.
    package static func matmul(
        _ w: UnsafePointer<Float>, rows: Int, cols: Int,
        _ x: UnsafePointer<Float>, batch: Int,
        _ y: UnsafeMutablePointer<Float>, threads: Int
    ) {
        let work = rows * cols * batch
        let chunks = threads > 1 && work >= 1 << 16 ? min(threads, rows) : 1
        if chunks == 1 {
            self.matmulRows(w, 0..<rows, rows: rows, cols: cols, x, batch: batch, y)
            return
        }
        // The pointers are only read (w, x) or written at disjoint rows (y) by each chunk,
        // and concurrentPerform returns after every chunk finished.
        let p = ProductPointers(weights: UnsafeRawPointer(w), input: x, output: y)
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            let lo = rows * c / chunks
            let hi = rows * (c + 1) / chunks
            Kernels.matmulRows(
                p.weights.assumingMemoryBound(to: Float.self), lo..<hi, rows: rows, cols: cols, p.input, batch: batch, p.output)
        }
    }

    @inline(__always)
    private static func matmulRows(
        _ w: UnsafePointer<Float>, _ range: Range<Int>, rows: Int, cols: Int,
        _ x: UnsafePointer<Float>, batch: Int, _ y: UnsafeMutablePointer<Float>
    ) {
        for o in range {
            let wr = w + o * cols
            for t in 0..<batch {
                y[t * rows + o] = self.dot(wr, x + t * cols, cols)
            }
        }
    }

    /// One attention head for one query: `scores[p] = q · K[p] · scale` for `p < span`, the
    /// softmax of the scores, then `out = Σ scores[p] · V[p]`. `keys` and `values` point at
    /// the head's elements of position 0; position `p` is `stride · p` floats further. `q`,
    /// `out` and every key and value row hold `headDim` floats; `scores` holds `span`.
    package static func attendHead(
        _ q: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, stride: Int, span: Int,
        headDim: Int, scale: Float, scores: UnsafeMutablePointer<Float>, _ out: UnsafeMutablePointer<Float>
    ) {
        for p in 0..<span {
            scores[p] = self.dot(q, keys + p * stride, headDim) * scale
        }
        self.softmax(scores, span)
        out.update(repeating: 0, count: headDim)
        for p in 0..<span {
            let s = scores[p]
            let vp = values + p * stride
            for d in 0..<headDim { out[d] += s * vp[d] }
        }
    }

    /// `y += scaling · B·(A·x)` for one row (a LoRA update): `A` is `[rank, inDim]`, `B` is
    /// `[outDim, rank]`, both row-major; `tmp` holds `rank` floats.
    package static func addLoRA(
        a: UnsafePointer<Float>, b: UnsafePointer<Float>, rank: Int, inDim: Int, outDim: Int, scaling: Float,
        _ x: UnsafePointer<Float>, tmp: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>
    ) {
        for j in 0..<rank { tmp[j] = self.dot(a + j * inDim, x, inDim) }
        for o in 0..<outDim { y[o] += scaling * self.dot(b + o * rank, tmp, rank) }
    }

    /// `out = x / sqrt(mean(x²) + eps) * weight` over `n` elements.
    package static func rmsNorm(
        _ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, _ n: Int, eps: Float,
        _ out: UnsafeMutablePointer<Float>
    ) {
        let ss = self.dot(x, x, n)
        let inv = 1 / (ss / Float(n) + eps).squareRoot()
        for i in 0..<n { out[i] = x[i] * inv * weight[i] }
    }

    /// In-place softmax over `n` elements.
    package static func softmax(_ x: UnsafeMutablePointer<Float>, _ n: Int) {
        var m = -Float.infinity
        for i in 0..<n where x[i] > m { m = x[i] }
        var sum: Float = 0
        for i in 0..<n {
            let e = expf(x[i] - m)
            x[i] = e
            sum += e
        }
        let inv = 1 / sum
        for i in 0..<n { x[i] *= inv }
    }

    /// `x = x + y` over `n` elements.
    package static func addInPlace(_ x: UnsafeMutablePointer<Float>, _ y: UnsafePointer<Float>, _ n: Int) {
        for i in 0..<n { x[i] += y[i] }
    }

    /// `gate = silu(gate) * up` over `n` elements (the SwiGLU activation).
    package static func swiglu(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, _ n: Int) {
        for i in 0..<n {
            let g = gate[i]
            gate[i] = g / (1 + expf(-g)) * up[i]
        }
    }
}

/// Raw pointers handed to the `concurrentPerform` chunks of a matrix product (fp32 and
/// quantized weights alike).
// Unchecked Sendable is safe: the caller keeps every buffer alive for the whole
// (synchronous) `concurrentPerform`; chunks only read `weights` and `input`, and each chunk
// writes a disjoint set of rows of `output`.
package struct ProductPointers: @unchecked Sendable {
    /// The weights, fp32 or quantized quad blocks.
    package let weights: UnsafeRawPointer
    /// The activations, `[batch, columns]` (or the expanded `xq` for quantized weights).
    package let input: UnsafePointer<Float>
    /// The products, `[batch, rows]`.
    package let output: UnsafeMutablePointer<Float>

    /// Bundles the three pointers of one product.
    package init(weights: UnsafeRawPointer, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>) {
        self.weights = weights
        self.input = input
        self.output = output
    }
}
