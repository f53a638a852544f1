/// Why a document is not JSON; carries the byte offset for the error message.
package struct JSONParseError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Byte offset of the failure in the document.
    package var offset: Int
    /// What is wrong there, e.g. "number out of range".
    package var reason: String
    /// The name of the innermost object member whose value holds the failure (nil when it
    /// is in no member's value), so a loader can name the field (`'lora_alpha'`) in its
    /// own error. Taken from the input: bound it before showing it. Not in `description`.
    package var member: String? = nil

    package init(offset: Int, reason: String, member: String? = nil) {
        self.offset = offset
        self.reason = reason
        self.member = member
    }

    package var description: String { "\(self.reason) at byte \(self.offset)" }
}

/// A strict RFC 8259 parser with a nesting limit (hostile bodies cannot exhaust the stack).
///
/// Refused: trailing data, leading zeros, `NaN`/`Infinity`, comments, single quotes, raw
/// control characters and invalid UTF-8 in strings, unpaired surrogate escapes, numbers
/// that overflow a `Double` (`1e400`). Duplicate object keys are kept (see `JSONValue`).
package struct JSONParser {
    private let bytes: [UInt8]
    private var index = 0
    private var depth = 0
    private var valuesLeft = 0
    private var maximumValues = 0
    /// Deepest nesting of arrays and objects accepted. Request bodies need a handful of
    /// levels, safetensors headers three, Hugging Face `config.json` files about four.
    package static let maximumDepth = 64

    /// Default `maximumValues`: far above any config or header, and it keeps a hostile
    /// document's tree (about 40 bytes per value) within tens of MiB.
    package static let defaultMaximumValues = 2_000_000

    /// Parses one JSON document; trailing non-whitespace is an error, and so is a document
    /// of more than `maximumValues` values (an 8 MiB body of `[0,0,...]` would otherwise
    /// become a tree of 4 million values, 25 times its size).
    package static func parse(
        _ bytes: [UInt8], maximumValues: Int = Self.defaultMaximumValues
    ) throws(JSONParseError) -> JSONValue {
        var parser = JSONParser(bytes: bytes)
        parser.valuesLeft = maximumValues
        parser.maximumValues = maximumValues
        parser.skipWhitespace()
        let value = try parser.parseValue()
        parser.skipWhitespace()
        guard parser.index == bytes.count else { throw parser.error("unexpected data after the JSON value") }
        return value
    }

    private init(bytes: [UInt8]) { self.bytes = bytes }

    private func error(_ reason: String) -> JSONParseError { JSONParseError(offset: self.index, reason: reason) }

    private mutating func skipWhitespace() {
        while self.index < self.bytes.count {
            switch self.bytes[self.index] {
            case 0x20, 0x09, 0x0A, 0x0D: self.index += 1
            default: return
            }
        }
    }

    private mutating func parseValue() throws(JSONParseError) -> JSONValue {
        guard self.index < self.bytes.count else { throw self.error("unexpected end of input") }
        self.valuesLeft -= 1
        guard self.valuesLeft >= 0 else { throw self.error("more than \(self.maximumValues) values") }
        switch self.bytes[self.index] {
        case UInt8(ascii: "{"): return try self.parseObject()
        case UInt8(ascii: "["): return try self.parseArray()
        case UInt8(ascii: "\""): return .string(try self.parseString())
        case UInt8(ascii: "t"):
            try self.expectLiteral("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try self.expectLiteral("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try self.expectLiteral("null")
            return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try self.parseNumber()
        default: throw self.error("unexpected character")
        }
    }

    private mutating func expectLiteral(_ literal: StaticString) throws(JSONParseError) {
        let count = literal.utf8CodeUnitCount
        guard self.index + count <= self.bytes.count else { throw self.error("invalid literal") }
        let matches = literal.withUTF8Buffer { expected in
            (0..<count).allSatisfy { self.bytes[self.index + $0] == expected[$0] }
        }
        guard matches else { throw self.error("invalid literal") }
        self.index += count
    }

    private mutating func enter() throws(JSONParseError) {
        self.depth += 1
        if self.depth > Self.maximumDepth { throw self.error("nesting deeper than \(Self.maximumDepth) levels") }
    }

    private mutating func parseObject() throws(JSONParseError) -> JSONValue {
        try self.enter()
        defer { self.depth -= 1 }
        self.index += 1
        var members: [(String, JSONValue)] = []
        self.skipWhitespace()
        if self.index < self.bytes.count, self.bytes[self.index] == UInt8(ascii: "}") {
            self.index += 1
            return .object(members)
        }
        while true {
            self.skipWhitespace()
            guard self.index < self.bytes.count, self.bytes[self.index] == UInt8(ascii: "\"") else {
                throw self.error("expected a string key")
            }
            let key = try self.parseString()
            self.skipWhitespace()
            guard self.index < self.bytes.count, self.bytes[self.index] == UInt8(ascii: ":") else {
                throw self.error("expected ':'")
            }
            self.index += 1
            self.skipWhitespace()
            let value: JSONValue
            do {
                value = try self.parseValue()
            } catch {
                var error = error
                if error.member == nil { error.member = key }
                throw error
            }
            members.append((key, value))
            self.skipWhitespace()
            guard self.index < self.bytes.count else { throw self.error("unexpected end of input") }
            if self.bytes[self.index] == UInt8(ascii: ",") {
                self.index += 1
                continue
            }
            if self.bytes[self.index] == UInt8(ascii: "}") {
                self.index += 1
                return .object(members)
            }
            throw self.error("expected ',' or '}'")
        }
    }

    private mutating func parseArray() throws(JSONParseError) -> JSONValue {
        try self.enter()
        defer { self.depth -= 1 }
        self.index += 1
        var elements: [JSONValue] = []
        self.skipWhitespace()
        if self.index < self.bytes.count, self.bytes[self.index] == UInt8(ascii: "]") {
            self.index += 1
            return .array(elements)
        }
        while true {
            self.skipWhitespace()
            elements.append(try self.parseValue())
            self.skipWhitespace()
            guard self.index < self.bytes.count else { throw self.error("unexpected end of input") }
            if self.bytes[self.index] == UInt8(ascii: ",") {
                self.index += 1
                continue
            }
            if self.bytes[self.index] == UInt8(ascii: "]") {
                self.index += 1
                return .array(elements)
            }
            throw self.error("expected ',' or ']'")
        }
    }

    private mutating func parseHex4() throws(JSONParseError) -> UInt32 {
        guard self.index + 4 <= self.bytes.count else { throw self.error("truncated \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = self.bytes[self.index]
            let digit: UInt32
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(byte - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(byte - UInt8(ascii: "A") + 10)
            default: throw self.error("invalid \\u escape")
            }
            value = value << 4 | digit
            self.index += 1
        }
        return value
    }

    private mutating func parseString() throws(JSONParseError) -> String {
        self.index += 1
        var scalars: [UInt8] = []
        var start = self.index
        while true {
            guard self.index < self.bytes.count else { throw self.error("unterminated string") }
            let byte = self.bytes[self.index]
            if byte == UInt8(ascii: "\"") {
                scalars.append(contentsOf: self.bytes[start..<self.index])
                self.index += 1
                break
            }
            if byte < 0x20 { throw self.error("control character in string") }
            if byte != UInt8(ascii: "\\") {
                self.index += 1
                continue
            }
            scalars.append(contentsOf: self.bytes[start..<self.index])
            self.index += 1
            guard self.index < self.bytes.count else { throw self.error("unterminated escape") }
            let escape = self.bytes[self.index]
            self.index += 1
            switch escape {
            case UInt8(ascii: "\""): scalars.append(UInt8(ascii: "\""))
            case UInt8(ascii: "\\"): scalars.append(UInt8(ascii: "\\"))
            case UInt8(ascii: "/"): scalars.append(UInt8(ascii: "/"))
            case UInt8(ascii: "b"): scalars.append(0x08)
            case UInt8(ascii: "f"): scalars.append(0x0C)
            case UInt8(ascii: "n"): scalars.append(0x0A)
            case UInt8(ascii: "r"): scalars.append(0x0D)
            case UInt8(ascii: "t"): scalars.append(0x09)
            case UInt8(ascii: "u"):
                var code = try self.parseHex4()
                if (0xD800...0xDBFF).contains(code) {
                    // A high surrogate must be followed by an escaped low surrogate.
                    guard self.index + 6 <= self.bytes.count, self.bytes[self.index] == UInt8(ascii: "\\"),
                        self.bytes[self.index + 1] == UInt8(ascii: "u")
                    else { throw self.error("unpaired surrogate") }
                    self.index += 2
                    let low = try self.parseHex4()
                    guard (0xDC00...0xDFFF).contains(low) else { throw self.error("unpaired surrogate") }
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00...0xDFFF).contains(code) {
                    throw self.error("unpaired surrogate")
                }
                guard let scalar = Unicode.Scalar(code) else { throw self.error("invalid code point") }
                scalars.append(contentsOf: Array(String(Character(scalar)).utf8))
            default: throw self.error("invalid escape")
            }
            start = self.index
        }
        guard let string = String(validating: scalars, as: UTF8.self) else {
            throw self.error("string is not valid UTF-8")
        }
        return string
    }

    private mutating func parseNumber() throws(JSONParseError) -> JSONValue {
        let start = self.index
        var isInteger = true
        if self.bytes[self.index] == UInt8(ascii: "-") { self.index += 1 }
        func digits(_ parser: inout JSONParser) -> Int {
            let begin = parser.index
            while parser.index < parser.bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(parser.bytes[parser.index]) {
                parser.index += 1
            }
            return parser.index - begin
        }
        let intStart = self.index
        let intDigits = digits(&self)
        guard intDigits > 0 else { throw self.error("invalid number") }
        if intDigits > 1, self.bytes[intStart] == UInt8(ascii: "0") { throw self.error("leading zero in number") }
        if self.index < self.bytes.count, self.bytes[self.index] == UInt8(ascii: ".") {
            isInteger = false
            self.index += 1
            guard digits(&self) > 0 else { throw self.error("invalid number") }
        }
        if self.index < self.bytes.count, self.bytes[self.index] == UInt8(ascii: "e") || self.bytes[self.index] == UInt8(ascii: "E") {
            isInteger = false
            self.index += 1
            if self.index < self.bytes.count, self.bytes[self.index] == UInt8(ascii: "+") || self.bytes[self.index] == UInt8(ascii: "-") {
                self.index += 1
            }
            guard digits(&self) > 0 else { throw self.error("invalid number") }
        }
        let text = String(decoding: self.bytes[start..<self.index], as: UTF8.self)
        if isInteger, let value = Int64(text) { return .int(value) }
        guard let value = Double(text), value.isFinite else { throw self.error("number out of range") }
        return .double(value)
    }
}
