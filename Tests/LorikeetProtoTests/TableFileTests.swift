import Foundation
import LorikeetProto
import Testing

/// The table file format on byte arrays: header, checksum, legacy migration, and every
/// way a file can be wrong (each must refuse, never read as an empty table).
@Suite("Table file format (LKTB header, CRC-32C, legacy)")
struct TableFileTests {
    static let table = AdapterTable(
        version: 7,
        adapters: [
            AdapterRecord(name: "a", intID: 1, path: "/srv/lora/a", baseModel: "tiny", loadedAtUnixMs: 1_700_000_000_000),
            AdapterRecord(name: "b", intID: 4, path: "/srv/lora/b", pinned: true),
        ],
        nextIntID: 5)

    @Test("CRC-32C matches the standard check values")
    func crc() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([UInt8]()) == 0)
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
    }

    @Test("encode writes magic, version, length, checksum, payload; decode reads it back as the current format")
    func roundTrip() throws {
        let bytes = TableFile.encode(Self.table)
        let payload = Self.table.serializedBytes()
        #expect(Array(bytes[0..<4]) == Array("LKTB".utf8))
        #expect(Array(bytes[4..<8]) == [0, 0, 0, 1])
        #expect(bytes.count == 16 + payload.count)
        #expect(Array(bytes[8..<12]) == [0, 0, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)])
        let crc = CRC32C.checksum(payload)
        #expect(Array(bytes[12..<16]) == [UInt8(crc >> 24), UInt8((crc >> 16) & 0xFF), UInt8((crc >> 8) & 0xFF), UInt8(crc & 0xFF)])
        #expect(Array(bytes[16...]) == payload)
        let decoded = try TableFile.decode(bytes)
        #expect(decoded.table == Self.table && decoded.format == .current)
        // An empty table (version 0, no adapters) still has a header: never 0 bytes.
        #expect(try TableFile.decode(TableFile.encode(AdapterTable())).table == AdapterTable())
    }

    @Test("a legacy file (bare protobuf) is read and reported as legacy")
    func legacy() throws {
        let decoded = try TableFile.decode(Self.table.serializedBytes())
        #expect(decoded.table == Self.table && decoded.format == .legacy)
    }

    static func withHeader(version: UInt32 = 1, length: Int? = nil, crc: UInt32? = nil, payload: [UInt8]) -> [UInt8] {
        func be(_ value: UInt32) -> [UInt8] { [24, 16, 8, 0].map { UInt8((value >> UInt32($0)) & 0xFF) } }
        return Array("LKTB".utf8) + be(version) + be(UInt32(length ?? payload.count)) + be(crc ?? CRC32C.checksum(payload)) + payload
    }

    static var hostileFiles: [(String, [UInt8], String)] {
        let good = TableFile.encode(Self.table)
        let payload = Self.table.serializedBytes()
        var flipped = good
        flipped[good.count - 3] ^= 0x01
        let inconsistent = AdapterTable(version: 1, adapters: [AdapterRecord(name: "a", intID: 5, path: "/a")], nextIntID: 3)
        return [
            ("empty file", [], "empty (0 bytes)"),
            ("magic only", Array("LKTB".utf8), "truncated (4 of 16 bytes)"),
            ("header cut", Array(good[0..<10]), "truncated (10 of 16 bytes)"),
            ("payload cut", Array(good.dropLast()), "truncated"),
            ("trailing bytes", good + [0], "1 unexpected bytes"),
            ("version 2", Self.withHeader(version: 2, payload: payload), "format version 2 is not supported"),
            ("version 0", Self.withHeader(version: 0, payload: payload), "format version 0 is not supported"),
            ("flipped payload bit", flipped, "checksum mismatch"),
            ("wrong checksum", Self.withHeader(crc: 0xDEAD_BEEF, payload: payload), "checksum mismatch"),
            ("length beyond the file", Self.withHeader(length: 1 << 30, payload: payload), "truncated"),
            ("garbage with a valid header", Self.withHeader(payload: [0xFF, 0xFF, 0xFF]), "does not decode"),
            ("oversized", [UInt8](repeating: 0, count: TableFile.maximumSize + 1), "limit is \(TableFile.maximumSize) bytes"),
            ("other magic", Array("LKTA".utf8) + Array(good[4...]), "not a Lorikeet adapter table"),
            ("text file", Array("hello, world\n".utf8), "not a Lorikeet adapter table"),
            ("random bytes", [0xFF, 0xFF, 0xFF], "not a Lorikeet adapter table"),
            ("legacy with version 0", AdapterTable(version: 0, adapters: [], nextIntID: 1).serializedBytes(), "not a Lorikeet"),
            ("legacy with an unknown field", payload + [0xF8, 0x07, 0x01], "not a Lorikeet adapter table"),
            ("inconsistent table", TableFile.encode(inconsistent), "inconsistent"),
            ("inconsistent legacy table", inconsistent.serializedBytes(), "inconsistent"),
        ]
    }

    @Test("every broken, foreign or empty file is refused with its reason", arguments: Self.hostileFiles.indices)
    func hostile(_ index: Int) {
        let (label, bytes, reason) = Self.hostileFiles[index]
        #expect(throws: TableFileError.self, "\(label) was accepted") { try TableFile.decode(bytes) }
        do {
            _ = try TableFile.decode(bytes)
        } catch {
            #expect(error.description.contains(reason), "\(label): \(error)")
        }
    }

    @Test("no single-byte corruption of a good file is accepted as a different table")
    func everyByteFlip() {
        let good = TableFile.encode(Self.table)
        for offset in good.indices {
            var bytes = good
            bytes[offset] ^= 0x40
            if let decoded = try? TableFile.decode(bytes) { Issue.record("flip at \(offset) read as \(decoded)") }
        }
    }
}
