import Foundation

/// One chat message (the engine channel's `ChatMessage`, OpenAI's `messages[]`).
package struct ChatTurn: Sendable, Equatable {
    /// `system`, `user`, `assistant`, ...
    package var role: String
    /// The message text.
    package var content: String

    /// Creates a turn.
    package init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// What the engine needs from a tokenizer: encode text, map each id back to its bytes
/// (the engine assembles UTF-8 itself, across token boundaries), the special ids, and the
/// model's chat template.
package protocol EngineTokenizer: Sendable {
    /// Number of token ids.
    var vocabSize: Int { get }
    /// Token ids for `text` (no BOS added).
    func encode(_ text: String) -> [UInt32]
    /// The raw bytes a token stands for; empty for control tokens (BOS/EOS) that
    /// produce no text.
    func tokenBytes(_ id: UInt32) -> [UInt8]
    /// Ids that end generation unless `ignore_eos`.
    var eosTokenIDs: [UInt32] { get }
    /// The beginning-of-sequence id, if the model has one.
    var bosTokenID: UInt32? { get }
    /// Whether prompts from text start with BOS (HF `add_bos_token`).
    var addBosToken: Bool { get }
    /// The prompt text for `messages`, ending with the assistant turn opener.
    func renderChat(_ messages: [ChatTurn]) -> String
    /// The most text bytes one token covers: a text of B bytes is at least
    /// B / longestTokenBytes tokens.
    var longestTokenBytes: Int { get }
    /// The text of a control token (`<|im_end|>`) for `skip_special_tokens: false`; empty
    /// for other tokens (their text is `tokenBytes`).
    func specialTokenBytes(_ id: UInt32) -> [UInt8]
}

extension EngineTokenizer {
    /// Prompt ids for `text`: BOS (when the model adds one) followed by `encode(text)`.
    package func encodePrompt(_ text: String) -> [UInt32] {
        var ids: [UInt32] = []
        if self.addBosToken, let bos = self.bosTokenID { ids.append(bos) }
        ids += self.encode(text)
        return ids
    }
}

/// The byte-level tokenizer of the fixture models: ids 0–255 are the bytes themselves,
/// then `<s>` (BOS) and `</s>` (EOS); any further ids (up to `vocabSize`) are unused
/// specials that decode to nothing.
///
/// Chat template (documented, deliberately simple):
/// ```
/// <|role|>\n
/// content\n
/// ... for every message, then
/// <|assistant|>\n
/// ```
/// where `<|role|>` is written as plain bytes.
package struct ByteTokenizer: EngineTokenizer {
    package let vocabSize: Int
    package let bosTokenID: UInt32?
    package let eosTokenIDs: [UInt32]
    package var addBosToken: Bool { self.bosTokenID != nil }
    package var longestTokenBytes: Int { 1 }

    /// A byte tokenizer; BOS and EOS default to 256 and 257.
    package init(vocabSize: Int = 258, bosTokenID: UInt32? = 256, eosTokenIDs: [UInt32] = [257]) {
        self.vocabSize = max(vocabSize, 256)
        self.bosTokenID = bosTokenID
        self.eosTokenIDs = eosTokenIDs
    }

    package func encode(_ text: String) -> [UInt32] {
        text.utf8.map { UInt32($0) }
    }

    package func tokenBytes(_ id: UInt32) -> [UInt8] {
        id < 256 ? [UInt8(id)] : []
    }

    /// `<s>` for BOS, `</s>` for EOS; nothing for the unused ids above them.
    package func specialTokenBytes(_ id: UInt32) -> [UInt8] {
        if id == self.bosTokenID { return Array("<s>".utf8) }
        if self.eosTokenIDs.contains(id) { return Array("</s>".utf8) }
        return []
    }

    package func renderChat(_ messages: [ChatTurn]) -> String {
        var text = ""
        for m in messages { text += "<|\(m.role)|>\n\(m.content)\n" }
        return text + "<|assistant|>\n"
    }
}

/// Finds stop strings in streamed text. Text that might be the start of a stop string is
/// held back; everything after the first stop string is never emitted, and the stop
/// string itself only with vLLM's `include_stop_str_in_output` (default false).
package struct StopStringMatcher: Sendable {
    private let stops: [String]
    private let includeStop: Bool
    private var held = ""
    /// The stop string that ended the text, once one has (vLLM's `stop_reason`).
    package private(set) var matched: String?

    /// Creates a matcher; empty stop strings are ignored.
    package init(_ stops: [String], includeStop: Bool = false) {
        self.stops = stops.filter { !$0.isEmpty }
        self.includeStop = includeStop
    }

    /// Feeds new text. Returns the text safe to emit, and whether a stop string was hit.
    package mutating func feed(_ text: String) -> (emit: String, stopped: Bool) {
        guard !self.stops.isEmpty else { return (text, false) }
        self.held += text
        var earliest: Range<String.Index>?
        for s in self.stops {
            if let r = self.held.range(of: s), earliest.map({ r.lowerBound < $0.lowerBound }) ?? true {
                earliest = r
                self.matched = s
            }
        }
        if let match = earliest {
            let out = String(self.held[..<(self.includeStop ? match.upperBound : match.lowerBound)])
            self.held = ""
            return (out, true)
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        var keep = 0
        let chars = Array(self.held)
        for s in self.stops {
            let sc = Array(s)
            var k = min(sc.count - 1, chars.count)
            while k > keep {
                if Array(chars[(chars.count - k)...]) == Array(sc[0..<k]) {
                    keep = k
                    break
                }
                k -= 1
            }
        }
        let out = String(chars[0..<(chars.count - keep)])
        self.held = String(chars[(chars.count - keep)...])
        return (out, false)
    }

    /// The held-back text when generation ends for another reason.
    package mutating func flush() -> String {
        defer { self.held = "" }
        return self.held
    }
}
