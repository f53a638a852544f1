import CLorikeetQ8
import CLorikeetSys
import LorikeetKernels

#if canImport(LorikeetKernelsAVX2)
    import LorikeetKernelsAVX2
#endif

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Which build of the kernels this process runs.
///
/// The kernel sources (`Sources/LorikeetKernels`) are compiled twice on x86-64: for the
/// architecture's baseline (runs on any x86-64 CPU) and, as `LorikeetKernelsAVX2` (symbolic
/// links to the same files), for x86-64-v3 (AVX2, FMA, F16C: `-target-cpu haswell`, or the
/// CPU `LORIKEET_TARGET_CPU` names at build time). The CPU is asked once (CPUID, and XGETBV
/// for the OS's AVX state), so one binary is both portable and fast, as llama.cpp's
/// runtime-dispatched builds are. Elsewhere only the baseline exists.
package enum KernelVariant: String, Sendable, CaseIterable {
    /// Compiled for the architecture's baseline CPU.
    case portable
    /// Compiled for x86-64-v3 (or the CPU `LORIKEET_TARGET_CPU` named at build time).
    case avx2

    /// The variants built into this binary.
    package static var built: [KernelVariant] {
        #if canImport(LorikeetKernelsAVX2)
            [.portable, .avx2]
        #else
            [.portable]
        #endif
    }

    /// Whether this CPU can run the variant.
    package var isSupported: Bool {
        switch self {
        case .portable: true
        case .avx2: Self.built.contains(.avx2) && lorikeet_cpu_supports_x86_64_v3() == 1
        }
    }

    /// The variant this process uses: the fastest one this CPU runs, unless the environment
    /// variable `LORIKEET_KERNELS=portable` asks for the portable one (to compare them, or to
    /// rule the fast build out). `avx2` and `avxvnni` both mean this variant (they limit only
    /// the integer kernels, `Int8Kernels.active`).
    package static let active: KernelVariant = {
        if Self.asked == KernelVariant.portable.rawValue { return .portable }
        return KernelVariant.avx2.isSupported ? .avx2 : .portable
    }()

    /// `LORIKEET_KERNELS`: `portable` (no AVX at all), `avx2` (AVX2 only: no VNNI, no
    /// AVX-512), `avxvnni` (no AVX-512), or unset (the fastest this CPU runs).
    static let asked: String? = getenv("LORIKEET_KERNELS").map { String(cString: $0) }

    /// The values `LORIKEET_KERNELS` takes.
    package static let recognizedLimits = [
        KernelVariant.portable.rawValue, Int8Kernels.avx2.rawValue, Int8Kernels.avxvnni.rawValue,
    ]

    /// `value` when it is set but not a value `LORIKEET_KERNELS` takes (then ignored: the
    /// fastest kernels run), for a warning at startup; nil otherwise.
    package static func unrecognizedLimit(_ value: String? = KernelVariant.asked) -> String? {
        guard let value, !value.isEmpty, !Self.recognizedLimits.contains(value) else { return nil }
        return value
    }

    /// This variant's fp32 kernels.
    package var fp32: any FP32Kernels.Type {
        #if canImport(LorikeetKernelsAVX2)
            if self == .avx2 { return LorikeetKernelsAVX2.Kernels.self }
        #endif
        return LorikeetKernels.Kernels.self
    }

    /// This variant's quantized matrix-vector kernels.
    package var quantized: any QuantizedKernels.Type {
        #if canImport(LorikeetKernelsAVX2)
            if self == .avx2 { return LorikeetKernelsAVX2.QuantKernels.self }
        #endif
        return LorikeetKernels.QuantKernels.self
    }
}

/// How a quantized weight matrix meets its input.
package enum QuantizedProduct: String, Sendable, CaseIterable {
    /// The input quantized to 8 bits per block of 32 (`x ≈ d·q`), multiplied in integer dot
    /// products (`Int8Kernels`), as llama.cpp does: the default, 2-3x faster than `fp32`.
    case int8
    /// fp32 input times the weights decoded to fp32 (`LorikeetKernels.QuantKernels`): equal to
    /// a product with the dequantized matrix up to summation order (reference checks).
    case fp32
}

/// A build of the integer kernels (`CLorikeetQ8`): the same arithmetic, and the same result
/// bits, in plain C, with AVX2, with AVX-VNNI, or with AVX-512 VNNI.
package enum Int8Kernels: String, Sendable, CaseIterable {
    /// Plain C, any CPU.
    case generic
    /// AVX2 and F16C (`vpmaddubsw`).
    case avx2
    /// AVX2 with AVX-VNNI (`vpdpbusd`, 256-bit VEX: Alder Lake and later client CPUs, which
    /// have no AVX-512).
    case avxvnni
    /// AVX-512 F/BW/VL and VNNI (`vpdpbusd`, 512-bit).
    case avx512vnni

    /// Bytes of one quantized input block of 32 columns.
    package static let blockBytes = MemoryLayout<lorikeet_q8_block>.stride

    /// Whether this binary has the build and this CPU runs it.
    package var isSupported: Bool {
        switch self {
        case .generic: true
        case .avx2: lorikeet_q8_avx2_built() == 1 && lorikeet_cpu_supports_x86_64_v3() == 1
        case .avxvnni: lorikeet_q8_avxvnni_built() == 1 && lorikeet_cpu_supports_avx_vnni() == 1
        case .avx512vnni: lorikeet_q8_avx512vnni_built() == 1 && lorikeet_cpu_supports_avx512_vnni() == 1
        }
    }

    /// The build this process uses: the fastest this CPU runs, none past what
    /// `LORIKEET_KERNELS` allows (`portable`: plain C; `avx2`: AVX2 alone; `avxvnni`: no
    /// AVX-512).
    package static let active: Int8Kernels = Self.fastest(allowing: KernelVariant.asked)

    /// The fastest supported build that `LORIKEET_KERNELS=limit` allows.
    package static func fastest(allowing limit: String?) -> Int8Kernels {
        if KernelVariant.active == .portable || limit == KernelVariant.portable.rawValue { return .generic }
        let ceiling: Int8Kernels =
            switch limit {
            case KernelVariant.avx2.rawValue: .avx2
            case Int8Kernels.avxvnni.rawValue: .avxvnni
            default: .avx512vnni
            }
        let order = Self.allCases
        return order[...order.firstIndex(of: ceiling)!].last { $0.isSupported } ?? .generic
    }

    /// Quantizes `columns` floats (a multiple of 32) into `columns / 32` blocks at `out`
    /// (`blockBytes` each). The same code in every build.
    package static func quantize(_ x: UnsafePointer<Float>, columns: Int, into out: UnsafeMutableRawPointer) {
        lorikeet_q8_quantize(x, Int32(columns), out.assumingMemoryBound(to: lorikeet_q8_block.self))
    }

    /// The block type of a repacked weight matrix.
    package enum Weights: Sendable {
        case q4_1, q8_0
    }

    private typealias Kernel =
        @convention(c) (
            UnsafeRawPointer?, Int32, Int32, Int32, Int32, UnsafePointer<lorikeet_q8_block>?, Int32, Int32, UnsafeMutablePointer<Float>?,
            Int32
        ) -> Void

    private func kernel(_ weights: Weights) -> Kernel {
        switch (self, weights) {
        case (.generic, .q4_1): lorikeet_q41_q8_generic
        case (.generic, .q8_0): lorikeet_q80_q8_generic
        case (.avx2, .q4_1): lorikeet_q41_q8_avx2
        case (.avx2, .q8_0): lorikeet_q80_q8_avx2
        case (.avxvnni, .q4_1): lorikeet_q41_q8_avxvnni
        case (.avxvnni, .q8_0): lorikeet_q80_q8_avxvnni
        case (.avx512vnni, .q4_1): lorikeet_q41_q8_avx512vnni
        case (.avx512vnni, .q8_0): lorikeet_q80_q8_avx512vnni
        }
    }

    /// `y[t * yStride + row] = W[row] · x[t]` for `t < inputs` (1...4) and the rows of `quads`
    /// (below `rows`), `W` a repacked matrix of `weights` blocks, `blocks` per row, input `t`
    /// the quantized blocks at `x + t * xStride` blocks.
    package func multiply(
        _ weights: Weights, _ w: UnsafeRawPointer, blocks: Int, rows: Int, quads: Range<Int>, _ x: UnsafeRawPointer, inputs: Int,
        xStride: Int, _ y: UnsafeMutablePointer<Float>, yStride: Int
    ) {
        precondition((1...4).contains(inputs))
        self.kernel(weights)(
            w, Int32(blocks), Int32(rows), Int32(quads.lowerBound), Int32(quads.upperBound),
            x.assumingMemoryBound(to: lorikeet_q8_block.self),
            Int32(inputs), Int32(xStride), y, Int32(yStride))
    }
}

/// The kernels the engine calls: those of `KernelVariant.active`, and the layout constants
/// every variant shares.
package enum Kernels {
    /// The integer kernels' build (`Int8Kernels.active`).
    package static let int8 = Int8Kernels.active
    /// What this process runs, for the log: `avx2, int8 avx512vnni` (the fp32 kernels' build,
    /// then the integer kernels').
    package static var description: String { "\(KernelVariant.active.rawValue), int8 \(Self.int8.rawValue)" }
    /// fp32 kernels (`LorikeetKernels.Kernels`).
    package static let fp32 = KernelVariant.active.fp32
    /// Quantized matrix-vector kernels (`LorikeetKernels.QuantKernels`).
    package static let quantized = KernelVariant.active.quantized
    /// Bytes of one Q4_1 quad block.
    package static let q41QuadBlockBytes = LorikeetKernels.QuantKernels.q41QuadBlockBytes
    /// Bytes of one Q8_0 quad block.
    package static let q80QuadBlockBytes = LorikeetKernels.QuantKernels.q80QuadBlockBytes
    /// Floats of expanded input per input row of `columns` elements.
    package static func expandedCount(columns: Int) -> Int { LorikeetKernels.QuantKernels.expandedCount(columns: columns) }
}

/// The fp32 kernels every build provides (see `LorikeetKernels.Kernels` for each one).
package protocol FP32Kernels: SendableMetatype {
    static func matmulRows(
        _ w: UnsafePointer<Float>, _ range: Range<Int>, rows: Int, cols: Int,
        _ x: UnsafePointer<Float>, batch: Int, _ y: UnsafeMutablePointer<Float>)
    static func attendGroup(
        _ q: UnsafePointer<Float>, group: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, stride: Int,
        span: Int, headDim: Int, scale: Float, scores: UnsafeMutablePointer<Float>, _ out: UnsafeMutablePointer<Float>)
    static func addLoRA(
        a: UnsafePointer<Float>, b: UnsafePointer<Float>, rank: Int, inDim: Int, outDim: Int, scaling: Float,
        _ x: UnsafePointer<Float>, tmp: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>)
    static func rmsNorm(
        _ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, _ n: Int, eps: Float, _ out: UnsafeMutablePointer<Float>)
    static func addInPlace(_ x: UnsafeMutablePointer<Float>, _ y: UnsafePointer<Float>, _ n: Int)
    static func swiglu(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, _ n: Int)
}

/// The quantized kernels every build provides (see `LorikeetKernels.QuantKernels`).
package protocol QuantizedKernels: SendableMetatype {
    static func expand(
        _ x: UnsafePointer<Float>, columns: Int, _ xq: UnsafeMutablePointer<Float>, _ xsum: UnsafeMutablePointer<Float>)
    static func q41(
        _ w: UnsafeRawPointer, blocks: Int, rows: Int, quads: Range<Int>,
        _ xq: UnsafePointer<Float>, _ xsum: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>)
    static func q80(
        _ w: UnsafeRawPointer, blocks: Int, rows: Int, quads: Range<Int>, _ xq: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>)
    static func q41x4(
        _ w: UnsafeRawPointer, blocks: Int, rows: Int, quads: Range<Int>, _ xq: UnsafePointer<Float>, xqStride: Int,
        _ xsum: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, yStride: Int)
    static func q80x4(
        _ w: UnsafeRawPointer, blocks: Int, rows: Int, quads: Range<Int>, _ xq: UnsafePointer<Float>, xqStride: Int,
        _ y: UnsafeMutablePointer<Float>, yStride: Int)
    /// fp16 bit patterns (the quad blocks' scales) to floats, exactly.
    static func floats(halves: SIMD8<UInt16>) -> SIMD8<Float>
}

extension LorikeetKernels.Kernels: FP32Kernels {}
extension LorikeetKernels.QuantKernels: QuantizedKernels {}
#if canImport(LorikeetKernelsAVX2)
    extension LorikeetKernelsAVX2.Kernels: FP32Kernels {}
    extension LorikeetKernelsAVX2.QuantKernels: QuantizedKernels {}
#endif
