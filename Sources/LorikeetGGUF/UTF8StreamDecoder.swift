/// Turns token bytes arriving one token at a time into text, holding back a UTF-8 sequence
/// that a token boundary cut in two (byte-level BPE splits emoji and CJK characters across
/// tokens), so a streamed response never shows a replacement character mid-character.
///
/// Usage: `text += decoder.append(tokenizer.tokenBytes(id))` per generated token, then
/// `decoder.finish()` at the end of the stream.
package struct UTF8StreamDecoder: Sendable {
    private var pending: [UInt8] = []

    package init() {}

    /// Adds `bytes` and returns the text that is now complete (invalid sequences become U+FFFD).
    package mutating func append(_ bytes: [UInt8]) -> String {
        self.pending += bytes
        let split = Self.completePrefixLength(self.pending)
        guard split > 0 else { return "" }
        let text = String(decoding: self.pending[..<split], as: UTF8.self)
        self.pending.removeFirst(split)
        return text
    }

    /// Returns whatever is still held back (an incomplete sequence becomes U+FFFD) and resets.
    package mutating func finish() -> String {
        defer { self.pending = [] }
        return String(decoding: self.pending, as: UTF8.self)
    }

    /// Length of the longest prefix that does not end inside an incomplete UTF-8 sequence.
    static func completePrefixLength(_ b: [UInt8]) -> Int {
        let end = b.count
        var i = end - 1
        // Walk back over at most three continuation bytes to the sequence's lead byte.
        while i >= 0 && i > end - 4 && b[i] & 0xC0 == 0x80 { i -= 1 }
        guard i >= 0 else { return end }
        let lead = b[i]
        let length: Int
        switch lead {
        case 0xC2...0xDF: length = 2
        case 0xE0...0xEF: length = 3
        case 0xF0...0xF4: length = 4
        default: return end  // ASCII, a stray continuation run or an invalid lead: nothing to wait for.
        }
        return end - i < length ? i : end
    }
}
