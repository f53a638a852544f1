/// Why a structured-output constraint cannot be used; every case reads as a 400 message.
package enum StructuredOutputError: Error, Equatable, CustomStringConvertible {
    /// A schema keyword outside the supported subset (docs/structured-output.md).
    case unsupportedKeyword(String, at: String)
    /// A keyword whose value has the wrong shape.
    case invalidKeyword(String, at: String, reason: String)
    /// A `$ref` that does not name a local definition.
    case unresolvedReference(String, at: String)
    /// A limit of `Limits` was exceeded.
    case tooLarge(String)
    /// The schema cannot be satisfied by any document (e.g. an empty `enum`).
    case unsatisfiable(String, at: String)

    package var description: String {
        switch self {
        case .unsupportedKeyword(let keyword, let at):
            "The JSON schema keyword '\(keyword)' (at \(at)) is not supported by the built-in engine's structured output; "
                + "see docs/structured-output.md for the supported subset."
        case .invalidKeyword(let keyword, let at, let reason):
            "The JSON schema keyword '\(keyword)' (at \(at)) is invalid: \(reason)."
        case .unresolvedReference(let reference, let at):
            "The JSON schema '$ref' '\(reference)' (at \(at)) does not name a definition of this schema "
                + "('#', '#/$defs/NAME' or '#/definitions/NAME')."
        case .tooLarge(let what): what
        case .unsatisfiable(let reason, let at): "The JSON schema cannot be satisfied (at \(at)): \(reason)."
        }
    }
}
