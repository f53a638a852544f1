import Foundation
import LorikeetKernelDispatch
import LorikeetTestSupport
import Testing

@testable import LorikeetEngine

/// The integer kernels (8-bit activations, `CLorikeetQ8`): every build this CPU runs returns
/// the plain C build's bits, and every result is within the error that quantizing the input
/// to 8 bits allows.
@Suite("Integer kernels: 8-bit activations times Q4_1 and Q8_0 weights", .ownThreads)
struct Int8KernelTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var format: WeightMatrix.Format
        var rows: Int
        var columns: Int
        var batch: Int
        var testDescription: String { "\(self.format) \(self.rows)x\(self.columns) batch \(self.batch)" }
    }

    static let cases: [Case] = [
        Case(format: .q4_1, rows: 4, columns: 32, batch: 1),
        Case(format: .q4_1, rows: 7, columns: 64, batch: 3),  // padded quad
        Case(format: .q4_1, rows: 130, columns: 576, batch: 9),  // groups of 4 inputs and a tail
        Case(format: .q8_0, rows: 5, columns: 32, batch: 2),
        Case(format: .q8_0, rows: 66, columns: 1536, batch: 5),
    ]

    static func matrix(_ c: Case) -> (WeightMatrix, [Float]) {
        let bytes = WeightMatrixTests.randomBlocks(c.format, rows: c.rows, columns: c.columns, seed: UInt64(c.rows * 31 + c.columns))
        let matrix = bytes.withUnsafeBytes { WeightMatrix(ggml: c.format, rows: c.rows, columns: c.columns, bytes: $0) }
        return (matrix, matrix.values)
    }

    /// Inputs of varied magnitude per block (a block of zeros, tiny and large values, one
    /// below 3.7e-37 where `127 / max` overflows, halves like 0.49999997 after scaling), as
    /// activations are after a norm.
    static func input(_ c: Case) -> [Float] {
        var rng = Xoshiro256(seed: UInt64(c.batch * 7 + c.columns))
        return (0..<(c.batch * c.columns)).map { i in
            let block = i / 32
            if block % 5 == 3 { return 0 }
            if block % 7 == 6 { return Float((rng.nextUnit() * 2 - 1) * 1e-37) }
            if block % 11 == 10 { return i % 32 == 0 ? 127 : i % 2 == 0 ? 0.49999997 : 2.5 }
            let scale: Double = block % 3 == 0 ? 8 : block % 3 == 1 ? 1e-3 : 1
            return Float((rng.nextUnit() * 2 - 1) * scale)
        }
    }

    /// `|y - W·x|` may not exceed what rounding each input to the nearest multiple of its
    /// block's step `max|x|/127` can change (half a step times `Σ|w|` per block), plus float
    /// rounding.
    static func errorBound(row: [Float], x: ArraySlice<Float>) -> Double {
        var bound: Double = 0
        var magnitude: Double = 0
        let x = Array(x)
        for b in 0..<(row.count / 32) {
            let block = x[(32 * b)..<(32 * b + 32)]
            let step = Double(block.map { abs($0) }.max()!) / 127
            let weights = row[(32 * b)..<(32 * b + 32)].reduce(0.0) { $0 + Double(abs($1)) }
            bound += step / 2 * weights
            for k in 0..<32 { magnitude += Double(abs(row[32 * b + k]) * abs(x[32 * b + k])) }
        }
        return bound * 1.001 + magnitude * 1e-5 + 1e-6
    }

    @Test("every build this CPU runs returns the plain C build's bits", arguments: cases)
    func buildsAgree(_ c: Case) {
        let (matrix, _) = Self.matrix(c)
        let x = Self.input(c)
        let reference = matrix.int8Product(x, batch: c.batch, build: .generic)
        #expect(!reference.contains { $0.isNaN })
        for build in Int8Kernels.allCases where build != .generic && build.isSupported {
            let y = matrix.int8Product(x, batch: c.batch, build: build)
            let differing = zip(y, reference).filter { $0.bitPattern != $1.bitPattern }.count
            #expect(differing == 0, "\(build): \(differing) of \(y.count) outputs differ from the plain C build")
        }
    }

    /// The input as the kernels see it: each block of 32 rounded to the nearest multiple of
    /// its step `max|x|/127` (halves away from zero), as `lorikeet_q8_quantize` does.
    static func rounded(_ x: ArraySlice<Float>) -> [Double] {
        let x = Array(x)
        var out: [Double] = []
        for b in 0..<(x.count / 32) {
            let block = x[(32 * b)..<(32 * b + 32)]
            let amax = block.map { abs($0) }.max()!
            let d = amax / 127
            let inverse: Float = amax > 0 ? 127 / amax : 0
            for v in block {
                let scaled = min(127, max(-127, inverse.isFinite ? v * inverse : v / d))
                out.append(Double(d) * Double(scaled.rounded(.toNearestOrAwayFromZero)))
            }
        }
        return out
    }

    @Test("results are the dequantized weights times the input rounded to 8 bits, up to float rounding", arguments: cases)
    func equalsRoundedInputProduct(_ c: Case) {
        let (matrix, dense) = Self.matrix(c)
        let x = Self.input(c)
        let y = matrix.int8Product(x, batch: c.batch, build: Kernels.int8)
        var quantizationMoved = false
        for t in 0..<c.batch {
            let xt = x[(t * c.columns)..<((t + 1) * c.columns)]
            let rounded = Self.rounded(xt)
            for r in 0..<c.rows {
                var expected: Double = 0
                var magnitude: Double = 0
                var exact: Double = 0
                for k in 0..<c.columns {
                    let w = Double(dense[r * c.columns + k])
                    expected += w * rounded[k]
                    magnitude += abs(w * rounded[k])
                    exact += w * Double(xt[xt.startIndex + k])
                }
                let got = Double(y[t * c.rows + r])
                #expect(abs(got - expected) <= 1e-5 * magnitude + 1e-7, "row \(r) input \(t): \(got) vs \(expected)")
                #expect(abs(got - exact) <= Self.errorBound(row: Array(dense[(r * c.columns)..<((r + 1) * c.columns)]), x: xt))
                quantizationMoved = quantizationMoved || abs(expected - exact) > 1e-4 * magnitude
            }
        }
        #expect(quantizationMoved, "the input was not quantized at all")
    }

    @Test("a NaN or infinite input gives NaN outputs, never a crash or a finite lie")
    func nonFiniteInput() {
        let c = Case(format: .q4_1, rows: 8, columns: 64, batch: 2)
        let (matrix, _) = Self.matrix(c)
        var x = Self.input(c)
        x[5] = .nan
        x[64 + 40] = .infinity
        for build in Int8Kernels.allCases where build.isSupported {
            let y = matrix.int8Product(x, batch: 2, build: build)
            #expect(y.allSatisfy { $0.isNaN }, "\(build): \(y)")
        }
    }

    @Test("this machine runs the fastest integer build its CPU supports, unless LORIKEET_KERNELS limits it")
    func activeBuild() {
        let environment = (try? String(contentsOfFile: "/proc/self/environ", encoding: .utf8)) ?? ""
        if environment.contains("LORIKEET_KERNELS=") { return }
        let fastest = Int8Kernels.allCases.last { $0.isSupported }!
        #expect(Int8Kernels.active == fastest)
        #if arch(x86_64)
            #expect(Int8Kernels.avx2.isSupported == KernelVariant.avx2.isSupported)
        #endif
    }

    @Test("the CPU checks agree with the kernel's /proc/cpuinfo flags")
    func cpuChecksAgreeWithTheKernel() throws {
        #if arch(x86_64) && os(Linux)
            let info = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
            let line = try #require(info.split(separator: "\n").first { $0.hasPrefix("flags") })
            let flags = Set(line.split(separator: " ").map(String.init))
            #expect(
                Int8Kernels.avx2.isSupported
                    == flags.isSuperset(of: ["avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "movbe", "popcnt", "abm"]))
            // Kernels before 5.12 do not name avx_vnni: only a flag they show is checked.
            if flags.contains("avx_vnni") || !Int8Kernels.avxvnni.isSupported {
                #expect(Int8Kernels.avxvnni.isSupported == (flags.contains("avx_vnni") && Int8Kernels.avx2.isSupported))
            }
            #expect(
                Int8Kernels.avx512vnni.isSupported
                    == (flags.isSuperset(of: ["avx512f", "avx512bw", "avx512vl", "avx512_vnni"]) && Int8Kernels.avx2.isSupported))
        #endif
    }

    @Test("LORIKEET_KERNELS sets a ceiling: avx2 is AVX2 alone, avxvnni rules out AVX-512, anything else allows all")
    func kernelLimit() {
        guard KernelVariant.active == .avx2 else { return }
        let supported = Int8Kernels.allCases.filter(\.isSupported)
        #expect(Int8Kernels.fastest(allowing: "portable") == .generic)
        #expect(Int8Kernels.fastest(allowing: "avx2") == .avx2)
        #expect(Int8Kernels.fastest(allowing: "avxvnni") == supported.last { $0 != .avx512vnni })
        for limit in [nil, "", "avx512", "AVX2"] as [String?] {
            #expect(Int8Kernels.fastest(allowing: limit) == supported.last, "\(limit ?? "unset")")
        }
        // Values it does not take are named in a startup warning; the others are not.
        #expect(["avx512", "AVX2"].map { KernelVariant.unrecognizedLimit($0) } == ["avx512", "AVX2"])
        #expect([nil, "", "portable", "avx2", "avxvnni"].allSatisfy { KernelVariant.unrecognizedLimit($0) == nil })
    }
}
