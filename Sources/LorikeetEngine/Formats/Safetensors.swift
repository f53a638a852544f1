import Foundation
import LorikeetJSON

/// Element type of a safetensors tensor. Only the float types the engine computes with
/// are accepted; everything else is refused with `SafetensorsError.unsupportedDType`.
package enum SafetensorsDType: String, Sendable {
    case f32 = "F32"
    case f16 = "F16"
    case bf16 = "BF16"

    /// Bytes per element.
    package var size: Int {
        switch self {
        case .f32: 4
        case .f16, .bf16: 2
        }
    }
}

/// Why a safetensors file was refused. Every bound in the format is checked before any
/// byte of tensor data is read.
package enum SafetensorsError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The file is shorter than the 8-byte header length prefix.
    case tooShort(size: Int)
    /// The header length prefix points past the end of the file (or exceeds the cap).
    case headerLengthOutOfBounds(headerLength: UInt64, fileSize: Int)
    /// The header is not a JSON object.
    case invalidHeader(String)
    /// An entry lacks a field or has one of the wrong type.
    case invalidEntry(tensor: String, reason: String)
    /// The dtype is not F32, F16 or BF16.
    case unsupportedDType(tensor: String, dtype: String)
    /// The shape's element count or byte size overflows.
    case shapeOverflow(tensor: String, shape: [Int])
    /// `data_offsets` are reversed or past the end of the data section.
    case offsetsOutOfBounds(tensor: String, begin: Int, end: Int, dataSize: Int)
    /// `data_offsets` span a different number of bytes than shape × dtype size.
    case sizeMismatch(tensor: String, expectedBytes: Int, actualBytes: Int)
    /// Two tensors' byte ranges overlap.
    case overlappingTensors(String, String)
    /// A tensor that the caller asked for is not in the file.
    case missingTensor(String)

    package var description: String {
        switch self {
        case .tooShort(let size):
            "safetensors file is \(size) bytes, shorter than the 8-byte header length"
        case .headerLengthOutOfBounds(let len, let size):
            "safetensors header length \(len) does not fit in a file of \(size) bytes"
        case .invalidHeader(let reason):
            "safetensors header is not valid: \(reason)"
        case .invalidEntry(let tensor, let reason):
            "safetensors entry '\(tensor)' is not valid: \(reason)"
        case .unsupportedDType(let tensor, let dtype):
            "safetensors tensor '\(tensor)' has dtype \(dtype); supported: F32, F16, BF16"
        case .shapeOverflow(let tensor, let shape):
            "safetensors tensor '\(tensor)' has a shape \(shape) whose size overflows"
        case .offsetsOutOfBounds(let tensor, let begin, let end, let dataSize):
            "safetensors tensor '\(tensor)' has data_offsets [\(begin), \(end)] outside the \(dataSize)-byte data section"
        case .sizeMismatch(let tensor, let expected, let actual):
            "safetensors tensor '\(tensor)' spans \(actual) bytes but its shape and dtype need \(expected)"
        case .overlappingTensors(let a, let b):
            "safetensors tensors '\(a)' and '\(b)' overlap"
        case .missingTensor(let name):
            "safetensors file has no tensor '\(name)'"
        }
    }
}

/// A parsed safetensors file (huggingface/safetensors format): an 8-byte little-endian
/// header length, a JSON header mapping tensor names to `{dtype, shape, data_offsets}`
/// (offsets relative to the data section after the header), then the raw data.
///
/// Parsing is a pure function over bytes: every bound is validated in `init`, so the
/// accessors never trap on hostile input.
package struct SafetensorsFile: Sendable {
    /// One tensor's validated header entry.
    package struct TensorInfo: Sendable, Equatable {
        /// The tensor name, e.g. `model.layers.0.self_attn.q_proj.weight`.
        package var name: String
        /// Element type.
        package var dtype: SafetensorsDType
        /// Dimensions, outermost first.
        package var shape: [Int]
        /// Byte range inside the whole file (not the data section).
        package var byteRange: Range<Int>
        /// Number of elements (product of `shape`).
        package var count: Int
    }

    /// Largest header accepted (the reference implementation caps it at 100 MB too).
    package static let maxHeaderLength: UInt64 = 100_000_000

    /// Validated entries by name (the `__metadata__` entry is kept in `metadata`).
    package let tensors: [String: TensorInfo]
    /// The optional `__metadata__` string map.
    package let metadata: [String: String]
    private let bytes: [UInt8]

    /// Parses and validates a whole safetensors file held in memory.
    package init(bytes: [UInt8]) throws(SafetensorsError) {
        guard bytes.count >= 8 else { throw .tooShort(size: bytes.count) }
        var headerLength: UInt64 = 0
        for i in 0..<8 { headerLength |= UInt64(bytes[i]) << (8 * UInt64(i)) }
        guard headerLength <= Self.maxHeaderLength, headerLength <= UInt64(bytes.count - 8) else {
            throw .headerLengthOutOfBounds(headerLength: headerLength, fileSize: bytes.count)
        }
        let headerEnd = 8 + Int(headerLength)
        let parsed: JSONValue
        do {
            parsed = try JSONParser.parse(Array(bytes[8..<headerEnd]))
        } catch {
            throw .invalidHeader("not JSON (\(error))")
        }
        // Duplicate names: the last entry counts, as in the reference implementation's serde map.
        guard let header = parsed.objectValue else { throw .invalidHeader("not a JSON object") }
        let dataSize = bytes.count - headerEnd

        var tensors: [String: TensorInfo] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in header {
            if name == "__metadata__" {
                guard let map = value.objectValue else {
                    throw .invalidHeader("__metadata__ is not an object")
                }
                for (k, v) in map {
                    guard let s = v.stringValue else { throw .invalidHeader("__metadata__['\(k)'] is not a string") }
                    metadata[k] = s
                }
                continue
            }
            guard let entry = value.objectValue else { throw .invalidEntry(tensor: name, reason: "not an object") }
            guard let dtypeName = entry["dtype"]?.stringValue else {
                throw .invalidEntry(tensor: name, reason: "missing string 'dtype'")
            }
            guard let dtype = SafetensorsDType(rawValue: dtypeName) else {
                throw .unsupportedDType(tensor: name, dtype: dtypeName)
            }
            guard case .array(let shapeValues) = entry["shape"] else {
                throw .invalidEntry(tensor: name, reason: "missing array 'shape'")
            }
            let shape = try Self.integers(shapeValues, tensor: name, field: "shape")
            guard case .array(let offsetValues) = entry["data_offsets"], offsetValues.count == 2 else {
                throw .invalidEntry(tensor: name, reason: "'data_offsets' must be an array of two integers")
            }
            let offsets = try Self.integers(offsetValues, tensor: name, field: "data_offsets")
            var count = 1
            for d in shape {
                let (product, overflow) = count.multipliedReportingOverflow(by: d)
                guard !overflow else { throw .shapeOverflow(tensor: name, shape: shape) }
                count = product
            }
            let (byteCount, overflow) = count.multipliedReportingOverflow(by: dtype.size)
            guard !overflow else { throw .shapeOverflow(tensor: name, shape: shape) }
            let (begin, end) = (offsets[0], offsets[1])
            guard begin <= end, end <= dataSize else {
                throw .offsetsOutOfBounds(tensor: name, begin: begin, end: end, dataSize: dataSize)
            }
            guard end - begin == byteCount else {
                throw .sizeMismatch(tensor: name, expectedBytes: byteCount, actualBytes: end - begin)
            }
            tensors[name] = TensorInfo(
                name: name, dtype: dtype, shape: shape,
                byteRange: (headerEnd + begin)..<(headerEnd + end), count: count)
        }
        let ordered = tensors.values.filter { !$0.byteRange.isEmpty }.sorted {
            ($0.byteRange.lowerBound, $0.name) < ($1.byteRange.lowerBound, $1.name)
        }
        for (a, b) in zip(ordered, ordered.dropFirst()) where a.byteRange.upperBound > b.byteRange.lowerBound {
            throw .overlappingTensors(a.name, b.name)
        }
        self.tensors = tensors
        self.metadata = metadata
        self.bytes = bytes
    }

    private static func integers(_ values: [JSONValue], tensor: String, field: String) throws(SafetensorsError) -> [Int] {
        var result: [Int] = []
        result.reserveCapacity(values.count)
        for v in values {
            guard let n = v.nonNegativeInt else {
                throw .invalidEntry(tensor: tensor, reason: "'\(field)' must contain non-negative integers")
            }
            result.append(n)
        }
        return result
    }

    /// The tensor converted to fp32, with its shape.
    package func floats(_ name: String) throws(SafetensorsError) -> (shape: [Int], values: [Float]) {
        guard let info = self.tensors[name] else { throw .missingTensor(name) }
        return (info.shape, Self.decode(self.bytes, info))
    }

    private static func decode(_ bytes: [UInt8], _ info: TensorInfo) -> [Float] {
        let count = info.count
        return [Float](unsafeUninitializedCapacity: count) { out, initialized in
            bytes.withUnsafeBytes { raw in
                let base = raw.baseAddress! + info.byteRange.lowerBound
                switch info.dtype {
                case .f32:
                    for i in 0..<count {
                        out[i] = Float(bitPattern: UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
                    }
                case .f16:
                    for i in 0..<count {
                        out[i] = halfToFloat(UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
                    }
                case .bf16:
                    for i in 0..<count {
                        let bits = UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                        out[i] = Float(bitPattern: UInt32(bits) << 16)
                    }
                }
            }
            initialized = count
        }
    }
}

/// IEEE 754 binary16 to binary32, including subnormals, infinities and NaN.
/// (Written out instead of using `Float16`, which is unavailable on some x86 targets.)
package func halfToFloat(_ h: UInt16) -> Float {
    let sign = UInt32(h & 0x8000) << 16
    let exponent = Int((h >> 10) & 0x1F)
    var mantissa = UInt32(h & 0x3FF)
    if exponent == 0 {
        if mantissa == 0 { return Float(bitPattern: sign) }
        // Subnormal: normalize.
        var e = -1
        repeat {
            e += 1
            mantissa <<= 1
        } while mantissa & 0x400 == 0
        mantissa &= 0x3FF
        return Float(bitPattern: sign | UInt32(127 - 15 - e) << 23 | mantissa << 13)
    }
    if exponent == 0x1F {
        return Float(bitPattern: sign | 0x7F80_0000 | mantissa << 13)
    }
    return Float(bitPattern: sign | UInt32(exponent - 15 + 127) << 23 | mantissa << 13)
}
