/// A parsed JSON value, the one JSON type of the package: HTTP request and response bodies
/// in the worker, and `config.json`, `adapter_config.json` and safetensors headers in the
/// engine. Documents are parsed into this first so that every field can be validated by
/// hand and each error names its field (the OpenAI envelope's `param`, the engine's typed
/// load errors), which a `Decodable` type cannot do for wrong types and missing fields in
/// one pass.
///
/// Numbers keep their spelling class: integers that fit `Int64` stay exact (seeds, token
/// ids), everything else is a `Double` (so `2^63` and `2.0` are `.double`).
///
/// Objects keep every member in document order, duplicates included. Every lookup
/// (`subscript`, `objectValue`) takes the **last** member of a name, as Python's `json`
/// (vLLM, PEFT, Transformers) and Foundation's `JSONDecoder` do, so a duplicated key means
/// the same thing here as in the tools that wrote or will read the file.
package enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    package static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case (.bool(let a), .bool(let b)): return a == b
        case (.int(let a), .int(let b)): return a == b
        case (.double(let a), .double(let b)): return a == b
        case (.string(let a), .string(let b)): return a == b
        case (.array(let a), .array(let b)): return a == b
        case (.object(let a), .object(let b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    /// The member `key` of an object (the last one on duplicates), or nil.
    package subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        return members.last(where: { $0.0 == key })?.1
    }

    /// The object's members by name (the last one on duplicates), or nil when this is not
    /// an object. For documents looked up by many names (safetensors headers).
    package var objectValue: [String: JSONValue]? {
        guard case .object(let members) = self else { return nil }
        return Dictionary(members, uniquingKeysWith: { _, last in last })
    }

    /// A non-negative integer that fits in `Int`, accepting `2.0` and `2e3` but not `2.5`,
    /// `true` or integers beyond 2^53 spelled as doubles.
    package var nonNegativeInt: Int? {
        switch self {
        case .int(let i) where i >= 0 && i <= Int64(Int.max): Int(i)
        case .double(let d) where d >= 0 && d == d.rounded() && d < 9.0e15: Int(d)
        default: nil
        }
    }

    /// A number (integer or not) as a `Double`; always finite, the parser refuses overflow.
    package var doubleValue: Double? {
        switch self {
        case .int(let i): Double(i)
        case .double(let d) where d.isFinite: d
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

    /// JSON type name used in error messages.
    package var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "boolean"
        case .int, .double: "number"
        case .string: "string"
        case .array: "array"
        case .object: "object"
        }
    }
}
