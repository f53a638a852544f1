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
    /// rule the fast build out).
    package static let active: KernelVariant = {
        if let asked = getenv("LORIKEET_KERNELS"), String(cString: asked) == KernelVariant.portable.rawValue { return .portable }
        return KernelVariant.avx2.isSupported ? .avx2 : .portable
    }()

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

/// The kernels the engine calls: those of `KernelVariant.active`, and the layout constants
/// every variant shares.
package enum Kernels {
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
