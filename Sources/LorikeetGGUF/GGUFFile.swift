package import Foundation

/// A parsed GGUF v3 file: metadata, tensor directory and the raw bytes behind them.
///
/// Layout (llama.cpp `ggml/src/gguf.cpp`, all little-endian): magic `GGUF`, `u32` version,
/// `u64` tensor count, `u64` metadata count, the metadata key/values, the tensor infos
/// (name, `u32` dimension count, `u64` dimensions innermost first, `u32` ggml type, `u64`
/// offset), then padding to `general.alignment` (default 32) and the data section.
///
/// Parsing never trusts a count: every length is checked against the bytes that remain
/// before anything is allocated, all offset arithmetic is overflow-checked, and each failure
/// is a `GGUFError` naming what was read and where.
package struct GGUFFile: Sendable {
    /// The GGUF version (always 3).
    package let version: UInt32
    /// Metadata keys in file order.
    package let metadataKeys: [String]
    /// Metadata values by key.
    package let metadata: [String: GGUFValue]
    /// Tensor infos in file order.
    package let tensors: [GGUFTensorInfo]
    /// The data-section alignment (`general.alignment`, default 32).
    package let alignment: Int
    /// Byte offset in the file where the data section starts.
    package let dataOffset: Int
    /// The whole file (memory-mapped when read from disk).
    package let bytes: Data

    private let tensorIndex: [String: Int]

    /// The alignment used when `general.alignment` is absent.
    package static let defaultAlignment = 32

    /// Memory-maps and parses the file at `url`.
    package init(contentsOf url: URL) throws(GGUFError) {
        let data: Data
        do {
            data = try Data(contentsOf: url, options: .alwaysMapped)
        } catch {
            throw .unreadable(path: url.path, reason: "\(error.localizedDescription)")
        }
        try self.init(bytes: data)
    }

    /// Parses a GGUF file held in memory.
    package init(bytes: Data) throws(GGUFError) {
        let parsed: Result<Parsed, GGUFError> = bytes.withUnsafeBytes { raw in
            Result { () throws(GGUFError) -> Parsed in try GGUFParser.parse(raw) }
        }
        let p = try parsed.get()
        self.version = p.version
        self.metadataKeys = p.keys
        self.metadata = p.metadata
        self.tensors = p.tensors
        self.alignment = p.alignment
        self.dataOffset = p.dataOffset
        self.bytes = bytes
        var index: [String: Int] = [:]
        for (i, t) in p.tensors.enumerated() { index[t.name] = i }
        self.tensorIndex = index
    }

    /// The tensor info named `name`, if present.
    package func tensor(named name: String) -> GGUFTensorInfo? {
        self.tensorIndex[name].map { self.tensors[$0] }
    }

    /// Calls `body` with the raw bytes of `tensor`'s data (already bounds-checked at parse time).
    package func withTensorBytes<R, E: Error>(
        _ tensor: GGUFTensorInfo,
        _ body: (UnsafeRawBufferPointer) throws(E) -> R
    ) throws(E) -> R {
        let result: Result<R, E> = self.bytes.withUnsafeBytes { raw in
            let start = self.dataOffset + tensor.offset
            let slice = UnsafeRawBufferPointer(rebasing: raw[start..<(start + tensor.byteCount)])
            return Result { () throws(E) -> R in try body(slice) }
        }
        return try result.get()
    }

    /// Metadata value for `key`.
    package subscript(key: String) -> GGUFValue? { self.metadata[key] }

    /// Required integer metadata, or a typed error naming the key.
    package func int(_ key: String) throws(GGUFModelError) -> Int {
        guard let value = self.metadata[key] else { throw .missingMetadata(key) }
        guard let v = value.intValue else {
            throw .wrongMetadataType(key: key, expected: "integer", found: value.typeDescription)
        }
        return v
    }

    /// Required float metadata, or a typed error naming the key.
    package func double(_ key: String) throws(GGUFModelError) -> Double {
        guard let value = self.metadata[key] else { throw .missingMetadata(key) }
        guard let v = value.doubleValue else {
            throw .wrongMetadataType(key: key, expected: "number", found: value.typeDescription)
        }
        return v
    }

    /// Required string metadata, or a typed error naming the key.
    package func string(_ key: String) throws(GGUFModelError) -> String {
        guard let value = self.metadata[key] else { throw .missingMetadata(key) }
        guard let v = value.stringValue else {
            throw .wrongMetadataType(key: key, expected: "string", found: value.typeDescription)
        }
        return v
    }
}

/// The fields `GGUFParser` produces.
struct Parsed {
    var version: UInt32
    var keys: [String]
    var metadata: [String: GGUFValue]
    var tensors: [GGUFTensorInfo]
    var alignment: Int
    var dataOffset: Int
}

/// A bounds-checked little-endian cursor over a byte buffer.
struct ByteCursor {
    let base: UnsafeRawBufferPointer
    var offset: Int = 0

    var remaining: Int { self.base.count - self.offset }

    mutating func require(_ n: Int, _ what: @autoclosure () -> String) throws(GGUFError) {
        if n > self.remaining {
            throw .truncated(what: what(), offset: self.offset, needed: n, available: self.remaining)
        }
    }

    mutating func read<T: FixedWidthInteger>(
        _: T.Type,
        _ what: @autoclosure () -> String
    ) throws(GGUFError) -> T {
        try self.require(MemoryLayout<T>.size, what())
        let v = self.base.loadUnaligned(fromByteOffset: self.offset, as: T.self)
        self.offset += MemoryLayout<T>.size
        return T(littleEndian: v)
    }

    mutating func string(_ what: @autoclosure () -> String) throws(GGUFError) -> String {
        let lengthOffset = self.offset
        let length = try self.read(UInt64.self, "length of \(what())")
        guard length <= UInt64(self.remaining) else {
            throw .stringTooLong(what: what(), length: length, offset: lengthOffset, remainingBytes: self.remaining)
        }
        let n = Int(length)
        let bytes = UnsafeRawBufferPointer(rebasing: self.base[self.offset..<(self.offset + n)])
        self.offset += n
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// The GGUF v3 parser: a pure function of a byte buffer.
enum GGUFParser {
    static let maxDimensions = 4
    static let maxArrayDepth = 8
    /// Smallest possible encoded metadata entry: 8-byte key length, 4-byte type, 1-byte value.
    static let minKVBytes = 13
    /// Smallest possible tensor info: 8-byte name length, 4-byte dim count, 4-byte type, 8-byte offset.
    static let minTensorInfoBytes = 24

    static func parse(_ raw: UnsafeRawBufferPointer) throws(GGUFError) -> Parsed {
        var c = ByteCursor(base: raw)
        try c.require(4, "magic")
        let magic = Array(UnsafeRawBufferPointer(rebasing: raw[0..<4]))
        guard magic == Array("GGUF".utf8) else { throw .badMagic(found: magic) }
        c.offset = 4
        let version = try c.read(UInt32.self, "version")
        guard version == 3 else { throw .unsupportedVersion(version) }

        let tensorCountOffset = c.offset
        let tensorCount = try c.read(UInt64.self, "tensor count")
        let kvCountOffset = c.offset
        let kvCount = try c.read(UInt64.self, "metadata count")
        guard kvCount <= UInt64(c.remaining / Self.minKVBytes) else {
            throw .countTooLarge(what: "metadata count", count: kvCount, offset: kvCountOffset, remainingBytes: c.remaining)
        }
        guard tensorCount <= UInt64(c.remaining / Self.minTensorInfoBytes) else {
            throw .countTooLarge(what: "tensor count", count: tensorCount, offset: tensorCountOffset, remainingBytes: c.remaining)
        }

        var keys: [String] = []
        var metadata: [String: GGUFValue] = [:]
        keys.reserveCapacity(Int(kvCount))
        for i in 0..<Int(kvCount) {
            let key = try c.string("key of metadata entry \(i)")
            let typeOffset = c.offset
            let rawType = try c.read(UInt32.self, "value type of '\(key)'")
            guard let type = GGUFValueType(rawValue: rawType) else {
                throw .invalidValueType(key: key, rawType: rawType, offset: typeOffset)
            }
            let value = try Self.value(of: type, key: key, depth: 0, &c)
            guard metadata.updateValue(value, forKey: key) == nil else { throw .duplicateKey(key) }
            keys.append(key)
        }

        var alignment = GGUFFile.defaultAlignment
        if let value = metadata["general.alignment"] {
            let a: UInt64
            switch value {
            case .uint8(let v): a = UInt64(v)
            case .uint16(let v): a = UInt64(v)
            case .uint32(let v): a = UInt64(v)
            case .uint64(let v): a = v
            default:
                throw .wrongValueType(key: "general.alignment", expected: "uint32", found: value.typeDescription)
            }
            guard a > 0, a.nonzeroBitCount == 1, a <= 1 << 30 else { throw .invalidAlignment(a) }
            alignment = Int(a)
        }

        var tensors: [GGUFTensorInfo] = []
        tensors.reserveCapacity(Int(tensorCount))
        var names = Set<String>()
        for i in 0..<Int(tensorCount) {
            let name = try c.string("name of tensor \(i)")
            let nDimsOffset = c.offset
            let nDims = try c.read(UInt32.self, "dimension count of tensor '\(name)'")
            guard nDims <= UInt32(Self.maxDimensions) else {
                throw .tooManyDimensions(tensor: name, count: nDims, offset: nDimsOffset)
            }
            var rawDims: [UInt64] = []
            for d in 0..<Int(nDims) {
                rawDims.append(try c.read(UInt64.self, "dimension \(d) of tensor '\(name)'"))
            }
            let rawType = try c.read(UInt32.self, "type of tensor '\(name)'")
            let dataOffset = try c.read(UInt64.self, "data offset of tensor '\(name)'")
            guard names.insert(name).inserted else { throw .duplicateTensor(name) }
            guard let type = GGMLType(rawValue: rawType) else {
                throw .unknownTensorType(tensor: name, rawType: rawType)
            }
            var dims: [Int] = []
            var elements = 1
            for d in rawDims {
                guard d <= UInt64(Int64.max) else { throw .invalidDimensions(tensor: name, dims: rawDims) }
                let (product, overflow) = elements.multipliedReportingOverflow(by: Int(d))
                guard !overflow else { throw .invalidDimensions(tensor: name, dims: rawDims) }
                elements = product
                dims.append(Int(d))
            }
            let innermost = dims.first ?? 1
            guard innermost % type.blockSize == 0 else {
                throw .shapeNotBlockAligned(tensor: name, innermost: innermost, blockSize: type.blockSize)
            }
            let (byteCount, overflow) = (elements / type.blockSize).multipliedReportingOverflow(by: type.blockBytes)
            guard !overflow else { throw .invalidDimensions(tensor: name, dims: rawDims) }
            guard dataOffset % UInt64(alignment) == 0 else {
                throw .misalignedTensor(tensor: name, offset: dataOffset, alignment: alignment)
            }
            tensors.append(
                GGUFTensorInfo(
                    name: name, dims: dims, type: type,
                    offset: dataOffset <= UInt64(Int.max) ? Int(dataOffset) : Int.max,
                    elementCount: elements, byteCount: byteCount))
            // Bounds against the data section are checked below, once its start is known.
        }

        // Data section: the next multiple of `alignment` after the tensor infos.
        let (padded, overflow) = c.offset.addingReportingOverflow(alignment - 1)
        guard !overflow else { throw .invalidAlignment(UInt64(alignment)) }
        let dataStart = padded / alignment * alignment
        let dataSize = max(0, raw.count - dataStart)
        for t in tensors {
            let (end, overflow) = t.offset.addingReportingOverflow(t.byteCount)
            guard !overflow, end <= dataSize else {
                throw .tensorDataOutOfBounds(tensor: t.name, offset: UInt64(t.offset), byteCount: t.byteCount, dataSectionSize: dataSize)
            }
        }
        return Parsed(
            version: version, keys: keys, metadata: metadata, tensors: tensors,
            alignment: alignment, dataOffset: min(dataStart, raw.count))
    }

    static func value(
        of type: GGUFValueType,
        key: String,
        depth: Int,
        _ c: inout ByteCursor
    ) throws(GGUFError) -> GGUFValue {
        switch type {
        case .uint8: return .uint8(try c.read(UInt8.self, "value of '\(key)'"))
        case .int8: return .int8(try c.read(Int8.self, "value of '\(key)'"))
        case .uint16: return .uint16(try c.read(UInt16.self, "value of '\(key)'"))
        case .int16: return .int16(try c.read(Int16.self, "value of '\(key)'"))
        case .uint32: return .uint32(try c.read(UInt32.self, "value of '\(key)'"))
        case .int32: return .int32(try c.read(Int32.self, "value of '\(key)'"))
        case .uint64: return .uint64(try c.read(UInt64.self, "value of '\(key)'"))
        case .int64: return .int64(try c.read(Int64.self, "value of '\(key)'"))
        case .float32: return .float32(Float(bitPattern: try c.read(UInt32.self, "value of '\(key)'")))
        case .float64: return .float64(Double(bitPattern: try c.read(UInt64.self, "value of '\(key)'")))
        case .bool:
            let offset = c.offset
            let b = try c.read(UInt8.self, "value of '\(key)'")
            guard b <= 1 else {
                throw .wrongValueType(key: key, expected: "bool 0 or 1", found: "byte \(b) at offset \(offset)")
            }
            return .bool(b == 1)
        case .string: return .string(try c.string("string value of '\(key)'"))
        case .array:
            guard depth < Self.maxArrayDepth else {
                throw .arrayNestingTooDeep(key: key, offset: c.offset, limit: Self.maxArrayDepth)
            }
            let typeOffset = c.offset
            let rawType = try c.read(UInt32.self, "array element type of '\(key)'")
            guard let elementType = GGUFValueType(rawValue: rawType) else {
                throw .invalidValueType(key: key, rawType: rawType, offset: typeOffset)
            }
            let countOffset = c.offset
            let count = try c.read(UInt64.self, "array count of '\(key)'")
            guard count <= UInt64(c.remaining / elementType.minimumEncodedSize) else {
                throw .countTooLarge(what: "array count of '\(key)'", count: count, offset: countOffset, remainingBytes: c.remaining)
            }
            var values: [GGUFValue] = []
            values.reserveCapacity(Int(count))
            for _ in 0..<Int(count) {
                values.append(try Self.value(of: elementType, key: key, depth: depth + 1, &c))
            }
            return .array(elementType: elementType, values: values)
        }
    }
}
