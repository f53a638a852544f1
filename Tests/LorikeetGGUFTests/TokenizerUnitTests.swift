import Foundation
import LorikeetGGUF
import Testing

@Suite("Byte-level BPE on a tiny vocabulary")
struct TokenizerUnitTests {
    /// Pieces of `text` as strings.
    static func pieces(_ text: String, _ pre: PreTokenizer) -> [String] {
        let scalars = Array(text.unicodeScalars)
        return pre.split(scalars).map { r in
            var s = String.UnicodeScalarView()
            s.append(contentsOf: scalars[r])
            return String(s)
        }
    }

    @Test(
        "smollm pre-tokenizer splits like llama.cpp",
        arguments: [
            ("Hello world", ["Hello", " world"]),
            ("a  b", ["a", " ", " b"]),
            ("x 123", ["x", " ", "1", "2", "3"]),
            ("it's they're I'll", ["it", "'s", " they", "'re", " I", "'ll"]),
            ("''s", ["''", "s"]),
            ("end   ", ["end", "   "]),
            ("a\n\nb", ["a", "\n", "\n", "b"]),
            ("!!! ?", ["!!!", " ?"]),
            ("  x", [" ", " x"]),
            ("\t x", ["\t", " x"]),
            ("héllo wörld", ["héllo", " wörld"]),
            ("中文 text", ["中文", " text"]),
            ("🦜🦜 ok", ["🦜🦜", " ok"]),
            ("a\u{3000}b", ["a", "\u{3000}", "b"]),
            ("½x", ["½", "x"]),
            ("", []),
        ])
    func smollmSplit(text: String, expected: [String]) {
        #expect(Self.pieces(text, .smollm) == expected)
    }

    @Test("gpt2 pre-tokenizer keeps digit runs with a leading space")
    func gpt2Split() {
        #expect(Self.pieces("x 123 45", .gpt2) == ["x", " 123", " 45"])
    }

    /// 256 byte tokens, three specials, and merges building "hello" and " world".
    static func tiny() throws -> BPETokenizer {
        let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        var tokens = specials
        tokens += ByteLevel.byteToUnicode.map { String(Character($0)) }
        let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"]
        for m in merges { tokens.append(m.replacingOccurrences(of: " ", with: "")) }
        let types = [3, 3, 3] + [Int](repeating: 1, count: tokens.count - 3)
        return try BPETokenizer(tokens: tokens, tokenTypes: types, merges: merges, bosTokenID: 1, eosTokenID: 2)
    }

    @Test("merges apply by rank and decode inverts encode")
    func encodeDecode() throws {
        let tok = try Self.tiny()
        let hello = try #require(tok.tokenID("hello"))
        let world = try #require(tok.tokenID("Ġworld"))
        #expect(tok.encode("hello world") == [hello, world])
        #expect(tok.decode([hello, world]) == "hello world")
        // "hellx" stops at "hell" + "x".
        #expect(tok.encode("hellx") == [try #require(tok.tokenID("hell")), try #require(tok.tokenID("x"))])
        for text in ["", "hello", "héllo wörld 🦜", "a\u{0}b", "  \n\t", "12 345", "ÿ\u{100}Ġ"] {
            #expect(Array(tok.decode(tok.encode(text)).utf8) == Array(text.utf8))
        }
        #expect(tok.tokenBytes(world) == Array(" world".utf8))
        #expect(tok.tokenBytes(-1) == [] && tok.tokenBytes(1 << 20) == [])
    }

    @Test("bytes without a token are dropped, as llama.cpp and HF tokenizers do, and neighbours still merge")
    func missingBytes() throws {
        var tokens = ByteLevel.byteToUnicode.map { String(Character($0)) }
        let missing = String(Character(ByteLevel.byteToUnicode[0x04]))
        tokens.removeAll { $0 == missing }
        tokens.append("!!")
        let tok = try BPETokenizer(tokens: tokens, merges: ["! !"])
        let bangs = try #require(tok.tokenID("!!"))
        // "!\u{04}!" is one punctuation piece; without byte 0x04 the word is "!!", which merges.
        #expect(tok.encode("!\u{04}!") == [bangs])
        #expect(tok.encode("\u{04}") == [])
        #expect(tok.encode("a\u{04}b") == [try #require(tok.tokenID("a")), try #require(tok.tokenID("b"))])
    }

    @Test("special tokens are matched when allowed and encoded as text otherwise")
    func specials() throws {
        let tok = try Self.tiny()
        let ids = tok.encode("<|im_start|>hello<|im_end|>")
        #expect(ids.first == 1 && ids.last == 2 && ids.count == 3)
        let plain = tok.encode("<|im_start|>", parseSpecial: false)
        #expect(plain.count > 3 && !plain.contains(1))
        #expect(tok.decode(ids, skipSpecial: true) == "hello")
        #expect(tok.decode(ids) == "<|im_start|>hello<|im_end|>")
        #expect(tok.tokenBytes(2) == Array("<|im_end|>".utf8))
        #expect(tok.encode("hello", addBOS: true).first == 1)
        #expect(tok.stopTokenIDs == [0, 2])
    }

    /// A quadratic merge loop would take hours on this piece; the time limit turns a hang
    /// into a failure without making the test a speed claim.
    @Test("a long piece (100k bytes) encodes and round-trips", .timeLimit(.minutes(2)))
    func longPiece() throws {
        let tok = try Self.tiny()
        let text = String(repeating: "hello", count: 20_000)
        let ids = tok.encode(text)
        #expect(tok.decode(ids) == text)
        #expect(ids.count < text.utf8.count)
    }

    @Test("bad vocabularies are typed errors")
    func badVocab() {
        #expect(throws: GGUFModelError.self) { try BPETokenizer(tokens: ["a", "b"], merges: []) }
        let asciiOnly = ByteLevel.byteToUnicode[0..<100].map { String(Character($0)) }
        #expect(throws: GGUFModelError.self) { try BPETokenizer(tokens: asciiOnly, merges: []) }
        let bytes = ByteLevel.byteToUnicode.map { String(Character($0)) }
        #expect(throws: GGUFModelError.self) { try BPETokenizer(tokens: bytes, merges: ["a q"]) }
        #expect(throws: GGUFModelError.self) { try BPETokenizer(tokens: bytes, merges: ["ab"]) }
        #expect(throws: GGUFModelError.self) { try BPETokenizer(tokens: bytes, merges: [], eosTokenID: 999) }
    }

    @Test("ChatML default system prompt is read from the template")
    func chatTemplate() {
        let template =
            "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nBe nice.<|im_end|>\n' }}{% endif %}..."
        #expect(ChatML.defaultSystemPrompt(in: template) == "Be nice.")
        #expect(ChatML.defaultSystemPrompt(in: "{{ '<|im_start|>' + message['role'] }}") == nil)
        let rendered = ChatML.render([ChatMessage(role: "user", content: "Hi")], defaultSystemPrompt: "Be nice.", addGenerationPrompt: true)
        #expect(rendered == "<|im_start|>system\nBe nice.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    }
}
