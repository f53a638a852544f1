/// vLLM's `bad_words` as token sequences (`SamplingParams.update_from_tokenizer`): each word
/// is encoded as given (leading whitespace stripped, as `lstrip()` does) and, when a space before it makes a
/// different first token of the same length, also with that space, so the word is banned
/// at the start of the text and after a space.
package enum BadWords {
    /// The token sequences of `words` for `tokenizer`.
    package static func tokenIDs(_ words: [String], tokenizer: some EngineTokenizer) -> [[UInt32]] {
        var sequences: [[UInt32]] = []
        for word in words {
            let stripped = String(word.drop(while: \.isWhitespace))
            let plain = tokenizer.encode(stripped)
            guard let first = plain.first else { continue }
            sequences.append(plain)
            let spaced = tokenizer.encode(" " + stripped)
            if let spacedFirst = spaced.first, spacedFirst != first, spaced.count == plain.count { sequences.append(spaced) }
        }
        return sequences
    }
}
