import LorikeetJSON
import LorikeetLimits
import LorikeetStructured

/// Structured output in a generation body, in every spelling vLLM accepts:
/// OpenAI's `response_format` (`json_object`, `json_schema`), vLLM's
/// `structured_outputs` (`json`, `choice`, `json_object`) and its older `guided_json` /
/// `guided_choice`. At most one kind per request (after vLLM's merge). Regular expressions, grammars and
/// structural tags are refused with a 400 naming the field. The schema is compiled here
/// (the HTTP edge), so a schema outside the supported subset fails before it is queued.
extension RequestValidation {
    /// What the engine channel carries for the request's constraint.
    struct StructuredOutput: Equatable {
        var jsonSchema: String?
        var choices: [String] = []
    }

    /// As vLLM merges them: `structured_outputs` first, then `response_format` replaces its
    /// `json` (`json_schema`) or sets `json_object`; the older `guided_json` /
    /// `guided_choice` add their kind. More than one kind in the end is a 400, and so is a
    /// `structured_outputs` with none.
    static func structuredOutput(_ body: JSONValue) throws(APIError) -> StructuredOutput? {
        var json: (schema: String, field: String)?
        var choices: (list: [String], field: String)?
        var jsonObject: String?
        var duplicate: String?
        if let options = body["structured_outputs"], options != .null {
            guard case .object = options else { throw Self.wrongType("structured_outputs", expected: "an object", got: options) }
            for field in ["regex", "grammar", "structural_tag", "whitespace_pattern"] {
                if let value = options[field], value != .null {
                    throw APIError.invalidRequest(
                        "'structured_outputs.\(field)' is not supported by the built-in engine (json, json_object and choice are).",
                        param: "structured_outputs")
                }
            }
            if let schema = options["json"], schema != .null {
                json = (try Self.schemaText(schema, field: "structured_outputs.json"), "structured_outputs")
            }
            if let list = options["choice"], list != .null {
                choices = (try Self.choices(list, field: "structured_outputs.choice"), "structured_outputs")
            }
            if try Self.optionalBool(options, "json_object", name: "structured_outputs.json_object") == true {
                jsonObject = "structured_outputs"
            }
            if json == nil && choices == nil && jsonObject == nil && Self.responseFormatKind(body) == nil {
                // vLLM's words (`StructuredOutputsParams.__post_init__`).
                throw APIError.invalidRequest(
                    "You must use one kind of structured outputs constraint but none are specified.", param: "structured_outputs")
            }
        }
        if let format = body["response_format"], format != .null {
            switch try Self.responseFormat(format) {
            case .json(let schema)?: json = (schema, "response_format")
            case .jsonObject?: jsonObject = "response_format"
            case nil: break
            }
        }
        for field in ["guided_regex", "guided_grammar", "guided_whitespace_pattern"] {
            if let value = body[field], value != .null {
                throw APIError.invalidRequest(
                    "'\(field)' is not supported by the built-in engine (guided_json and guided_choice are).", param: field)
            }
        }
        if let schema = body["guided_json"], schema != .null {
            if json != nil { duplicate = "guided_json" }
            json = (try Self.schemaText(schema, field: "guided_json"), "guided_json")
        }
        if let list = body["guided_choice"], list != .null {
            if choices != nil { duplicate = "guided_choice" }
            choices = (try Self.choices(list, field: "guided_choice"), "guided_choice")
        }
        let kinds = [json?.field, choices?.field, jsonObject].compactMap { $0 }
        if kinds.count > 1 || duplicate != nil {
            // vLLM's words (`StructuredOutputsParams.__post_init__`).
            throw APIError.invalidRequest(
                "You can only use one kind of structured outputs constraint but multiple are specified.",
                param: duplicate ?? kinds.last ?? "structured_outputs")
        }
        let output: StructuredOutput
        let field: String
        if let json {
            (output, field) = (StructuredOutput(jsonSchema: json.schema), json.field)
        } else if let choices {
            (output, field) = (StructuredOutput(choices: choices.list), choices.field)
        } else if let jsonObject {
            (output, field) = (StructuredOutput(jsonSchema: StructuredConstraint.jsonObjectSchema), jsonObject)
        } else {
            return nil
        }
        do {
            _ = try StructuredConstraint.grammar(jsonSchema: output.jsonSchema, choices: output.choices)
        } catch {
            throw APIError.invalidRequest(error.description, param: field)
        }
        return output
    }

    /// What `response_format` asks for.
    private enum ResponseFormat {
        case json(String)
        case jsonObject
    }

    /// The `type` of a `response_format` object, when there is one.
    private static func responseFormatKind(_ body: JSONValue) -> String? {
        guard case .string(let type)? = body["response_format"]?["type"], type != "text" else { return nil }
        return type
    }

    /// OpenAI's `response_format`: nil for `text`.
    private static func responseFormat(_ format: JSONValue) throws(APIError) -> ResponseFormat? {
        guard case .object = format, case .string(let type)? = format["type"] else {
            throw Self.wrongType("response_format", expected: "an object with a 'type'", got: format)
        }
        switch type {
        case "text": return nil
        case "json_object": return .jsonObject
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
            return .json(try Self.schemaText(schema, field: "response_format.json_schema.schema"))
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
