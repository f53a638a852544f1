import LorikeetJSON
import Testing

@Suite("JSON parsing and writing")
struct JSONTests {
    @Test(
        "malformed documents are refused",
        arguments: [
            "", "{", "{\"a\":}", "[1,]", "{\"a\":1}x", "tru", "\"\\u12\"", "01", "1.", "\"\u{01}\"", "{'a':1}", "NaN",
            "Infinity", "-", "1e", "1e400", "-1e400", "\"\\ud800\"", "\"\\udc00\"", "[1] // comment", "{\"a\" 1}",
        ])
    func malformed(_ text: String) {
        #expect(throws: JSONParseError.self) { try JSONParser.parse(Array(text.utf8)) }
    }

    @Test("a document of more values than the limit is refused; at the limit it parses")
    func valueLimit() throws {
        let array = Array(("[" + Array(repeating: "0", count: 99).joined(separator: ",") + "]").utf8)
        #expect(throws: JSONParseError.self) { try JSONParser.parse(array, maximumValues: 99) }
        do {
            _ = try JSONParser.parse(array, maximumValues: 99)
        } catch {
            #expect(error.reason.contains("more than 99 values"))
        }
        guard case .array(let values) = try JSONParser.parse(array, maximumValues: 100) else {
            Issue.record("not an array")
            return
        }
        #expect(values.count == 99)
    }

    @Test("invalid UTF-8 in a string is refused")
    func invalidUTF8() {
        #expect(throws: JSONParseError.self) { try JSONParser.parse([0x22, 0xC3, 0x28, 0x22]) }
    }

    @Test("values round-trip and keep integers exact")
    func roundTrip() throws {
        let text = #"{"a":[1,-2,3.5,true,false,null],"b":"x\"\n\u00e9\ud83d\ude00","c":{"d":18446744073709551615,"e":9007199254740993}}"#
        let value = try JSONParser.parse(Array(text.utf8))
        #expect(value["c"]?["e"] == .int(9_007_199_254_740_993))
        #expect(value["b"] == .string("x\"\né😀"))
        let again = try JSONParser.parse(JSONWriter.encode(value))
        #expect(again == value)
    }

    @Test(
        "numbers keep their class",
        arguments: [
            ("0", JSONValue.int(0)), ("-0", .int(0)), ("9223372036854775807", .int(.max)), ("-9223372036854775808", .int(.min)),
            ("9223372036854775808", .double(9_223_372_036_854_775_808)), ("18446744073709551615", .double(0x1p64)),
            ("2.0", .double(2)), ("2e3", .double(2000)), ("1E-2", .double(0.01)), ("1e308", .double(1e308)),
        ])
    func numbers(_ text: String, _ expected: JSONValue) throws {
        #expect(try JSONParser.parse(Array(text.utf8)) == expected)
    }

    @Test("integer accessors accept whole doubles and nothing beyond 2^53")
    func accessors() throws {
        let value = try JSONParser.parse(Array(#"[4, 4.0, 4e0, 4.5, -1, true, "4", 18446744073709551615, 1e300]"#.utf8))
        guard case .array(let items) = value else { throw JSONParseError(offset: 0, reason: "not an array") }
        #expect(items.map(\.nonNegativeInt) == [4, 4, 4, nil, nil, nil, nil, nil, nil])
        #expect(items.map(\.doubleValue) == [4, 4, 4, 4.5, -1, nil, nil, 0x1p64, 1e300])
        #expect(items.map(\.stringValue) == [nil, nil, nil, nil, nil, nil, "4", nil, nil])
        #expect(items.map(\.boolValue) == [nil, nil, nil, nil, nil, true, nil, nil, nil])
    }

    @Test("duplicate keys are kept in order and every lookup takes the last")
    func duplicateKeys() throws {
        let value = try JSONParser.parse(Array(#"{"a":1,"b":2,"a":3}"#.utf8))
        #expect(value == .object([("a", .int(1)), ("b", .int(2)), ("a", .int(3))]))
        #expect(value["a"] == .int(3))
        #expect(value.objectValue == ["a": .int(3), "b": .int(2)])
        #expect(JSONWriter.encode(value) == Array(#"{"a":1,"b":2,"a":3}"#.utf8))
    }

    @Test("nesting is bounded at 64 levels")
    func depth() throws {
        func nested(_ levels: Int) -> [UInt8] {
            Array((String(repeating: "[", count: levels) + String(repeating: "]", count: levels)).utf8)
        }
        _ = try JSONParser.parse(nested(JSONParser.maximumDepth))
        #expect(throws: JSONParseError.self) { try JSONParser.parse(nested(JSONParser.maximumDepth + 1)) }
        #expect(throws: JSONParseError.self) { try JSONParser.parse(nested(10_000)) }
        let objects = String(repeating: #"{"a":"#, count: 65) + "1" + String(repeating: "}", count: 65)
        #expect(throws: JSONParseError.self) { try JSONParser.parse(Array(objects.utf8)) }
    }

    @Test("a syntax error names the innermost member it is in")
    func member() {
        let cases: [(String, String?)] = [
            (#"{"r":4,"lora_alpha":1e400}"#, "lora_alpha"),
            (#"{"a":{"b":[1,2,tru]}}"#, "b"),
            (#"{"a":1,}"#, nil),
            ("[1e400]", nil),
        ]
        for (text, expected) in cases {
            let error = #expect(throws: JSONParseError.self) { try JSONParser.parse(Array(text.utf8)) }
            #expect(error?.member == expected, "\(text)")
        }
    }

    @Test("the writer escapes control characters and writes whole doubles as integers")
    func writer() {
        #expect(JSONWriter.encode(.string("a\u{01}\"\\\n")) == Array(#""a\u0001\"\\\n""#.utf8))
        #expect(JSONWriter.encode(.array([.double(3), .double(0.5), .double(.infinity), .null])) == Array("[3,0.5,null,null]".utf8))
    }
}
