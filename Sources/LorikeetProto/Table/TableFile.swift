/// The on-disk format of the committed adapter table (`adapters.table`, and a standalone
/// worker's `adapters.pb`):
///
/// ```
/// offset  size  field
///      0     4  magic "LKTB"
///      4     4  format version, big-endian (1)
///      8     4  payload length in bytes, big-endian
///     12     4  CRC-32C (Castagnoli) of the payload, big-endian
///     16     n  payload: one protobuf `lorikeet.v1.AdapterTable`
/// ```
///
/// A file without the magic is read as the legacy format (the bare protobuf, written
/// until format 1 existed) only when it re-encodes to exactly its own bytes and has a
/// version: an empty file, a truncated one or a foreign one never reads as an empty table.
package enum TableFile {
    /// "LKTB".
    package static let magic: [UInt8] = [0x4C, 0x4B, 0x54, 0x42]
    /// The format this build writes and reads.
    package static let formatVersion: UInt32 = 1
    /// Bytes before the payload.
    package static let headerSize = 16
    /// Largest file accepted or written (`Limits.tableFileBytes`).
    package static let maximumSize = Limits.tableFileBytes

    /// How a file was stored.
    package enum Format: Sendable, Equatable {
        /// Header + payload (this format).
        case current
        /// The bare protobuf of earlier builds: rewritten in the current format on the next save.
        case legacy
    }

    /// The file's bytes for `table`.
    package static func encode(_ table: AdapterTable) -> [UInt8] {
        let payload = table.serializedBytes()
        var bytes = Self.magic
        bytes.reserveCapacity(Self.headerSize + payload.count)
        Self.append(Self.formatVersion, to: &bytes)
        Self.append(UInt32(payload.count), to: &bytes)
        Self.append(CRC32C.checksum(payload), to: &bytes)
        bytes += payload
        return bytes
    }

    /// The table stored in `bytes`, and how it was stored. Throws the reason the bytes are
    /// not a table (a message for the operator; never the bytes themselves).
    package static func decode(_ bytes: [UInt8]) throws(TableFileError) -> (table: AdapterTable, format: Format) {
        if bytes.isEmpty { throw .empty }
        if bytes.count > Self.maximumSize { throw .tooLarge(bytes: bytes.count, maximum: Self.maximumSize) }
        let table: AdapterTable
        let format: Format
        if bytes.starts(with: Self.magic) {
            guard bytes.count >= Self.headerSize else { throw .truncated(bytes: bytes.count, expected: Self.headerSize) }
            let version = Self.readUInt32(bytes, at: 4)
            guard version == Self.formatVersion else { throw .unsupportedVersion(version, supported: Self.formatVersion) }
            let length = Int(Self.readUInt32(bytes, at: 8))
            let expected = Self.headerSize + length
            guard bytes.count >= expected else { throw .truncated(bytes: bytes.count, expected: expected) }
            guard bytes.count == expected else { throw .trailingBytes(bytes.count - expected) }
            let payload = Array(bytes[Self.headerSize...])
            let stored = Self.readUInt32(bytes, at: 12)
            let computed = CRC32C.checksum(payload)
            guard stored == computed else { throw .checksumMismatch(stored: stored, computed: computed) }
            do {
                table = try AdapterTable(serializedBytes: payload)
            } catch {
                throw .invalidPayload("\(error)")
            }
            format = .current
        } else {
            // Legacy: a bare AdapterTable written by this same codec re-encodes to the same
            // bytes, and any commit made its version at least 1. Anything else is foreign.
            do {
                table = try AdapterTable(serializedBytes: bytes)
            } catch {
                throw .foreign
            }
            guard table.version > 0, table.serializedBytes() == bytes else { throw .foreign }
            format = .legacy
        }
        if let problem = TableRules.inconsistency(in: table) { throw .inconsistent(problem) }
        return (table, format)
    }

    static func append(_ value: UInt32, to bytes: inout [UInt8]) {
        bytes += [
            UInt8(truncatingIfNeeded: value >> 24), UInt8(truncatingIfNeeded: value >> 16), UInt8(truncatingIfNeeded: value >> 8),
            UInt8(truncatingIfNeeded: value),
        ]
    }

    static func readUInt32(_ bytes: [UInt8], at offset: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 << 8 | UInt32(bytes[offset + $1]) }
    }
}

/// Why bytes are not a table file.
package enum TableFileError: Error, Equatable, Sendable, CustomStringConvertible {
    case empty
    case tooLarge(bytes: Int, maximum: Int)
    case truncated(bytes: Int, expected: Int)
    case trailingBytes(Int)
    case unsupportedVersion(UInt32, supported: UInt32)
    case checksumMismatch(stored: UInt32, computed: UInt32)
    case invalidPayload(String)
    case foreign
    case inconsistent(String)

    package var description: String {
        func hex(_ value: UInt32) -> String { "0x" + String(value, radix: 16) }
        switch self {
        case .empty: return "the file is empty (0 bytes)"
        case .tooLarge(let bytes, let maximum): return "the file is \(bytes) bytes; the limit is \(maximum) bytes"
        case .truncated(let bytes, let expected): return "the file is truncated (\(bytes) of \(expected) bytes)"
        case .trailingBytes(let count): return "\(count) unexpected bytes follow the table"
        case .unsupportedVersion(let version, let supported):
            return "format version \(version) is not supported (this build reads version \(supported))"
        case .checksumMismatch(let stored, let computed):
            return "checksum mismatch (stored \(hex(stored)), computed \(hex(computed)))"
        case .invalidPayload(let reason): return "the table inside does not decode: \(reason)"
        case .foreign: return "it is not a Lorikeet adapter table (no LKTB header, and not a table of an earlier version)"
        case .inconsistent(let reason): return "the table is inconsistent: \(reason)"
        }
    }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as in iSCSI, ext4 and
/// Snappy framing; table-driven, one byte at a time (tables are small; speed does not matter).
package enum CRC32C {
    private static let table: [UInt32] = (0..<256).map { index in
        var value = UInt32(index)
        for _ in 0..<8 { value = value & 1 != 0 ? (value >> 1) ^ 0x82F6_3B78 : value >> 1 }
        return value
    }

    /// The CRC-32C of `bytes` ("123456789" -> 0xE3069283).
    package static func checksum(_ bytes: some Sequence<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes { crc = Self.table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }
}
