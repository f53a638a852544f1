package import LorikeetGGUF
import LorikeetKernelDispatch

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A sequence's key/value cache: for each layer, `[capacity, kvDim]` keys and values.
///
/// The storage for the model's whole context is reserved once as address space (an anonymous
/// `MAP_NORESERVE` mapping) and the kernel backs pages only as positions are written: the
/// cache grows without ever copying what it holds, and a short sequence costs only the pages
/// it touched. Where the reservation is refused (strict overcommit), it falls back to heap
/// buffers that grow by doubling with a copy.
///
/// Transparent huge pages are refused for the reservation (`MADV_NOHUGEPAGE`): with THP
/// `always`, the first position written would fault in 2 MiB per layer buffer, and a short
/// sequence (or a kept prefix-cache entry) would hold 60 times that on a 30-layer model.
///
/// Owned and mutated by one thread at a time (the scheduler thread), so not `Sendable`.
package final class KVCache {
    /// Positions filled so far.
    package private(set) var length = 0
    private var capacity = 0
    private let layers: Int
    private let kvDim: Int
    private let maxLength: Int
    private var keys: [UnsafeMutablePointer<Float>] = []
    private var values: [UnsafeMutablePointer<Float>] = []
    /// The reservation, when the kernel granted it (else the layers are heap buffers).
    private let mapping: UnsafeMutableRawPointer?
    private let mappingBytes: Int
    /// Positions still backed by the reservation after `release(beyond:)` (else `maxLength`).
    private var reservedLength: Int

    init(layers: Int, kvDim: Int, maxLength: Int) {
        self.layers = layers
        self.kvDim = kvDim
        self.maxLength = maxLength
        let perBuffer = maxLength * kvDim
        let bytes = layers * 2 * perBuffer * MemoryLayout<Float>.stride
        let p = bytes > 0 ? mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0) : nil
        self.reservedLength = maxLength
        if let p, p != UnsafeMutableRawPointer(bitPattern: -1) {
            #if os(Linux)
                _ = madvise(p, bytes, MADV_NOHUGEPAGE)
            #endif
            self.mapping = p
            self.mappingBytes = bytes
            let floats = p.bindMemory(to: Float.self, capacity: layers * 2 * perBuffer)
            for l in 0..<layers {
                self.keys.append(floats + (2 * l) * perBuffer)
                self.values.append(floats + (2 * l + 1) * perBuffer)
            }
            self.capacity = maxLength
        } else {
            self.mapping = nil
            self.mappingBytes = 0
        }
    }

    deinit {
        if let mapping = self.mapping {
            munmap(mapping, self.mappingBytes)
        } else {
            for p in self.keys { p.deallocate() }
            for p in self.values { p.deallocate() }
        }
    }

    /// Makes positions `< n` writable: nothing to do with the reservation; the fallback grows
    /// its buffers by doubling.
    func reserve(_ n: Int) {
        guard n > self.capacity else { return }
        precondition(self.mapping == nil, "KVCache: position \(n) past the reserved \(self.capacity)")
        let newCapacity = min(max(n, self.capacity * 2, 16), max(self.maxLength, n))
        for l in 0..<self.layers {
            for isKey in [true, false] {
                let p = UnsafeMutablePointer<Float>.allocate(capacity: newCapacity * self.kvDim)
                if self.capacity > 0 {
                    let old = isKey ? self.keys[l] : self.values[l]
                    p.initialize(from: old, count: self.length * self.kvDim)
                    old.deallocate()
                }
                if isKey {
                    if l < self.keys.count { self.keys[l] = p } else { self.keys.append(p) }
                } else {
                    if l < self.values.count { self.values[l] = p } else { self.values.append(p) }
                }
            }
        }
        self.capacity = newCapacity
    }
    @inline(__always) func key(_ layer: Int, _ pos: Int) -> UnsafeMutablePointer<Float> {
        self.keys[layer] + pos * self.kvDim
    }

    @inline(__always) func value(_ layer: Int, _ pos: Int) -> UnsafeMutablePointer<Float> {
        self.values[layer] + pos * self.kvDim
    }

    func advance(to n: Int) { self.length = max(self.length, n) }

    /// Takes positions `start..<count` from `other` (a sequence with the same prefix and
    /// adapter: the keys and values of a position depend only on the tokens up to it);
    /// positions below `start` must already be filled.
    package func copyPrefix(of other: KVCache, from start: Int = 0, count: Int) {
        precondition(other.length >= count && other.layers == self.layers && other.kvDim == self.kvDim)
        precondition(start >= 0 && start <= min(self.length, count))
        self.reserve(count)
        let offset = start * self.kvDim
        for layer in 0..<self.layers {
            (self.keys[layer] + offset).update(from: other.keys[layer] + offset, count: (count - start) * self.kvDim)
            (self.values[layer] + offset).update(from: other.values[layer] + offset, count: (count - start) * self.kvDim)
        }
        self.advance(to: count)
    }

    /// Forgets positions `>= n` (used to retry or truncate; capacity is kept).
    package func truncate(to n: Int) { self.length = min(self.length, n) }

    /// Gives the reservation's pages past position `n` back to the system (a cache kept
    /// for reading only: the prefix cache). Positions `< n` stay; nothing past them may be
    /// written again.
    func release(beyond n: Int) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        guard let mapping = self.mapping, page > 0, n < self.reservedLength else { return }
        let perBuffer = self.maxLength * self.kvDim * MemoryLayout<Float>.stride
        let keep = (n * self.kvDim * MemoryLayout<Float>.stride + page - 1) / page * page
        if keep < perBuffer {
            for buffer in 0..<(2 * self.layers) {
                munmap(mapping + buffer * perBuffer + keep, perBuffer - keep)
            }
        }
        self.reservedLength = n
        self.length = min(self.length, n)
        self.capacity = min(self.capacity, n)
    }

    /// Bytes the cache's positions hold in memory: whole pages per layer buffer for the
    /// reservation, the allocated capacity for heap buffers.
    var residentBytes: Int {
        let row = self.kvDim * MemoryLayout<Float>.stride
        guard self.mapping != nil else { return 2 * self.layers * self.capacity * row }
        let page = max(1, Int(sysconf(Int32(_SC_PAGESIZE))))
        return 2 * self.layers * ((self.length * row + page - 1) / page * page)
    }
}

/// One token to push through the model in a batched forward pass.
package struct ForwardRow {
    /// The sequence's cache; the row's key/value are written at `position`.
    package var cache: KVCache
    /// Input token id (must be `< vocabSize`).
    package var token: UInt32
    /// Absolute position (RoPE angle, attention span `0...position`).
    package var position: Int
    /// The adapter for this row's sequence, or nil for the base model.
    package var adapter: LoRAWeights?
    /// Whether to compute logits for this row.
    package var wantLogits: Bool

    /// Creates a row.
    package init(cache: KVCache, token: UInt32, position: Int, adapter: LoRAWeights?, wantLogits: Bool) {
        self.cache = cache
        self.token = token
        self.position = position
        self.adapter = adapter
        self.wantLogits = wantLogits
    }
}

/// Scratch buffers for a forward pass, grown on demand and reused across steps.
/// Owned by one thread (the scheduler's), so not `Sendable`.
package final class ForwardWorkspace {
    private var buffers: [UnsafeMutablePointer<Float>] = []
    private var sizes: [Int] = []

    /// Creates an empty workspace.
    package init() {}

    deinit {
        for b in self.buffers { b.deallocate() }
    }

    /// Buffer number `slot` with room for at least `count` floats.
    func buffer(_ slot: Int, _ count: Int) -> UnsafeMutablePointer<Float> {
        while self.buffers.count <= slot {
            self.buffers.append(.allocate(capacity: 1))
            self.sizes.append(1)
        }
        if self.sizes[slot] < count {
            self.buffers[slot].deallocate()
            self.buffers[slot] = .allocate(capacity: count)
            self.sizes[slot] = count
        }
        return self.buffers[slot]
    }
}

/// A Llama decoder (RMSNorm, rotate-half RoPE, grouped-query attention, SwiGLU MLP)
/// computing in fp32 on the CPU, with per-row LoRA.
///
/// Immutable and `Sendable`; the mutable state of a forward pass lives in the caller's
/// `KVCache`s and `ForwardWorkspace`. Call `forward` from a dedicated thread, never from
/// the Swift concurrency pool.
package final class LlamaModel: Sendable {
    /// The weights (and their config).
    package let weights: LlamaWeights
    /// Threads used by the forward pass (the pool's, caller included).
    package var threads: Int { self.pool.threads }
    /// The compute threads, created once for this model: every matrix product and the
    /// attention of a layer run as regions on it.
    private let pool: WorkerPool
    /// RoPE `cos`/`sin` per position: `[maxPositions, headDim/2]` each.
    private let ropeCos: FloatTensor
    private let ropeSin: FloatTensor

    /// The model's configuration.
    package var config: LlamaConfig { self.weights.config }

    /// Prepares a model for inference; `threads` ≥ 1.
    package init(weights: LlamaWeights, threads: Int = 1) {
        self.weights = weights
        self.pool = WorkerPool(threads: threads)
        let c = weights.config
        let half = c.headDim / 2
        var cosValues = [Float](repeating: 0, count: c.maxPositionEmbeddings * half)
        var sinValues = cosValues
        for j in 0..<half {
            let invFreq = 1.0 / pow(c.ropeTheta, Double(2 * j) / Double(c.headDim))
            for p in 0..<c.maxPositionEmbeddings {
                let angle = Double(p) * invFreq
                cosValues[p * half + j] = Float(cos(angle))
                sinValues[p * half + j] = Float(sin(angle))
            }
        }
        self.ropeCos = FloatTensor(shape: [c.maxPositionEmbeddings, half], values: cosValues)
        self.ropeSin = FloatTensor(shape: [c.maxPositionEmbeddings, half], values: sinValues)
    }

    /// A fresh, empty cache for one sequence.
    package func makeCache() -> KVCache {
        KVCache(layers: self.config.numLayers, kvDim: self.config.kvDim, maxLength: self.config.maxPositionEmbeddings)
    }

    /// Runs one batched step. Rows of the same sequence must be in increasing position
    /// order and contiguous with what the cache holds. Returns logits (`vocabSize` each)
    /// for the rows with `wantLogits`, in row order.
    package func forward(_ rows: [ForwardRow], workspace ws: ForwardWorkspace) -> [[Float]] {
        let c = self.config
        let n = rows.count
        guard n > 0 else { return [] }
        let hidden = c.hiddenSize
        let qDim = c.qDim
        let kvDim = c.kvDim
        let inter = c.intermediateSize
        let headDim = c.headDim
        let half = headDim / 2
        let group = c.numHeads / c.numKVHeads
        for row in rows {
            precondition(row.position < c.maxPositionEmbeddings && Int(row.token) < c.vocabSize)
            row.cache.reserve(row.position + 1)
        }
        let h = ws.buffer(0, n * hidden)
        let xn = ws.buffer(1, n * hidden)
        let q = ws.buffer(2, n * qDim)
        let k = ws.buffer(3, n * kvDim)
        let v = ws.buffer(4, n * kvDim)
        let att = ws.buffer(5, n * qDim)
        let tmp = ws.buffer(6, n * hidden)
        let gate = ws.buffer(7, n * inter)
        let up = ws.buffer(8, n * inter)
        let maxPos = rows.map(\.position).max()! + 1
        let scores = ws.buffer(9, self.pool.threads * group * maxPos)
        let maxRank = rows.compactMap { $0.adapter?.rank }.max() ?? 0
        let loraTmp = ws.buffer(10, max(maxRank, 1) * self.pool.threads)
        let w = self.weights
        let scratch = ws.buffer(12, max(w.scratchPerRow * n, 1))

        for (i, row) in rows.enumerated() {
            w.embedTokens.copyRow(Int(row.token), into: h + i * hidden)
        }
        let scale = 1 / Float(headDim).squareRoot()
        let caches = rows.map(\.cache)
        let positions = rows.map(\.position)
        // Attention items (row, KV head) run inline when all of them are little work.
        let attentionWork = positions.reduce(0) { $0 + $1 + 1 } * 2 * qDim
        let attentionGrain = attentionWork < WorkerPool.minimumParallelWork ? n * c.numKVHeads : 1
        for l in 0..<c.numLayers {
            let layer = w.layers[l]
            for i in 0..<n {
                Kernels.fp32.rmsNorm(h + i * hidden, layer.inputNorm.pointer, hidden, eps: c.rmsNormEps, xn + i * hidden)
            }
            self.project([.qProj, .kProj, .vProj], l, rows, xn, [q, k, v], loraTmp, scratch)
            for (i, row) in rows.enumerated() {
                let cosp = self.ropeCos.pointer + row.position * half
                let sinp = self.ropeSin.pointer + row.position * half
                for hd in 0..<c.numHeads { Self.rope(q + i * qDim + hd * headDim, cosp, sinp, half) }
                for hd in 0..<c.numKVHeads { Self.rope(k + i * kvDim + hd * headDim, cosp, sinp, half) }
                row.cache.key(l, row.position).update(from: k + i * kvDim, count: kvDim)
                row.cache.value(l, row.position).update(from: v + i * kvDim, count: kvDim)
            }
            // One item per (row, KV head): the group's query heads read each K/V row once.
            self.pool.run(count: n * c.numKVHeads, grain: attentionGrain) { items, thread in
                let groupScores = scores + thread * group * maxPos
                for item in items {
                    let i = item / c.numKVHeads
                    let kvHead = item % c.numKVHeads
                    let kvOffset = kvHead * headDim
                    let qOffset = i * qDim + kvHead * group * headDim
                    Kernels.fp32.attendGroup(
                        q + qOffset, group: group, keys: caches[i].key(l, 0) + kvOffset,
                        values: caches[i].value(l, 0) + kvOffset, stride: kvDim, span: positions[i] + 1, headDim: headDim,
                        scale: scale, scores: groupScores, att + qOffset)
                }
            }
            self.project([.oProj], l, rows, att, [tmp], loraTmp, scratch)
            Kernels.fp32.addInPlace(h, tmp, n * hidden)
            for i in 0..<n {
                Kernels.fp32.rmsNorm(h + i * hidden, layer.postAttentionNorm.pointer, hidden, eps: c.rmsNormEps, xn + i * hidden)
            }
            self.gatedMLP(l, rows, xn, gate, up, loraTmp, scratch)
            self.project([.downProj], l, rows, gate, [tmp], loraTmp, scratch)
            Kernels.fp32.addInPlace(h, tmp, n * hidden)
        }
        for row in rows { row.cache.advance(to: row.position + 1) }

        let wanted = rows.indices.filter { rows[$0].wantLogits }
        guard !wanted.isEmpty else { return [] }
        for (j, i) in wanted.enumerated() {
            Kernels.fp32.rmsNorm(h + i * hidden, w.finalNorm.pointer, hidden, eps: c.rmsNormEps, xn + j * hidden)
        }
        let logits = ws.buffer(11, wanted.count * c.vocabSize)
        w.lmHead.matmul(xn, batch: wanted.count, logits, pool: self.pool, scratch: scratch)
        return (0..<wanted.count).map { j in
            Array(UnsafeBufferPointer(start: logits + j * c.vocabSize, count: c.vocabSize))
        }
    }

    /// `y_m = W_m·x` for all rows and every module `m` (one pool region, the input expanded
    /// once), plus `s·B·(A·x)` for rows whose adapter targets the module.
    private func project(
        _ modules: [LinearModule], _ layer: Int, _ rows: [ForwardRow], _ x: UnsafeMutablePointer<Float>,
        _ ys: [UnsafeMutablePointer<Float>], _ loraTmp: UnsafeMutablePointer<Float>, _ scratch: UnsafeMutablePointer<Float>
    ) {
        let linear = self.weights.layers[layer].linear
        WeightMatrix.multiply(
            modules.map { linear[$0.index] }, into: ys, x, batch: rows.count, scratch: scratch, pool: self.pool)
        for (m, module) in modules.enumerated() { self.addLoRA(module, layer, rows, x, ys[m], loraTmp) }
    }

    /// `gate = silu(W_gate·x) * (W_up·x)` for all rows. Without adapters on gate/up the
    /// activation runs inside the region, on each chunk's rows while they are in cache.
    private func gatedMLP(
        _ layer: Int, _ rows: [ForwardRow], _ x: UnsafeMutablePointer<Float>, _ gate: UnsafeMutablePointer<Float>,
        _ up: UnsafeMutablePointer<Float>, _ loraTmp: UnsafeMutablePointer<Float>, _ scratch: UnsafeMutablePointer<Float>
    ) {
        let linear = self.weights.layers[layer].linear
        let matrices = [linear[LinearModule.gateProj.index], linear[LinearModule.upProj.index]]
        let n = rows.count
        let inter = self.config.intermediateSize
        let adapted = rows.contains { row in
            guard let pairs = row.adapter?.pairs[layer] else { return false }
            return pairs[LinearModule.gateProj.index] != nil || pairs[LinearModule.upProj.index] != nil
        }
        if adapted {
            self.project([.gateProj, .upProj], layer, rows, x, [gate, up], loraTmp, scratch)
            Kernels.fp32.swiglu(gate, up, n * inter)
            return
        }
        WeightMatrix.multiply(matrices, into: [gate, up], x, batch: n, scratch: scratch, pool: self.pool) { range in
            for t in 0..<n {
                Kernels.fp32.swiglu(gate + t * inter + range.lowerBound, up + t * inter + range.lowerBound, range.count)
            }
        }
    }

    /// `y += s·B·(A·x)` for the rows whose adapter targets `module` in `layer`: one item per
    /// such row, in a pool region when they are enough work (`loraTmp` holds `maxRank` floats
    /// per pool thread). Each row's result is computed the same way whoever runs it.
    private func addLoRA(
        _ module: LinearModule, _ layer: Int, _ rows: [ForwardRow], _ x: UnsafeMutablePointer<Float>,
        _ y: UnsafeMutablePointer<Float>, _ loraTmp: UnsafeMutablePointer<Float>
    ) {
        let weight = self.weights.layers[layer].linear[module.index]
        let outDim = weight.rows
        let inDim = weight.columns
        var items: [(row: Int, adapter: LoRAWeights, a: UnsafePointer<Float>, b: UnsafePointer<Float>)] = []
        var maxRank = 0
        var work = 0
        for (i, row) in rows.enumerated() {
            guard let adapter = row.adapter, let pair = adapter.pairs[layer][module.index] else { continue }
            items.append((i, adapter, pair.a.pointer, pair.b.pointer))
            maxRank = max(maxRank, adapter.rank)
            work += adapter.rank * (inDim + outDim)
        }
        guard !items.isEmpty else { return }
        let grain = work < WorkerPool.minimumParallelWork ? items.count : 1
        let (rowItems, rank) = (items, maxRank)
        self.pool.run(count: rowItems.count, grain: grain) { range, thread in
            for item in rowItems[range] {
                Kernels.fp32.addLoRA(
                    a: item.a, b: item.b, rank: item.adapter.rank, inDim: inDim, outDim: outDim, scaling: item.adapter.scaling,
                    x + item.row * inDim, tmp: loraTmp + thread * rank, y + item.row * outDim)
            }
        }
    }

    /// HF `rotate_half` RoPE on one head: pairs `(j, j + half)`.
    @inline(__always)
    private static func rope(
        _ x: UnsafeMutablePointer<Float>, _ cos: UnsafePointer<Float>, _ sin: UnsafePointer<Float>, _ half: Int
    ) {
        for j in 0..<half {
            let a = x[j]
            let b = x[j + half]
            x[j] = a * cos[j] - b * sin[j]
            x[j + half] = b * cos[j] + a * sin[j]
        }
    }

    /// Logits at the last position of `tokens` on a fresh cache (tests and tools).
    package func lastLogits(_ tokens: [UInt32], adapter: LoRAWeights? = nil) -> [Float] {
        let cache = self.makeCache()
        let rows = tokens.enumerated().map { p, t in
            ForwardRow(cache: cache, token: t, position: p, adapter: adapter, wantLogits: p == tokens.count - 1)
        }
        return self.forward(rows, workspace: ForwardWorkspace()).last ?? []
    }
}
