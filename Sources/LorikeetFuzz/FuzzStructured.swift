import LorikeetJSON
import LorikeetStructured

/// Structured output: the input is a JSON schema's text, a NUL byte, then a document.
/// The schema compiles or is refused; the document runs through the matcher byte by byte.
/// Never traps, and whatever a JSON grammar accepts as a complete document must be JSON
/// that the server's own parser reads.
func fuzzStructuredOutput(_ bytes: [UInt8]) {
    let split = bytes.firstIndex(of: 0) ?? bytes.count
    let schema = String(decoding: bytes[..<split], as: UTF8.self)
    let document = Array(bytes[min(split + 1, bytes.count)...])
    let grammar: OutputGrammar
    do {
        guard let compiled = try StructuredConstraint.grammar(jsonSchema: schema, choices: []) else { return }
        grammar = compiled
    } catch {
        return
    }
    var matcher = GrammarMatcher(grammar)
    for byte in document {
        guard matcher.advance(CollectionOfOne(byte)) else { return }
    }
    if grammar.isJSON && matcher.isComplete && (try? JSONParser.parse(document)) == nil {
        fatalError("the grammar accepted a document that is not JSON: \(String(decoding: document, as: UTF8.self))")
    }
}
