import LorikeetJSON
import LorikeetStructured
import Testing

@Suite("Structured output: JSON schema subset and the byte matcher")
struct GrammarMatcherTests {
    static func grammar(_ schema: String) throws -> OutputGrammar {
        try JSONSchemaCompiler.compile(try JSONParser.parse(Array(schema.utf8)))
    }

    /// Whether `document` is a complete document of `grammar`.
    static func matches(_ grammar: OutputGrammar, _ document: String) -> Bool {
        var matcher = GrammarMatcher(grammar)
        return matcher.advance(Array(document.utf8)) && matcher.isComplete
    }

    /// Whether `prefix` can start a document of `grammar`.
    static func startsWell(_ grammar: OutputGrammar, _ prefix: String) -> Bool {
        GrammarMatcher(grammar).accepts(Array(prefix.utf8))
    }

    @Test("json_object: any object, nested values, whitespace; not arrays, not bare values, not trailing text")
    func jsonObject() {
        let grammar = JSONSchemaCompiler.anyObject()
        for document in [
            "{}", #"{"a":1}"#, #"{ "a" : [1, 2.5, -3e+2, true, false, null, "x\"y\u00e9"], "b": {"c": {}} }"#, "{\n  \"k\": \"é漢🙂\"\n}",
        ] {
            #expect(Self.matches(grammar, document), "\(document)")
        }
        for document in ["[]", "1", #""a""#, "{} x", #"{"a":01}"#, #"{"a":1,}"#, #"{"a" 1}"#, #"{"a":tru}"#, "{\"a\":\"\u{1}\"}"] {
            #expect(!Self.matches(grammar, document), "\(document)")
        }
        #expect(Self.startsWell(grammar, #"{"a": [1, {"#))
        #expect(!Self.startsWell(grammar, "x"))
        // A number at the end of a value is only over when something follows it.
        var matcher = GrammarMatcher(grammar)
        let advanced = matcher.advance(Array(#"{"n": 12"#.utf8))
        #expect(advanced)
        #expect(!matcher.isComplete)
        #expect(matcher.accepts(Array("3".utf8)) && matcher.accepts(Array("}".utf8)) && matcher.accepts(Array(".5}".utf8)))
    }

    @Test("an object schema: known properties in any order, each once, required ones before '}', no others")
    func objectSchema() throws {
        let grammar = try Self.grammar(
            #"""
            {"type": "object", "properties": {"name": {"type": "string", "maxLength": 5}, "age": {"type": "integer"},
             "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}}, "required": ["name", "age"]}
            """#)
        #expect(Self.matches(grammar, #"{"name": "Ann", "age": 31}"#))
        #expect(Self.matches(grammar, #"{"age":-4,"tags":["b","a"],"name":""}"#))
        #expect(!Self.matches(grammar, #"{"name": "Ann"}"#), "age is required")
        #expect(!Self.matches(grammar, #"{"name": "Ann", "age": 3, "name": "B"}"#), "a property only once")
        #expect(!Self.matches(grammar, #"{"name": "Ann", "age": 3.5}"#), "an integer")
        #expect(!Self.matches(grammar, #"{"name": "Annabel", "age": 3}"#), "maxLength 5")
        #expect(!Self.matches(grammar, #"{"name": "A", "age": 3, "x": 1}"#), "no additional property")
        #expect(!Self.matches(grammar, #"{"name": "A", "age": 3, "tags": ["a", "b", "a"]}"#), "maxItems 2")
        #expect(!Self.matches(grammar, #"{"name": "A", "age": 3, "tags": ["c"]}"#), "enum")
        #expect(!Self.startsWell(grammar, #"{"name": "A", "age": 3, "tags": [],"#), "no comma after the last property")
        #expect(!Self.startsWell(grammar, "{\"name\": \"abcde\u{C3}"), "no character may start at the length limit")
        #expect(Self.startsWell(grammar, "{\"name\": \"abcd\u{C3}"))
    }

    @Test("additionalProperties, anyOf, type lists, const, minItems, $ref to $defs (recursive)")
    func compositions() throws {
        let open = try Self.grammar(#"{"properties": {"id": {"type": "integer"}}, "additionalProperties": {"type": "string"}}"#)
        #expect(Self.matches(open, #"{"id": 1, "note": "x"}"#))
        #expect(!Self.matches(open, #"{"id": "1"}"#), "a known key keeps its own schema")
        #expect(!Self.matches(open, #"{"note": 2}"#))
        let nullable = try Self.grammar(#"{"type": ["string", "null"]}"#)
        #expect(Self.matches(nullable, "null") && Self.matches(nullable, #""s""#) && !Self.matches(nullable, "1"))
        let either = try Self.grammar(#"{"anyOf": [{"type": "number"}, {"const": {"k": [1]}}]}"#)
        #expect(Self.matches(either, "-0.5") && Self.matches(either, #"{"k":[1]}"#) && !Self.matches(either, #"{"k":[2]}"#))
        let list = try Self.grammar(#"{"type": "array", "items": {"type": "boolean"}, "minItems": 2}"#)
        #expect(Self.matches(list, "[true, false]") && !Self.matches(list, "[true]") && !Self.matches(list, "[]"))
        let tree = try Self.grammar(
            #"""
            {"$ref": "#/$defs/node", "$defs": {"node": {"type": "object", "properties": {
              "value": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
              "required": ["value"]}}}
            """#)
        #expect(Self.matches(tree, #"{"value": 1, "children": [{"value": 2, "children": [{"value": 3}]}]}"#))
        #expect(!Self.matches(tree, #"{"value": 1, "children": [{"children": []}]}"#))
        // anyOf of $refs to anyOfs (256 wide, 4 deep: 256^4 readings unbounded) stays cheap.
        let wide = (0..<256).map { _ in ##"{"$ref": "#/$defs/a"}"## }.joined(separator: ",")
        let wider = (0..<256).map { _ in ##"{"$ref": "#/$defs/b"}"## }.joined(separator: ",")
        let widest = (0..<256).map { _ in ##"{"$ref": "#/$defs/c"}"## }.joined(separator: ",")
        let bomb = try Self.grammar(
            #"{"anyOf": ["# + widest + #"], "$defs": {"c": {"anyOf": ["# + wider + #"]}, "b": {"anyOf": ["# + wide
                + #"]}, "a": {"type": "integer"}}}"#)
        let clock = ContinuousClock()
        let start = clock.now
        #expect(Self.matches(bomb, "123"))
        // A bound against a hang (unbounded, this is 256^3 readings per byte), not a speed measure:
        // loose enough for a debug build on a loaded machine.
        #expect(clock.now - start < .seconds(60))
        // The same with strings at the bottom, fed a byte no leaf takes.
        let strings = try Self.grammar(
            #"{"anyOf": ["# + widest + #"], "$defs": {"c": {"anyOf": ["# + wider + #"]}, "b": {"anyOf": ["# + wide
                + #"]}, "a": {"type": "string"}}}"#)
        #expect(!Self.startsWell(strings, "1") && Self.matches(strings, #""s""#))
        #expect(clock.now - start < .seconds(60))
    }

    @Test("no dead ends: at the number, key and nesting limits only bytes that can still finish are accepted")
    func noDeadEnds() throws {
        let number = try Self.grammar(#"{"type": "number"}"#)
        #expect(Self.matches(number, String(repeating: "1", count: 32)))
        #expect(!Self.startsWell(number, String(repeating: "1", count: 31) + "."), "a point at the last byte could not be finished")
        #expect(Self.matches(number, String(repeating: "1", count: 29) + ".5"))
        #expect(!Self.matches(number, "1e999") && Self.matches(number, "1e99"))
        let object = JSONSchemaCompiler.anyObject()
        let longKey = "{\"" + String(repeating: "k", count: 1000)
        #expect(Self.startsWell(object, longKey + "\":1}"), "the closing quote is always allowed")
        #expect(!Self.startsWell(object, longKey + String(repeating: "k", count: 24)))
        let chain = try Self.grammar(
            ##"{"type": "object", "properties": {"next": {"$ref": "#"}, "x": {"type": "object"}}, "required": ["x"]}"##)
        func nested(_ levels: Int) -> String {
            String(repeating: #"{"next":"#, count: levels) + #"{"x":{}}"# + String(repeating: #","x":{}}"#, count: levels)
        }
        #expect(Self.matches(chain, nested(30)))
        #expect(!Self.startsWell(chain, String(repeating: #"{"next":"#, count: 31)), "a level that could not be closed is not opened")
        #expect(!Self.matches(object, #"{"a":"# + String(repeating: "[", count: 32) + String(repeating: "]", count: 32) + "}"))
        #expect(Self.matches(object, #"{"a":"# + String(repeating: "[", count: 31) + String(repeating: "]", count: 31) + "}"))
    }

    @Test("strings: surrogate pairs only as pairs (counted once), escaped keys name their property")
    func escapes() throws {
        let one = try Self.grammar(#"{"type": "string", "maxLength": 1}"#)
        #expect(Self.matches(one, #""\ud83d\ude00""#) && Self.matches(one, #""é""#))
        #expect(!Self.startsWell(one, #""\ud800""#) && !Self.startsWell(one, #""\udc00"#) && !Self.startsWell(one, #""\ud83d\u0041"#))
        let open = try Self.grammar(#"{"properties": {"a": {"type": "integer"}}, "additionalProperties": true}"#)
        #expect(!Self.matches(open, #"{"a": 1, "\u0061": "x"}"#), "an escaped alias is the same property")
        #expect(!Self.matches(open, #"{"\u0061": "x"}"#), "and keeps its schema")
        #expect(Self.matches(open, #"{"\u0061": 2, "b": "x"}"#))
    }

    @Test("guided_choice: exactly one of the strings, as raw text; a choice that is a prefix of another")
    func choice() {
        let grammar = OutputGrammar.choice(["yes", "no", "yes please"])
        #expect(Self.matches(grammar, "yes") && Self.matches(grammar, "no") && Self.matches(grammar, "yes please"))
        #expect(!Self.matches(grammar, "\"yes\"") && !Self.matches(grammar, " yes") && !Self.matches(grammar, "ye"))
        var matcher = GrammarMatcher(grammar)
        let first = matcher.advance(Array("yes".utf8))
        #expect(first && matcher.isComplete && matcher.canContinue, "'yes' may end, or go on to 'yes please'")
        let second = matcher.advance(Array(" please".utf8))
        #expect(second && matcher.isComplete && !matcher.canContinue)
    }

    @Test("bounds a model cannot run away with: whitespace runs, number length, nesting depth")
    func bounds() {
        let grammar = JSONSchemaCompiler.anyObject()
        #expect(Self.startsWell(grammar, "{" + String(repeating: " ", count: 24)))
        #expect(!Self.startsWell(grammar, "{" + String(repeating: " ", count: 25)))
        #expect(Self.startsWell(grammar, #"{"n": "# + String(repeating: "1", count: 32)))
        #expect(!Self.startsWell(grammar, #"{"n": "# + String(repeating: "1", count: 33)))
        #expect(Self.startsWell(grammar, #"{"a":"# + String(repeating: "[", count: 30)))
        #expect(!Self.startsWell(grammar, #"{"a":"# + String(repeating: "[", count: 80)))
        // Invalid UTF-8 inside a string is refused (an overlong encoding, a lone continuation).
        var matcher = GrammarMatcher(grammar)
        let inString = matcher.advance(Array(#"{"s": ""#.utf8))
        #expect(inString)
        #expect(!matcher.accepts([0xC0, 0x80]) && !matcher.accepts([0x80]) && matcher.accepts([0xC3, 0xA9]))
    }

    /// Token-like pieces: words with and without a leading space, quotes with what follows
    /// them, whitespace runs, numbers, multi-byte characters.
    static let pieces: [[UInt8]] = [
        " foo", "foo", "\",", "\"}", "\": ", " \"", "  \"a", "\n  ", "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n", "12",
        "1.5e", ", ", "],", "null", " true", "é", "\\n", "\\u00", "ab\"", "\"x\": [",
    ].map { Array($0.utf8) }

    @Test("random walks: every document the matcher completes is JSON the parser reads, and matches the schema's shape")
    func randomWalks() throws {
        let grammars = [
            JSONSchemaCompiler.anyObject(),
            try Self.grammar(
                ##"{"type": "object", "properties": {"next": {"$ref": "#"}, "x": {"type": "object"}, "n": {"type": "number"}}, "required": ["x"]}"##
            ),
            try Self.grammar(
                #"{"type": "object", "properties": {"a": {"type": "array", "items": {"type": ["number", "null"]}, "maxItems": 3},"#
                    + #" "b": {"anyOf": [{"type": "string", "maxLength": 3}, {"const": {"x": [true]}}]}}, "required": ["a"]}"#),
        ]
        var generator = SystemRandomNumberGenerator()
        var completed = 0
        for grammar in grammars {
            for _ in 0..<60 {
                var matcher = GrammarMatcher(grammar)
                var document: [UInt8] = []
                // Printable ASCII and a few multi-byte characters, chosen at random among the allowed.
                let alphabet = Array(UInt8(0x20)...UInt8(0x7E)) + [0x0A, 0xC3, 0xA9]
                while document.count < 120 {
                    if matcher.isComplete && Int.random(in: 0..<4, using: &generator) == 0 { break }
                    // The many-candidates checker agrees with accepts on token-like pieces.
                    let candidates = matcher.candidates
                    for piece in Self.pieces where candidates.accepts(piece) != matcher.accepts(piece) {
                        Issue.record(
                            "Candidates disagrees on \(String(decoding: piece, as: UTF8.self).debugDescription) after \(String(decoding: document, as: UTF8.self).debugDescription)"
                        )
                    }
                    let allowed = alphabet.filter { matcher.accepts(CollectionOfOne($0)) }
                    guard let byte = allowed.randomElement(using: &generator) else {
                        if !matcher.isComplete {
                            Issue.record("dead end after \(String(decoding: document, as: UTF8.self).debugDescription)")
                        }
                        break
                    }
                    matcher.advance(CollectionOfOne(byte))
                    document.append(byte)
                }
                guard matcher.isComplete else { continue }
                completed += 1
                let parsed = try JSONParser.parse(document)
                #expect(parsed.objectValue != nil, "\(String(decoding: document, as: UTF8.self))")
            }
        }
        #expect(completed > 15, "enough walks ended in a complete document to mean something")
    }

    @Test("schemas outside the subset are refused with the keyword named; limits are enforced")
    func refusals() throws {
        func refusal(_ schema: String) -> String {
            do {
                _ = try Self.grammar(schema)
                return "accepted"
            } catch {
                return "\(error)"
            }
        }
        #expect(refusal(#"{"type": "string", "pattern": "^a"}"#).contains("'pattern'"))
        #expect(refusal(#"{"type": "string", "format": "date-time"}"#).contains("'format'"))
        #expect(refusal(#"{"type": "integer", "minimum": 3}"#).contains("'minimum'"))
        #expect(refusal(#"{"allOf": [{"type": "integer"}, {"type": "number"}]}"#).contains("allOf"))
        #expect(refusal(#"{"$ref": "http://example.com/s.json"}"#).contains("does not name a definition"))
        #expect(refusal(##"{"$ref": "#/$defs/missing"}"##).contains("does not name a definition"))
        #expect(refusal(#"{"type": "object", "required": ["x"]}"#).contains("'required'"))
        #expect(refusal(#"{"type": "strin"}"#).contains("not a JSON schema type"))
        #expect(refusal(#"{"enum": []}"#).contains("cannot be satisfied"))
        #expect(refusal(##"{"$ref": "#"}"##).contains("refers to itself"))
        #expect(refusal(#"{"type": "integer", "anyOf": [{"type": "string"}]}"#).contains("'type' next to 'anyOf'"))
        #expect(refusal(#"{"const": "a", "enum": ["b"]}"#).contains("next to"))
        #expect(refusal(#"{"type": "string", "enum": [1, 2]}"#).contains("cannot be satisfied"))
        let many = (0..<65).map { #"{"const": \#($0)}"# }.joined(separator: ",")
        #expect(refusal(#"{"anyOf": ["# + many + "]}").contains("the limit is 64"))
        #expect(refusal(##"{"type": "object", "properties": {"me": {"$ref": "#"}}, "required": ["me"]}"##).contains("deeper than"))
        #expect(refusal(#"{"type": "string", "minLength": 3, "maxLength": 2}"#).contains("cannot be satisfied"))
        let deep = String(repeating: #"{"type": "array", "items": "#, count: 40) + "{}" + String(repeating: "}", count: 40)
        #expect(refusal(deep).contains("nests deeper than"))
        let wide = "{\"properties\": {" + (0..<65).map { "\"p\($0)\": {}" }.joined(separator: ",") + "}}"
        #expect(refusal(wide).contains("the limit is 64"))
        // Annotations are fine.
        #expect(refusal(#"{"title": "T", "description": "d", "type": "object", "properties": {"a": {"title": "A"}}}"#) == "accepted")
    }
}
