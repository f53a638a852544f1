/// Why a GGUF file could not be read.
///
/// Every case names what was being read and the byte offset where the problem was found,
/// so a corrupt or truncated download can be told apart from an unsupported file.
/// The layout checked is GGUF v3 as written by llama.cpp's `gguf` library
/// (`ggml/src/gguf.cpp`): header, metadata key/values, tensor infos, aligned data section.
package enum GGUFError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The file could not be opened or read.
    case unreadable(path: String, reason: String)
    /// The first four bytes are not `GGUF`.
    case badMagic(found: [UInt8])
    /// The version field is not one this reader understands (only 3 is).
    case unsupportedVersion(UInt32)
    /// The file ends before `what` (which needs `needed` bytes at `offset`) could be read.
    case truncated(what: String, offset: Int, needed: Int, available: Int)
    /// A count read from the file cannot fit in the bytes that remain (a hostile or corrupt count).
    case countTooLarge(what: String, count: UInt64, offset: Int, remainingBytes: Int)
    /// A string length read from the file is larger than the bytes that remain.
    case stringTooLong(what: String, length: UInt64, offset: Int, remainingBytes: Int)
    /// A metadata value has a type code outside the GGUF value types.
    case invalidValueType(key: String, rawType: UInt32, offset: Int)
    /// Arrays nest deeper than this reader allows.
    case arrayNestingTooDeep(key: String, offset: Int, limit: Int)
    /// Two metadata entries share one key.
    case duplicateKey(String)
    /// A metadata value does not have the type the GGUF spec or this reader requires.
    case wrongValueType(key: String, expected: String, found: String)
    /// `general.alignment` is zero or not a power of two.
    case invalidAlignment(UInt64)
    /// Two tensors share one name.
    case duplicateTensor(String)
    /// A tensor declares more dimensions than ggml supports (4).
    case tooManyDimensions(tensor: String, count: UInt32, offset: Int)
    /// A tensor dimension is negative as a signed 64-bit value, or the element or byte count overflows.
    case invalidDimensions(tensor: String, dims: [UInt64])
    /// A tensor uses a ggml type code this reader does not know.
    case unknownTensorType(tensor: String, rawType: UInt32)
    /// A quantized tensor's innermost dimension is not a multiple of its block size.
    case shapeNotBlockAligned(tensor: String, innermost: Int, blockSize: Int)
    /// A tensor's data offset is not a multiple of the file's alignment.
    case misalignedTensor(tensor: String, offset: UInt64, alignment: Int)
    /// A tensor's data runs past the end of the file.
    case tensorDataOutOfBounds(tensor: String, offset: UInt64, byteCount: Int, dataSectionSize: Int)

    package var description: String {
        switch self {
        case .unreadable(let path, let reason):
            return "cannot read GGUF file \(path): \(reason)"
        case .badMagic(let found):
            let hex = found.map { String($0, radix: 16) }.joined(separator: " ")
            return "not a GGUF file: magic bytes are [\(hex)], expected \"GGUF\" (47 47 55 46)"
        case .unsupportedVersion(let version):
            return "unsupported GGUF version \(version): only version 3 is supported; re-convert the model with a current llama.cpp"
        case .truncated(let what, let offset, let needed, let available):
            return
                "truncated GGUF file: \(what) needs \(needed) bytes at offset \(offset) but only \(available) remain; the file is incomplete, download it again"
        case .countTooLarge(let what, let count, let offset, let remaining):
            return "corrupt GGUF file: \(what) \(count) at offset \(offset) cannot fit in the \(remaining) bytes that remain"
        case .stringTooLong(let what, let length, let offset, let remaining):
            return "corrupt GGUF file: \(what) has length \(length) at offset \(offset) but only \(remaining) bytes remain"
        case .invalidValueType(let key, let rawType, let offset):
            return "corrupt GGUF file: metadata '\(key)' has unknown value type \(rawType) at offset \(offset)"
        case .arrayNestingTooDeep(let key, let offset, let limit):
            return "corrupt GGUF file: metadata '\(key)' nests arrays deeper than \(limit) at offset \(offset)"
        case .duplicateKey(let key):
            return "corrupt GGUF file: metadata key '\(key)' appears twice"
        case .wrongValueType(let key, let expected, let found):
            return "GGUF metadata '\(key)' is \(found), expected \(expected)"
        case .invalidAlignment(let value):
            return "corrupt GGUF file: general.alignment \(value) is not a non-zero power of two"
        case .duplicateTensor(let name):
            return "corrupt GGUF file: tensor '\(name)' appears twice"
        case .tooManyDimensions(let tensor, let count, let offset):
            return "corrupt GGUF file: tensor '\(tensor)' has \(count) dimensions at offset \(offset), at most 4 are allowed"
        case .invalidDimensions(let tensor, let dims):
            return "corrupt GGUF file: tensor '\(tensor)' has invalid dimensions \(dims) (negative, or too many elements to address)"
        case .unknownTensorType(let tensor, let rawType):
            return "unsupported GGUF file: tensor '\(tensor)' has unknown ggml type \(rawType)"
        case .shapeNotBlockAligned(let tensor, let innermost, let blockSize):
            return "corrupt GGUF file: tensor '\(tensor)' innermost dimension \(innermost) is not a multiple of its block size \(blockSize)"
        case .misalignedTensor(let tensor, let offset, let alignment):
            return "corrupt GGUF file: tensor '\(tensor)' data offset \(offset) is not a multiple of the alignment \(alignment)"
        case .tensorDataOutOfBounds(let tensor, let offset, let byteCount, let dataSize):
            return
                "corrupt or truncated GGUF file: tensor '\(tensor)' needs \(byteCount) bytes at data offset \(offset) but the data section holds only \(dataSize) bytes"
        }
    }
}
