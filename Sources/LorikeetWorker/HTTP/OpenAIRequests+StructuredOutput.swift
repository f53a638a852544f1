import LorikeetJSON
import LorikeetLimits
import LorikeetStructured

/// Structured output in a generation body, in every spelling vLLM accepts:
/// OpenAI's `response_format` (`json_object`, `json_schema`), vLLM's
/// `structured_outputs` (`json`, `choice`, `json_object`) and its older `guided_json` /
/// `guided_choice`. At most one kind per request. Regular expressions, grammars and
/// structural tags are refused with a 400 naming the field. The schema is compiled here
/// (the HTTP edge), so a schema outside the supported subset fails before it is queued.
extension RequestValidation {
    /// What the engine channel carries for the request's constraint.
    struct StructuredOutput: Equatable {
        var jsonSchema: String?
        var choices: [String] = []
    }

    static func structuredOutput(_ body: JSONValue) throws(APIError) -> StructuredOutput? {
        var found: [(field: String, output: StructuredOutput)] = []
        if let format = body["response_format"], format != .null {
            if let output = try Self.responseFormat(format) { found.append(("response_format", output)) }
        }
        if let options = body["structured_outputs"], options != .null {
            guard case .object = options else { throw Self.wrongType("structured_outputs", expected: "an object", got: options) }
            for field in ["regex", "grammar", "structural_tag", "whitespace_pattern"] {
                if let value = options[field], value != .null {
                    throw APIError.invalidRequest(
                        "'structured_outputs.\(field)' is not supported by the built-in engine (JSON schema, JSON object and choice are).",
                        param: "structured_outputs")
                }
            }
            if let schema = options["json"], schema != .null {
                found.append(
                    ("structured_outputs", StructuredOutput(jsonSchema: try Self.schemaText(schema, field: "structured_outputs.json"))))
            }
            if let choices = options["choice"], choices != .null {
                found.append(
                    ("structured_outputs", StructuredOutput(choices: try Self.choices(choices, field: "structured_outputs.choice"))))
            }
            if try Self.optionalBool(options, "json_object", name: "structured_outputs.json_object") == true {
                found.append(("structured_outputs", StructuredOutput(jsonSchema: StructuredConstraint.jsonObjectSchema)))
            }
        }
        for field in ["guided_regex", "guided_grammar", "guided_whitespace_pattern"] {
            if let value = body[field], value != .null {
                throw APIError.invalidRequest(
                    "'\(field)' is not supported by the built-in engine (guided_json and guided_choice are).", param: field)
            }
        }
        if let schema = body["guided_json"], schema != .null {
            found.append(("guided_json", StructuredOutput(jsonSchema: try Self.schemaText(schema, field: "guided_json"))))
        }
        if let choices = body["guided_choice"], choices != .null {
            found.append(("guided_choice", StructuredOutput(choices: try Self.choices(choices, field: "guided_choice"))))
        }
        guard let first = found.first else { return nil }
        guard found.count == 1 else {
            // vLLM's words (`StructuredOutputsParams.__post_init__`).
            throw APIError.invalidRequest(
                "You can only use one kind of structured outputs constraint but multiple are specified: "
                    + found.map(\.field).joined(separator: ", ") + ".", param: found[1].field)
        }
        do {
            _ = try StructuredConstraint.grammar(jsonSchema: first.output.jsonSchema, choices: first.output.choices)
        } catch {
            throw APIError.invalidRequest(error.description, param: first.field)
        }
        return first.output
    }

    /// OpenAI's `response_format`: nil for `text`.
    private static func responseFormat(_ format: JSONValue) throws(APIError) -> StructuredOutput? {
        guard case .object = format, case .string(let type)? = format["type"] else {
            throw Self.wrongType("response_format", expected: "an object with a 'type'", got: format)
        }
        switch type {
        case "text": return nil
        case "json_object": return StructuredOutput(jsonSchema: StructuredConstraint.jsonObjectSchema)
        case "json_schema":
            guard let wrapper = format["json_schema"], case .object = wrapper else {
                throw APIError.invalidRequest(
                    "'response_format' of type 'json_schema' needs a 'json_schema' object with the 'schema'.", param: "response_format")
            }
            guard let schema = wrapper["schema"], schema != .null else {
                throw APIError.invalidRequest(
                    "'response_format.json_schema.schema' is required: the JSON schema the output must match.",
                    param: "response_format")
            }
            return StructuredOutput(jsonSchema: try Self.schemaText(schema, field: "response_format.json_schema.schema"))
        default:
            throw APIError.invalidRequest(
                "'response_format' of type '\(type.echoed(limit: 32))' is not supported; use 'text', 'json_object' or 'json_schema'.",
                param: "response_format")
        }
    }

    /// A schema given as an object (or a boolean), or as JSON text (vLLM accepts both).
    private static func schemaText(_ schema: JSONValue, field: String) throws(APIError) -> String {
        let top = field.split(separator: ".").first.map(String.init) ?? field
        switch schema {
        case .string(let text):
            guard text.utf8.count <= Limits.structuredConstraintBytes else {
                throw APIError.invalidRequest(
                    "'\(field)' is \(text.utf8.count) bytes; the limit is \(Limits.structuredConstraintBytes) bytes.", param: top)
            }
            try Self.refuseNUL(text, param: top)
            return text
        case .object, .bool:
            var writer = JSONWriter()
            writer.write(schema)
            guard writer.bytes.count <= Limits.structuredConstraintBytes else {
                throw APIError.invalidRequest(
                    "'\(field)' is \(writer.bytes.count) bytes as JSON; the limit is \(Limits.structuredConstraintBytes) bytes.",
                    param: top)
            }
            let text = String(decoding: writer.bytes, as: UTF8.self)
            try Self.refuseNUL(text, param: top)
            return text
        default:
            throw Self.wrongType(field, expected: "a JSON schema (an object)", got: schema)
        }
    }

    private static func choices(_ value: JSONValue, field: String) throws(APIError) -> [String] {
        let top = field.split(separator: ".").first.map(String.init) ?? field
        guard case .array(let entries) = value else { throw Self.wrongType(field, expected: "an array of strings", got: value) }
        var choices: [String] = []
        for entry in entries {
            guard case .string(let text) = entry else {
                throw Self.wrongType(field, expected: "an array of strings", got: entry)
            }
            try Self.refuseNUL(text, param: top)
            choices.append(text)
        }
        guard !choices.isEmpty else { throw APIError.invalidRequest("'\(field)' must list at least one choice.", param: top) }
        return choices
    }
}
