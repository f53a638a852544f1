package import LorikeetStructured

/// The vocabulary as byte strings, grouped by first byte: what masking a step against a
/// grammar needs. Built once per engine, the first time a request is constrained.
package final class ConstraintVocabulary: Sendable {
    /// Each token's bytes (empty for control tokens).
    let tokens: [[UInt8]]
    /// Token ids by their first byte.
    let byFirstByte: [[UInt32]]
    /// Tokens that spell nothing (BOS, EOS, other specials).
    let empty: [UInt32]
    /// Ids that end a document.
    let eosTokenIDs: [UInt32]

    /// The vocabulary of `tokenizer`.
    package init(tokenizer: some EngineTokenizer) {
        var tokens: [[UInt8]] = []
        var byFirstByte = [[UInt32]](repeating: [], count: 256)
        var empty: [UInt32] = []
        tokens.reserveCapacity(tokenizer.vocabSize)
        for id in 0..<UInt32(tokenizer.vocabSize) {
            let bytes = tokenizer.tokenBytes(id)
            tokens.append(bytes)
            if let first = bytes.first { byFirstByte[Int(first)].append(id) } else { empty.append(id) }
        }
        self.tokens = tokens
        self.byFirstByte = byFirstByte
        self.empty = empty
        self.eosTokenIDs = tokenizer.eosTokenIDs
    }
}

/// One sequence's structured-output state: the grammar matcher over the text so far, and
/// which tokens may come next (a token may when all its bytes can; EOS only when the
/// document is complete).
package struct TokenConstraint: Sendable {
    private var matcher: GrammarMatcher
    private let vocabulary: ConstraintVocabulary

    /// A constraint at the start of a document of `grammar`.
    package init(_ grammar: OutputGrammar, vocabulary: ConstraintVocabulary) {
        self.matcher = GrammarMatcher(grammar)
        self.vocabulary = vocabulary
    }

    /// Whether `token` may come next.
    package func allows(_ token: UInt32) -> Bool {
        if self.vocabulary.eosTokenIDs.contains(token) { return self.matcher.isComplete }
        guard Int(token) < self.vocabulary.tokens.count else { return false }
        let bytes = self.vocabulary.tokens[Int(token)]
        return !bytes.isEmpty && self.matcher.accepts(bytes)
    }

    /// Sets every logit whose token may not come next to −∞. Tokens whose first byte
    /// cannot come next are dropped by the group (one check per byte value), the others
    /// one by one (`GrammarMatcher.Candidates`).
    package func mask(_ logits: inout [Float]) {
        let vocab = logits.count
        let candidates = self.matcher.candidates
        for first in 0..<256 {
            let group = self.vocabulary.byFirstByte[first]
            guard !group.isEmpty else { continue }
            if candidates.accepts([UInt8(first)]) {
                for id in group where Int(id) < vocab && logits[Int(id)] > -.infinity {
                    if !candidates.accepts(self.vocabulary.tokens[Int(id)]) { logits[Int(id)] = -.infinity }
                }
            } else {
                for id in group where Int(id) < vocab { logits[Int(id)] = -.infinity }
            }
        }
        let complete = self.matcher.isComplete
        for id in self.vocabulary.empty where Int(id) < vocab {
            if !(complete && self.vocabulary.eosTokenIDs.contains(id)) { logits[Int(id)] = -.infinity }
        }
        for id in self.vocabulary.eosTokenIDs where Int(id) < vocab && !complete { logits[Int(id)] = -.infinity }
        // Rows of an output layer padded past the tokenizer spell nothing.
        for id in min(self.vocabulary.tokens.count, vocab)..<vocab { logits[id] = -.infinity }
    }

    /// Moves past `token` (EOS and other empty tokens move nothing).
    package mutating func record(_ token: UInt32) {
        guard Int(token) < self.vocabulary.tokens.count else { return }
        self.matcher.advance(self.vocabulary.tokens[Int(token)])
    }

    /// The document is complete and nothing may follow it: generation is over.
    package var isFinished: Bool { self.matcher.isComplete && !self.matcher.canContinue }

    /// An id that ends the sequence when no token may come (every logit masked).
    var fallbackEnd: UInt32 { self.vocabulary.eosTokenIDs.first ?? 0 }
}
