package import LorikeetJSON
import LorikeetLimits

/// Compiles a JSON schema (a documented subset, docs/structured-output.md) into an
/// `OutputGrammar`. Anything outside the subset is refused with the keyword's name rather
/// than ignored, so a client never gets a document that only looks constrained.
///
/// Supported: `type` (one or a list) of object, array, string, integer, number, boolean,
/// null; `properties`, `required`, `additionalProperties` (boolean or schema); `items`,
/// `minItems`, `maxItems`; `minLength`, `maxLength`; `enum`, `const`; `anyOf`, `oneOf`
/// (generated as `anyOf`), a one-entry `allOf`; `$ref` to `#`, `#/$defs/NAME` or
/// `#/definitions/NAME`. Annotations (`title`, `description`, `default`, `examples`,
/// `$schema`, `$id`, `$comment`, `deprecated`, `readOnly`, `writeOnly`) are ignored.
///
/// Unlike JSON Schema's default, an object schema with `properties` and no
/// `additionalProperties` allows no other member (xgrammar's strict mode, which vLLM
/// uses); an object schema without `properties` allows any members.
package struct JSONSchemaCompiler {
    private var nodes: [OutputGrammar.Node] = []
    private var references: [String: Int] = [:]
    private let document: JSONValue

    private static let annotations: Set<String> = [
        "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly", "writeOnly",
        "$defs", "definitions",
    ]
    private static let keywords: Set<String> = [
        "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "minLength", "maxLength",
        "enum", "const", "anyOf", "oneOf", "allOf", "$ref",
    ]

    private init(document: JSONValue) { self.document = document }

    /// The grammar of documents valid against `schema`.
    package static func compile(_ schema: JSONValue) throws(StructuredOutputError) -> OutputGrammar {
        var compiler = JSONSchemaCompiler(document: schema)
        let anyValue = compiler.add(.anyValue)
        let anyObject = compiler.add(.object(properties: [], required: 0, additional: anyValue))
        let anyArray = compiler.add(.array(items: anyValue, minItems: 0, maxItems: nil))
        let root = try compiler.node(for: schema, at: "#", depth: 0)
        let grammar = OutputGrammar(nodes: compiler.nodes, root: root, isJSON: true, anyObject: anyObject, anyArray: anyArray)
        for leaves in grammar.leaves where leaves.count > GrammarMatcher.maximumThreads {
            throw .tooLarge(
                "An 'anyOf' (with its '$ref's followed) has \(leaves.count) alternatives; the limit is \(GrammarMatcher.maximumThreads).")
        }
        guard !grammar.leaves[root].isEmpty else {
            throw .unsatisfiable("it refers to itself ('$ref') without ever describing a value", at: "#")
        }
        guard grammar.minimumDepth[root] <= Limits.structuredNestingDepth else {
            throw .unsatisfiable(
                "every document nests deeper than \(Limits.structuredNestingDepth) levels (a required property that requires itself?)",
                at: "#")
        }
        return grammar
    }

    /// The grammar of OpenAI's JSON mode (`response_format: {"type": "json_object"}`): any
    /// JSON object.
    package static func anyObject() -> OutputGrammar {
        // The compile of a fixed, supported schema cannot fail.
        (try? Self.compile(.object([("type", .string("object"))])))!
    }

    private mutating func add(_ node: OutputGrammar.Node) -> Int {
        self.nodes.append(node)
        return self.nodes.count - 1
    }

    private mutating func reserve() throws(StructuredOutputError) -> Int {
        guard self.nodes.count < Limits.structuredSchemaNodes else {
            throw .tooLarge("The JSON schema has more than \(Limits.structuredSchemaNodes) parts; simplify it.")
        }
        return self.add(.anyValue)
    }

    private mutating func node(for schema: JSONValue, at path: String, depth: Int) throws(StructuredOutputError) -> Int {
        guard depth <= Limits.structuredNestingDepth else {
            throw .tooLarge("The JSON schema nests deeper than \(Limits.structuredNestingDepth) levels (at \(path)).")
        }
        let index = try self.reserve()
        self.nodes[index] = try self.compileNode(schema, at: path, depth: depth)
        return index
    }

    private mutating func compileNode(_ schema: JSONValue, at path: String, depth: Int) throws(StructuredOutputError)
        -> OutputGrammar.Node
    {
        if case .bool(let allowed) = schema {
            guard allowed else { throw .unsatisfiable("the schema is 'false'", at: path) }
            return .anyValue
        }
        guard case .object(let members) = schema else {
            throw .invalidKeyword("schema", at: path, reason: "a schema is an object or a boolean, not \(schema.typeName)")
        }
        for (key, _) in members where !Self.keywords.contains(key) && !Self.annotations.contains(key) {
            throw .unsupportedKeyword(key, at: path)
        }
        if let reference = schema["$ref"] {
            guard members.count(where: { Self.keywords.contains($0.0) }) == 1 else {
                throw .unsupportedKeyword("$ref with sibling keywords", at: path)
            }
            return .anyOf([try self.resolve(reference, at: path, depth: depth)])
        }
        // Keywords that decide the value alone: any other keyword next to them would be
        // dropped, so it is refused (`type` next to `enum`/`const` filters the values).
        let deciding = ["const", "enum", "anyOf", "oneOf", "allOf"].filter { schema[$0] != nil }
        if let keyword = deciding.first {
            let allowedBeside: Set<String> = keyword == "const" || keyword == "enum" ? ["type"] : []
            for (key, _) in members where Self.keywords.contains(key) && key != keyword && !allowedBeside.contains(key) {
                throw .unsupportedKeyword("'\(key)' next to '\(keyword)'", at: path)
            }
        }
        if schema["const"] != nil || schema["enum"] != nil {
            let entries: [JSONValue]
            if let value = schema["const"] {
                entries = [value]
            } else {
                guard case .array(let list)? = schema["enum"] else {
                    throw .invalidKeyword("enum", at: path, reason: "it must be an array")
                }
                entries = list
            }
            guard entries.count <= Limits.structuredChoices else {
                throw .tooLarge("'enum' at \(path) has \(entries.count) entries; the limit is \(Limits.structuredChoices).")
            }
            let types = try Self.typeNames(schema["type"], at: path)
            var literals: [[UInt8]] = []
            for entry in entries where types.isEmpty || types.contains(where: { Self.value(entry, hasType: $0) }) {
                let literal = Self.serialized(entry)
                if !literals.contains(literal) { literals.append(literal) }
            }
            guard !literals.isEmpty else { throw .unsatisfiable("no 'enum'/'const' value has the schema's 'type'", at: path) }
            return .literals(literals)
        }
        for keyword in ["anyOf", "oneOf", "allOf"] {
            guard let value = schema[keyword] else { continue }
            guard case .array(let alternatives) = value, !alternatives.isEmpty else {
                throw .invalidKeyword(keyword, at: path, reason: "it must be a non-empty array of schemas")
            }
            if keyword == "allOf" && alternatives.count != 1 {
                throw .unsupportedKeyword("allOf with more than one schema", at: path)
            }
            guard alternatives.count <= Limits.structuredChoices else {
                throw .tooLarge("'\(keyword)' at \(path) has \(alternatives.count) entries; the limit is \(Limits.structuredChoices).")
            }
            var indexes: [Int] = []
            for (offset, alternative) in alternatives.enumerated() {
                indexes.append(try self.node(for: alternative, at: "\(path)/\(keyword)/\(offset)", depth: depth + 1))
            }
            return .anyOf(indexes)
        }
        let given = try Self.typeNames(schema["type"], at: path)
        let types = schema["type"] == nil ? Self.impliedTypes(schema) : given
        if types.isEmpty { return .anyValue }
        if types.count == 1 { return try self.typed(types[0], schema, at: path, depth: depth) }
        var indexes: [Int] = []
        for type in types {
            let index = try self.reserve()
            self.nodes[index] = try self.typed(type, schema, at: path, depth: depth)
            indexes.append(index)
        }
        return .anyOf(indexes)
    }

    /// The names in `type` (empty when it is absent).
    private static func typeNames(_ type: JSONValue?, at path: String) throws(StructuredOutputError) -> [String] {
        switch type {
        case nil: return []
        case .string(let name)?: return [name]
        case .array(let list)?:
            var names: [String] = []
            for entry in list {
                guard case .string(let name) = entry else {
                    throw .invalidKeyword("type", at: path, reason: "a type list holds strings")
                }
                if !names.contains(name) { names.append(name) }
            }
            guard !names.isEmpty else { throw .unsatisfiable("'type' is an empty list", at: path) }
            return names
        case let other?:
            throw .invalidKeyword("type", at: path, reason: "it must be a string or a list of strings, not \(other.typeName)")
        }
    }

    /// Whether `value` is of the JSON schema type `type`.
    private static func value(_ value: JSONValue, hasType type: String) -> Bool {
        switch (type, value) {
        case ("null", .null), ("boolean", .bool), ("string", .string), ("array", .array), ("object", .object): true
        case ("number", .int), ("number", .double), ("integer", .int): true
        case ("integer", .double(let d)): d == d.rounded()
        default: false
        }
    }

    /// The type a schema without `type` means from its keywords (none: any value).
    private static func impliedTypes(_ schema: JSONValue) -> [String] {
        if schema["properties"] != nil || schema["additionalProperties"] != nil || schema["required"] != nil { return ["object"] }
        if schema["items"] != nil || schema["minItems"] != nil || schema["maxItems"] != nil { return ["array"] }
        if schema["minLength"] != nil || schema["maxLength"] != nil { return ["string"] }
        return []
    }

    private mutating func typed(_ type: String, _ schema: JSONValue, at path: String, depth: Int) throws(StructuredOutputError)
        -> OutputGrammar.Node
    {
        switch type {
        case "object": return try self.object(schema, at: path, depth: depth)
        case "array":
            let items = try schema["items"].map { (value) throws(StructuredOutputError) in
                try self.node(for: value, at: path + "/items", depth: depth + 1)
            }
            let minItems = try Self.count(schema, "minItems", at: path) ?? 0
            let maxItems = try Self.count(schema, "maxItems", at: path)
            if let maxItems, maxItems < minItems { throw .unsatisfiable("'maxItems' is below 'minItems'", at: path) }
            return .array(items: items ?? 0, minItems: minItems, maxItems: maxItems)
        case "string":
            let minLength = try Self.count(schema, "minLength", at: path) ?? 0
            let maxLength = try Self.count(schema, "maxLength", at: path)
            if let maxLength, maxLength < minLength { throw .unsatisfiable("'maxLength' is below 'minLength'", at: path) }
            return .string(minLength: minLength, maxLength: maxLength)
        case "integer": return .integer
        case "number": return .number
        case "boolean": return .literals([Array("true".utf8), Array("false".utf8)])
        case "null": return .literals([Array("null".utf8)])
        default:
            throw .invalidKeyword("type", at: path, reason: "'\(type.prefix(32))' is not a JSON schema type")
        }
    }

    private mutating func object(_ schema: JSONValue, at path: String, depth: Int) throws(StructuredOutputError)
        -> OutputGrammar.Node
    {
        var properties: [OutputGrammar.Property] = []
        var names: [String] = []
        if let value = schema["properties"] {
            guard case .object(let members) = value else {
                throw .invalidKeyword("properties", at: path, reason: "it must be an object of schemas")
            }
            guard members.count <= Limits.structuredProperties else {
                throw .tooLarge("'properties' at \(path) has \(members.count) entries; the limit is \(Limits.structuredProperties).")
            }
            for (name, propertySchema) in members where !names.contains(name) {
                let value = try self.node(for: propertySchema, at: "\(path)/properties/\(name.prefix(64))", depth: depth + 1)
                properties.append(OutputGrammar.Property(name: Array(name.utf8), quotedKey: Self.serialized(.string(name)), value: value))
                names.append(name)
            }
        }
        var required: UInt64 = 0
        if let value = schema["required"] {
            guard case .array(let entries) = value else {
                throw .invalidKeyword("required", at: path, reason: "it must be an array of property names")
            }
            for entry in entries {
                guard case .string(let name) = entry, let index = names.firstIndex(of: name) else {
                    throw .invalidKeyword(
                        "required", at: path, reason: "'\(entry.stringValue?.prefix(64) ?? "?")' is not one of its 'properties'")
                }
                required |= 1 << UInt64(index)
            }
        }
        let additional: Int?
        switch schema["additionalProperties"] {
        case nil: additional = properties.isEmpty && schema["properties"] == nil ? 0 : nil
        case .bool(let allowed)?: additional = allowed ? 0 : nil
        case let other?: additional = try self.node(for: other, at: path + "/additionalProperties", depth: depth + 1)
        }
        return .object(properties: properties, required: required, additional: additional)
    }

    private static func count(_ schema: JSONValue, _ keyword: String, at path: String) throws(StructuredOutputError) -> Int? {
        guard let value = schema[keyword] else { return nil }
        guard let count = value.nonNegativeInt else {
            throw .invalidKeyword(keyword, at: path, reason: "it must be a non-negative integer")
        }
        return count
    }

    private mutating func resolve(_ reference: JSONValue, at path: String, depth: Int) throws(StructuredOutputError) -> Int {
        guard case .string(let target) = reference else {
            throw .invalidKeyword("$ref", at: path, reason: "it must be a string")
        }
        if let known = self.references[target] { return known }
        let schema: JSONValue?
        if target == "#" {
            schema = self.document
        } else if target.hasPrefix("#/$defs/") {
            schema = self.document["$defs"]?[Self.unescapePointer(String(target.dropFirst(8)))]
        } else if target.hasPrefix("#/definitions/") {
            schema = self.document["definitions"]?[Self.unescapePointer(String(target.dropFirst(14)))]
        } else {
            schema = nil
        }
        guard let schema else { throw .unresolvedReference(String(target.prefix(128)), at: path) }
        guard depth < Limits.structuredNestingDepth else {
            throw .tooLarge("The JSON schema's '$ref's nest deeper than \(Limits.structuredNestingDepth) levels (at \(path)).")
        }
        // Reserved before compiling, so a definition that refers to itself finds its node.
        let index = try self.reserve()
        self.references[target] = index
        self.nodes[index] = try self.compileNode(schema, at: String(target.prefix(128)), depth: depth + 1)
        return index
    }

    /// JSON pointer escapes (`~1` is `/`, `~0` is `~`).
    private static func unescapePointer(_ token: String) -> String {
        var result = ""
        var characters = token.makeIterator()
        while let character = characters.next() {
            guard character == "~" else {
                result.append(character)
                continue
            }
            switch characters.next() {
            case "1": result.append("/")
            case "0": result.append("~")
            case let other: result.append("~" + (other.map { String($0) } ?? ""))
            }
        }
        return result
    }

    /// The compact JSON text of a value (how an `enum` or `const` value must appear).
    static func serialized(_ value: JSONValue) -> [UInt8] {
        var writer = JSONWriter()
        writer.write(value)
        return writer.bytes
    }
}
