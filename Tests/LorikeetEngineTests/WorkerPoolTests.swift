import LorikeetTestSupport
import Synchronization
import Testing

@testable import LorikeetEngine

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

@Suite("WorkerPool: persistent compute threads, dynamic chunks, results equal to serial", .ownThreads)
struct WorkerPoolTests {
    /// Every item of many regions (uneven counts and grains, so the last chunk is short) is
    /// visited exactly once, by a thread index below `threads`, and the output equals the
    /// serial computation.
    @Test(arguments: 1...4)
    func manyRegionsEqualSerial(threads: Int) {
        let pool = WorkerPool(threads: threads)
        #expect(pool.threads == threads)
        let capacity = 1000
        let out = UnsafeMutablePointer<Double>.allocate(capacity: capacity)
        let visits = UnsafeMutablePointer<Int>.allocate(capacity: capacity)
        defer {
            out.deallocate()
            visits.deallocate()
        }
        var rng = Xoshiro256(seed: UInt64(threads))
        let badThread = Atomic<Int>(0)
        for region in 0..<500 {
            let count = Int(rng.next() % UInt64(capacity)) + 1
            let grain = Int(rng.next() % 37) + 1
            visits.initialize(repeating: 0, count: count)
            pool.run(count: count, grain: grain) { range, thread in
                if thread < 0 || thread >= threads || range.count > grain { badThread.add(1, ordering: .relaxed) }
                for i in range {
                    visits[i] += 1
                    out[i] = Self.work(i, region)
                }
            }
            #expect((0..<count).allSatisfy { visits[$0] == 1 }, "region \(region): count \(count) grain \(grain)")
            #expect((0..<count).allSatisfy { out[$0] == Self.work($0, region) })
        }
        #expect(badThread.load(ordering: .relaxed) == 0)
    }

    /// A region opened inside a region's body runs inline (the pool is busy) and completes.
    @Test(arguments: [1, 2, 4])
    func nestedRegionRunsInline(threads: Int) {
        let pool = WorkerPool(threads: threads)
        let total = Atomic<Int>(0)
        pool.run(count: 8, grain: 1) { outer, _ in
            pool.run(count: 10, grain: 3) { inner, _ in total.add(inner.count, ordering: .relaxed) }
        }
        #expect(total.load(ordering: .relaxed) == 80)
    }

    /// Regions after the workers parked (idle longer than the spin) still complete, and a
    /// pool is torn down cleanly whether its workers spin or sleep.
    @Test func wakesParkedWorkers() {
        for threads in 2...4 {
            let pool = WorkerPool(threads: threads)
            for _ in 0..<3 {
                let sum = Atomic<Int>(0)
                pool.run(count: 64, grain: 4) { range, _ in sum.add(range.reduce(0, +), ordering: .relaxed) }
                #expect(sum.load(ordering: .relaxed) == 64 * 63 / 2)
                usleepMilliseconds(20)
            }
        }
    }

    /// Results never depend on the thread count: fused Q/K/V-shaped products (different row
    /// counts, one padded quad, one region) equal each matrix alone and the 1-thread run bit
    /// for bit.
    @Test func fusedProductsEqualAcrossThreadCounts() {
        let formats: [WeightMatrix.Format] = [.q4_1, .q8_0, .q4_1]
        // Large enough (480 x 256 multiply-adds per input row) to be split across threads.
        let rows = [288, 96, 95]
        let columns = 256
        let matrices = (0..<3).map { m in
            let bytes = WeightMatrixTests.randomBlocks(formats[m], rows: rows[m], columns: columns, seed: UInt64(m + 11))
            return bytes.withUnsafeBytes { WeightMatrix(ggml: formats[m], rows: rows[m], columns: columns, bytes: $0) }
        }
        var rng = Xoshiro256(seed: 3)
        for batch in [1, 5] {
            let x = (0..<(batch * columns)).map { _ in Float(rng.nextUnit() * 2 - 1) }
            var reference: [[Float]] = []
            for threads in 1...4 {
                let pool = WorkerPool(threads: threads)
                let outputs = rows.map { UnsafeMutablePointer<Float>.allocate(capacity: batch * $0) }
                let scratch = UnsafeMutablePointer<Float>.allocate(capacity: matrices.map { $0.scratchCount(batch: batch) }.max()!)
                defer {
                    for o in outputs { o.deallocate() }
                    scratch.deallocate()
                }
                x.withUnsafeBufferPointer { xp in
                    WeightMatrix.multiply(matrices, into: outputs, xp.baseAddress!, batch: batch, scratch: scratch, pool: pool)
                }
                let got = (0..<3).map { Array(UnsafeBufferPointer(start: outputs[$0], count: batch * rows[$0])) }
                for m in 0..<3 {
                    let alone = UnsafeMutablePointer<Float>.allocate(capacity: batch * rows[m])
                    defer { alone.deallocate() }
                    x.withUnsafeBufferPointer { xp in
                        matrices[m].matmul(xp.baseAddress!, batch: batch, alone, pool: pool, scratch: scratch)
                    }
                    #expect(Array(UnsafeBufferPointer(start: alone, count: batch * rows[m])) == got[m])
                }
                if reference.isEmpty { reference = got } else { #expect(got == reference, "threads \(threads) batch \(batch)") }
            }
        }
    }

    /// Gate/up in lockstep with an epilogue (SwiGLU) on each chunk's rows: every row gets the
    /// epilogue once, after both products, and the result equals the 1-thread run bit for bit.
    @Test func lockstepEpilogueEqualsAcrossThreadCounts() {
        let rows = 510
        let columns = 256
        let matrices = (0..<2).map { m in
            let bytes = WeightMatrixTests.randomBlocks(.q4_1, rows: rows, columns: columns, seed: UInt64(m + 21))
            return bytes.withUnsafeBytes { WeightMatrix(ggml: .q4_1, rows: rows, columns: columns, bytes: $0) }
        }
        var rng = Xoshiro256(seed: 5)
        let batch = 2
        let x = (0..<(batch * columns)).map { _ in Float(rng.nextUnit() * 2 - 1) }
        var reference: [Float] = []
        for threads in 1...4 {
            let pool = WorkerPool(threads: threads)
            let gate = UnsafeMutablePointer<Float>.allocate(capacity: batch * rows)
            let up = UnsafeMutablePointer<Float>.allocate(capacity: batch * rows)
            let seen = UnsafeMutablePointer<Int>.allocate(capacity: rows)
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: matrices[0].scratchCount(batch: batch))
            defer {
                for p in [gate, up, scratch] { p.deallocate() }
                seen.deallocate()
            }
            seen.initialize(repeating: 0, count: rows)
            x.withUnsafeBufferPointer { xp in
                WeightMatrix.multiply(matrices, into: [gate, up], xp.baseAddress!, batch: batch, scratch: scratch, pool: pool) {
                    range in
                    for r in range { seen[r] += 1 }
                    for t in 0..<batch {
                        for r in range { gate[t * rows + r] = gate[t * rows + r] - up[t * rows + r] }
                    }
                }
            }
            #expect((0..<rows).allSatisfy { seen[$0] == 1 }, "threads \(threads)")
            let got = Array(UnsafeBufferPointer(start: gate, count: batch * rows))
            if reference.isEmpty { reference = got } else { #expect(got == reference, "threads \(threads)") }
        }
    }

    private static func work(_ i: Int, _ region: Int) -> Double {
        var v = Double(i &* 31 &+ region)
        for _ in 0..<(i % 7) { v = (v * 1.000_1).squareRoot() + 1 }
        return v
    }
}

private func usleepMilliseconds(_ ms: Int) {
    _ = usleep(UInt32(ms * 1000))
}
