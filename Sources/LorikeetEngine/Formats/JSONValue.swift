package import Foundation

/// A parsed JSON document, used for the safetensors header, `config.json` and
/// `adapter_config.json` so that each loader reports field-level errors in its own
/// typed error instead of leaking `DecodingError`.
package enum JSONValue: Sendable, Equatable, Decodable {
    case null
    case bool(Bool)
    /// A number with an exact integer value (fits in Int64).
    case integer(Int64)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    package init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let b = try? c.decode(Bool.self) {
            self = .bool(b)
        } else if let i = try? c.decode(Int64.self) {
            self = .integer(i)
        } else if let d = try? c.decode(Double.self) {
            self = .number(d)
        } else if let s = try? c.decode(String.self) {
            self = .string(s)
        } else if let a = try? c.decode([JSONValue].self) {
            self = .array(a)
        } else {
            self = .object(try c.decode([String: JSONValue].self))
        }
    }

    /// Parses JSON bytes; returns the decoder's message on failure.
    package static func parse(_ data: Data) -> Result<JSONValue, JSONParseFailure> {
        do {
            return .success(try JSONDecoder().decode(JSONValue.self, from: data))
        } catch let DecodingError.dataCorrupted(context) {
            return .failure(JSONParseFailure(message: context.underlyingError.map { "\($0)" } ?? context.debugDescription))
        } catch {
            return .failure(JSONParseFailure(message: "\(error)"))
        }
    }

    /// The object's members, or nil when this is not an object.
    package var objectValue: [String: JSONValue]? {
        if case .object(let o) = self { return o }
        return nil
    }

    /// A non-negative integer that fits in `Int`, accepting `2.0` but not `2.5` or `true`.
    package var nonNegativeInt: Int? {
        switch self {
        case .integer(let i) where i >= 0 && i <= Int64(Int.max): Int(i)
        case .number(let d) where d >= 0 && d == d.rounded() && d < 9.0e15: Int(d)
        default: nil
        }
    }

    /// A finite number (integer or not).
    package var doubleValue: Double? {
        switch self {
        case .integer(let i): Double(i)
        case .number(let d) where d.isFinite: d
        default: nil
        }
    }

    /// The string value, or nil.
    package var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    /// The boolean value, or nil.
    package var boolValue: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }
}

/// A JSON syntax error, with the decoder's description.
package struct JSONParseFailure: Error, Sendable {
    /// What the decoder reported.
    package var message: String
}
