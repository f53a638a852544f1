/// Why bytes could not be turned into a message.
package enum ProtoDecodingError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The bytes are not a valid serialization of the expected message.
    case invalidMessage(String)
    /// The message parsed but carries a value this version cannot use.
    case invalidValue(field: String, reason: String)

    package var description: String {
        switch self {
        case .invalidMessage(let reason): return "invalid protobuf message: \(reason)"
        case .invalidValue(let field, let reason): return "invalid value for \(field): \(reason)"
        }
    }
}
