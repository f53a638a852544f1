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

    /// `y[t][o] = W[o] · x[t]` for `t < batch` and the output rows `o` in `range`; `W` is
    /// `[rows, cols]` row-major, `x` is `[batch, cols]`, `y` is `[batch, rows]`.
    package static func matmulRows(
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

    /// The query heads that share one key/value head (grouped-query attention) for one
    /// query: for each of the `group` heads `g` (`q + g * headDim`),
    /// `scores[g * span + p] = q_g · K[p] · scale` for `p < span`, the softmax of those scores,
    /// then `out_g = Σ scores[g * span + p] · V[p]` (`out + g * headDim`). Each key and value
    /// row is read once for the whole group. `keys` and `values` point at the KV head's
    /// elements of position 0; position `p` is `stride · p` floats further. `scores` holds
    /// `group * span` floats.
    package static func attendGroup(
        _ q: UnsafePointer<Float>, group: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, stride: Int,
        span: Int, headDim: Int, scale: Float, scores: UnsafeMutablePointer<Float>, _ out: UnsafeMutablePointer<Float>
    ) {
        let vectorized = headDim & 15 == 0
        for p in 0..<span {
            let kp = keys + p &* stride
            for g in 0..<group {
                let qg = q + g &* headDim
                var s: Float
                if vectorized {
                    var acc = SIMD16<Float>()
                    var d = 0
                    while d < headDim {
                        acc +=
                            UnsafeRawPointer(qg + d).loadUnaligned(as: SIMD16<Float>.self)
                            * UnsafeRawPointer(kp + d).loadUnaligned(as: SIMD16<Float>.self)
                        d &+= 16
                    }
                    s = self.horizontalSum(acc)
                } else {
                    s = self.dot(qg, kp, headDim)
                }
                scores[g &* span &+ p] = s * scale
            }
        }
        for g in 0..<group { self.softmax(scores + g &* span, span) }
        for g in 0..<group {
            let o = out + g &* headDim
            let sg = scores + g &* span
            guard vectorized else {
                o.update(repeating: 0, count: headDim)
                for p in 0..<span {
                    let vp = values + p &* stride
                    for d in 0..<headDim { o[d] += sg[p] * vp[d] }
                }
                continue
            }
            // 16 columns at a time, the accumulator in a register across every position (the
            // group's other heads re-read the same V rows from cache).
            var d = 0
            while d < headDim {
                var acc = SIMD16<Float>()
                var vp = UnsafeRawPointer(values + d)
                for p in 0..<span {
                    acc += SIMD16<Float>(repeating: sg[p]) * vp.loadUnaligned(as: SIMD16<Float>.self)
                    vp += stride &* 4
                }
                UnsafeMutableRawPointer(o + d).storeBytes(of: acc, as: SIMD16<Float>.self)
                d &+= 16
            }
        }
    }

    /// Sum of the 16 lanes as a tree of vector halves (the generic `sum()` adds lane by lane).
    @inline(__always)
    package static func horizontalSum(_ v: SIMD16<Float>) -> Float {
        let h = v.lowHalf + v.highHalf
        let q = h.lowHalf + h.highHalf
        let e = q.lowHalf + q.highHalf
        return e[0] + e[1]
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

    /// In-place softmax over `n` elements (vectorized `exp`, fixed summation order).
    package static func softmax(_ x: UnsafeMutablePointer<Float>, _ n: Int) {
        var m = -Float.infinity
        for i in 0..<n where x[i] > m { m = x[i] }
        let mv = SIMD16<Float>(repeating: m)
        var acc = SIMD16<Float>()
        var i = 0
        while i &+ 16 <= n {
            let p = UnsafeMutableRawPointer(x + i)
            let e = self.exp(p.loadUnaligned(as: SIMD16<Float>.self) - mv)
            p.storeBytes(of: e, as: SIMD16<Float>.self)
            acc += e
            i &+= 16
        }
        var sum = acc.sum()
        if i < n {
            var v = SIMD16<Float>(repeating: m)
            for j in 0..<(n &- i) { v[j] = x[i &+ j] }
            let e = self.exp(v - mv)
            for j in 0..<(n &- i) {
                x[i &+ j] = e[j]
                sum += e[j]
            }
        }
        let inv = 1 / sum
        for i in 0..<n { x[i] *= inv }
    }

    /// `e^x` per lane (Cephes `expf`: range reduction by `ln 2`, degree-6 polynomial, within
    /// 2 ulp of `expf` for `x` in `[-87.3, 88.3]`; clamped outside, so never `inf` or NaN for
    /// finite input).
    @inline(__always)
    package static func exp(_ x: SIMD16<Float>) -> SIMD16<Float> {
        // Only operations that lower to vector instructions: the generic SIMD `rounded`,
        // `clamped` and Int32 conversions run lane by lane.
        var x = pointwiseMax(pointwiseMin(x, SIMD16(repeating: 88.3)), SIMD16(repeating: -87.3))
        // Round to nearest with the 1.5 * 2^23 trick: the integer lands in the low mantissa bits.
        let shifted = x * 1.442_695_04 + 12_582_912
        let fx = shifted - 12_582_912
        x = x - fx * 0.693_359_375 - fx * -2.121_944_4e-4
        let z = x * x
        var y = SIMD16<Float>(repeating: 1.987_569_15e-4)
        y = y * x + 1.398_199_950_7e-3
        y = y * x + 8.333_451_907_3e-3
        y = y * x + 4.166_579_589_4e-2
        y = y * x + 1.666_666_545_9e-1
        y = y * x + 5.000_000_120_1e-1
        y = y * z + x + 1
        let n = unsafeBitCast(shifted, to: SIMD16<Int32>.self) &- 0x4B40_0000 &+ 127
        return y * unsafeBitCast(n &<< 23, to: SIMD16<Float>.self)
    }

    /// `x = x + y` over `n` elements.
    package static func addInPlace(_ x: UnsafeMutablePointer<Float>, _ y: UnsafePointer<Float>, _ n: Int) {
        for i in 0..<n { x[i] += y[i] }
    }

    /// `gate = silu(gate) * up` over `n` elements (the SwiGLU activation), vectorized.
    package static func swiglu(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, _ n: Int) {
        var i = 0
        while i &+ 16 <= n {
            let gp = UnsafeMutableRawPointer(gate + i)
            let g = gp.loadUnaligned(as: SIMD16<Float>.self)
            let u = UnsafeRawPointer(up + i).loadUnaligned(as: SIMD16<Float>.self)
            gp.storeBytes(of: g / (1 + self.exp(-g)) * u, as: SIMD16<Float>.self)
            i &+= 16
        }
        if i < n {
            var g = SIMD16<Float>()
            for j in 0..<(n &- i) { g[j] = gate[i &+ j] }
            let s = g / (1 + self.exp(-g))
            for j in 0..<(n &- i) { gate[i &+ j] = s[j] * up[i &+ j] }
        }
    }
}
