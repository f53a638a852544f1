import LorikeetJSON
import LorikeetLimits

/// The structured-output constraint as the engine channel carries it (a JSON schema's
/// text, or the choices), checked against the limits and compiled. The worker runs it at
/// the HTTP edge (a bad schema is a 400 before anything is queued) and the engine again
/// on what it receives.
package enum StructuredConstraint {
    /// The grammar of a request's constraint; nil when it has none.
    package static func grammar(jsonSchema: String?, choices: [String]) throws(StructuredOutputError) -> OutputGrammar? {
        if let jsonSchema {
            guard choices.isEmpty else {
                throw .tooLarge("Only one kind of structured output may be given, not both a schema and choices.")
            }
            guard jsonSchema.utf8.count <= Limits.structuredConstraintBytes else {
                throw .tooLarge(
                    "The JSON schema is \(jsonSchema.utf8.count) bytes; the limit is \(Limits.structuredConstraintBytes) bytes.")
            }
            let schema: JSONValue
            do {
                schema = try JSONParser.parse(Array(jsonSchema.utf8), maximumValues: Limits.structuredSchemaNodes * 4)
            } catch {
                throw .invalidKeyword("schema", at: "#", reason: "it is not JSON (\(error))")
            }
            return try JSONSchemaCompiler.compile(schema)
        }
        guard !choices.isEmpty else { return nil }
        guard choices.count <= Limits.structuredChoices else {
            throw .tooLarge("There are \(choices.count) choices; the limit is \(Limits.structuredChoices).")
        }
        let bytes = choices.reduce(0) { $0 + $1.utf8.count }
        guard bytes <= Limits.structuredConstraintBytes else {
            throw .tooLarge("The choices are \(bytes) bytes together; the limit is \(Limits.structuredConstraintBytes) bytes.")
        }
        guard !choices.contains(where: \.isEmpty) else {
            throw .unsatisfiable("a choice is the empty string, which no token spells", at: "choices")
        }
        return .choice(choices)
    }

    /// The schema text that stands for OpenAI's JSON mode (`json_object`): any object.
    package static let jsonObjectSchema = #"{"type":"object"}"#
}
