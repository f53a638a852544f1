import LorikeetGGUF
import Testing

@Suite("Streaming UTF-8 decoding of token bytes")
struct UTF8StreamDecoderTests {
    @Test("bytes fed one at a time never yield a replacement character mid-character", arguments: ["a🦜b中文é", "👨‍👩‍👧", "plain", ""])
    func byteByByte(text: String) {
        var decoder = UTF8StreamDecoder()
        var out = ""
        for b in text.utf8 {
            let piece = decoder.append([b])
            #expect(!piece.contains("\u{FFFD}"))
            out += piece
        }
        out += decoder.finish()
        #expect(out == text)
    }

    @Test("invalid bytes are replaced at once; a cut sequence is replaced at finish")
    func invalid() {
        var decoder = UTF8StreamDecoder()
        #expect(decoder.append([0x61, 0xFF]) == "a\u{FFFD}")
        #expect(decoder.append([0xF0, 0x9F]) == "")
        #expect(decoder.finish() == "\u{FFFD}")
        #expect(decoder.append([0x62]) == "b")
        // A stray continuation byte is not waited for.
        #expect(decoder.append([0x80]) == "\u{FFFD}")
    }
}
