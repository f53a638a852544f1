/// Compact JSON writer (no whitespace), used for every response body and SSE chunk.
package struct JSONWriter {
    package private(set) var bytes: [UInt8] = []

    package init(reservingCapacity capacity: Int = 256) { self.bytes.reserveCapacity(capacity) }

    package mutating func write(_ value: JSONValue) {
        switch value {
        case .null: self.raw("null")
        case .bool(let flag): self.raw(flag ? "true" : "false")
        case .int(let number): self.raw(String(number))
        case .double(let number):
            if number.isFinite {
                if number == number.rounded(), abs(number) < 1e15 { self.raw(String(Int64(number))) } else { self.raw("\(number)") }
            } else {
                self.raw("null")
            }
        case .string(let text): self.string(text)
        case .array(let elements):
            self.bytes.append(UInt8(ascii: "["))
            for (offset, element) in elements.enumerated() {
                if offset > 0 { self.bytes.append(UInt8(ascii: ",")) }
                self.write(element)
            }
            self.bytes.append(UInt8(ascii: "]"))
        case .object(let members):
            self.bytes.append(UInt8(ascii: "{"))
            for (offset, member) in members.enumerated() {
                if offset > 0 { self.bytes.append(UInt8(ascii: ",")) }
                self.string(member.0)
                self.bytes.append(UInt8(ascii: ":"))
                self.write(member.1)
            }
            self.bytes.append(UInt8(ascii: "}"))
        }
    }

    private mutating func raw(_ text: String) { self.bytes.append(contentsOf: text.utf8) }

    private static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    private mutating func string(_ text: String) {
        self.bytes.append(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): self.raw("\\\"")
            case UInt8(ascii: "\\"): self.raw("\\\\")
            case 0x0A: self.raw("\\n")
            case 0x0D: self.raw("\\r")
            case 0x09: self.raw("\\t")
            case 0x00..<0x20:
                self.raw("\\u00")
                self.bytes.append(Self.hex[Int(byte >> 4)])
                self.bytes.append(Self.hex[Int(byte & 0xF)])
            default: self.bytes.append(byte)
            }
        }
        self.bytes.append(UInt8(ascii: "\""))
    }

    /// The serialization of one value.
    package static func encode(_ value: JSONValue) -> [UInt8] {
        var writer = JSONWriter()
        writer.write(value)
        return writer.bytes
    }
}
