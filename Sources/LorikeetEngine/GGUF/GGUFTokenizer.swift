package import LorikeetGGUF

/// The engine's view of a GGUF model's byte-level BPE tokenizer (`BPETokenizer`).
///
/// - `encode` parses special-token texts (`<|im_start|>`) as single tokens, as Hugging Face
///   `tokenizers` does for added tokens and as a ChatML prompt needs.
/// - BOS: prepended only when the model declares `tokenizer.ggml.add_bos_token` (SmolLM2
///   does not; its chat template starts with `<|im_start|>`, which is also its BOS id 1, and
///   HF's tokenizer adds nothing).
/// - `tokenBytes` is empty for special tokens, like HF/vLLM `skip_special_tokens=True`;
///   `specialTokenBytes` has their text for `skip_special_tokens=False`.
/// - Stop ids are EOS plus `<|im_end|>` / `<|endoftext|>` (`[0, 2]` for SmolLM2), so chat
///   generation ends at the end of the assistant turn.
/// - `renderChat` is the model's ChatML template with its default system prompt.
package struct GGUFTokenizer: EngineTokenizer {
    /// The wrapped tokenizer.
    package let bpe: BPETokenizer
    package let eosTokenIDs: [UInt32]

    /// Wraps `bpe`.
    package init(_ bpe: BPETokenizer) {
        self.bpe = bpe
        self.eosTokenIDs = bpe.stopTokenIDs.sorted().map { UInt32($0) }
    }

    package var vocabSize: Int { self.bpe.vocabularySize }
    package var bosTokenID: UInt32? { self.bpe.bosTokenID.map { UInt32($0) } }
    package var addBosToken: Bool { self.bpe.addBOSByDefault }
    package var longestTokenBytes: Int { self.bpe.longestTokenBytes }

    package func encode(_ text: String) -> [UInt32] {
        self.bpe.encode(text, addBOS: false, parseSpecial: true).map { UInt32($0) }
    }

    package func tokenBytes(_ id: UInt32) -> [UInt8] {
        let i = Int(id)
        return self.bpe.isSpecialToken(i) ? [] : self.bpe.tokenBytes(i)
    }

    package func specialTokenBytes(_ id: UInt32) -> [UInt8] {
        let i = Int(id)
        return self.bpe.isSpecialToken(i) ? self.bpe.tokenBytes(i) : []
    }

    package func renderChat(_ messages: [ChatTurn]) -> String {
        self.bpe.renderChat(messages.map { ChatMessage(role: $0.role, content: $0.content) }, addGenerationPrompt: true)
    }
}
