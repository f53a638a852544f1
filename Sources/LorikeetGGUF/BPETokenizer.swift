/// One chat message for `BPETokenizer.renderChat` (an OpenAI `messages[]` entry reduced to text).
package struct ChatMessage: Sendable, Equatable {
    /// `system`, `user`, `assistant` or any other role string; rendered verbatim.
    package var role: String
    /// The message text.
    package var content: String

    package init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// GPT-2–style byte-level BPE tokenizer built from GGUF `tokenizer.ggml.*` metadata, encoding
/// exactly like llama.cpp and Hugging Face `tokenizers` for the same vocabulary.
///
/// Encoding: special tokens (GGUF token types control and user-defined, such as
/// `<|im_start|>`) are cut out of the text first, leftmost-longest; the rest is split by the
/// model's `PreTokenizer`; each piece's UTF-8 bytes are mapped through GPT-2's byte-to-unicode
/// table and merged by merge rank (lowest rank first, leftmost first on ties).
package struct BPETokenizer: Sendable {
    /// Token texts by id, as stored in the vocabulary (byte-level mapped: `Ġ` is a space).
    package let tokens: [String]
    /// GGUF token types by id (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    package let tokenTypes: [Int]
    /// Beginning-of-sequence token id (`tokenizer.ggml.bos_token_id`).
    package let bosTokenID: Int?
    /// End-of-sequence token id (`tokenizer.ggml.eos_token_id`).
    package let eosTokenID: Int?
    /// Whether `encode` prepends BOS by default (`tokenizer.ggml.add_bos_token`).
    package let addBOSByDefault: Bool
    /// The split applied before BPE.
    package let preTokenizer: PreTokenizer
    /// The Jinja chat template the model declares (`tokenizer.chat_template`), if any.
    package let chatTemplate: String?
    /// The system prompt the chat template inserts when the conversation has none.
    package let defaultSystemPrompt: String?
    /// Ids that end generation: EOS plus `<|im_end|>` and `<|endoftext|>` when present.
    package let stopTokenIDs: Set<Int>

    private let tokenIDs: [String: Int]
    private let byteTokenIDs: [Int32]
    private let merges: [UInt64: Merge]
    private let bytesByID: [[UInt8]]
    /// Bytes of the longest token (special tokens by their text): a text of B bytes
    /// encodes to at least B / longestTokenBytes tokens, a bound known without encoding.
    package let longestTokenBytes: Int
    private let isSpecial: [Bool]
    /// Special tokens as scalar arrays, longest first, keyed by first scalar.
    private let specialsByFirstScalar: [Unicode.Scalar: [(scalars: [Unicode.Scalar], id: Int)]]

    /// The merge of a token pair: its rank (lower merges first) and the resulting token id.
    private struct Merge: Sendable {
        var rank: Int32
        var id: Int32
    }

    /// GGUF token type codes (`llama_token_type`).
    package enum TokenType {
        package static let normal = 1
        package static let control = 3
        package static let userDefined = 4
    }

    /// Builds the tokenizer from a parsed GGUF file's `tokenizer.*` metadata.
    package init(gguf file: GGUFFile) throws(GGUFModelError) {
        let model = try file.string("tokenizer.ggml.model")
        let pre = file["tokenizer.ggml.pre"]?.stringValue ?? "default"
        guard model == "gpt2" else { throw .unsupportedTokenizer(model: model, pre: pre) }
        let preTokenizer: PreTokenizer
        switch pre {
        case "smollm", "starcoder", "refact", "command-r", "codeshell": preTokenizer = .smollm
        case "gpt2": preTokenizer = .gpt2
        default: throw .unsupportedTokenizer(model: model, pre: pre)
        }
        let tokens = try Self.strings(file, "tokenizer.ggml.tokens")
        let merges = try Self.strings(file, "tokenizer.ggml.merges")
        var types = [Int](repeating: TokenType.normal, count: tokens.count)
        if let value = file["tokenizer.ggml.token_type"] {
            guard let array = value.arrayValue, array.count == tokens.count else {
                throw .invalidMetadata(
                    key: "tokenizer.ggml.token_type", reason: "must be an integer array with one entry per token (\(tokens.count))")
            }
            for (i, v) in array.enumerated() {
                guard let t = v.intValue else {
                    throw .wrongMetadataType(key: "tokenizer.ggml.token_type", expected: "array of integers", found: value.typeDescription)
                }
                types[i] = t
            }
        }
        try self.init(
            tokens: tokens,
            tokenTypes: types,
            merges: merges,
            bosTokenID: file["tokenizer.ggml.bos_token_id"]?.intValue,
            eosTokenID: file["tokenizer.ggml.eos_token_id"]?.intValue,
            addBOSByDefault: file["tokenizer.ggml.add_bos_token"]?.boolValue ?? false,
            preTokenizer: preTokenizer,
            chatTemplate: file["tokenizer.chat_template"]?.stringValue)
    }

    /// Builds a tokenizer from a vocabulary and merge list (`"left right"` strings, rank = index).
    package init(
        tokens: [String],
        tokenTypes: [Int]? = nil,
        merges: [String],
        bosTokenID: Int? = nil,
        eosTokenID: Int? = nil,
        addBOSByDefault: Bool = false,
        preTokenizer: PreTokenizer = .smollm,
        chatTemplate: String? = nil
    ) throws(GGUFModelError) {
        let types = tokenTypes ?? [Int](repeating: TokenType.normal, count: tokens.count)
        guard types.count == tokens.count else {
            throw .invalidMetadata(key: "tokenizer.ggml.token_type", reason: "\(types.count) types for \(tokens.count) tokens")
        }
        guard tokens.count < Int(Int32.max) else {
            throw .invalidMetadata(key: "tokenizer.ggml.tokens", reason: "\(tokens.count) tokens is too many")
        }
        for (key, id) in [("tokenizer.ggml.bos_token_id", bosTokenID), ("tokenizer.ggml.eos_token_id", eosTokenID)] {
            if let id, !(0..<tokens.count).contains(id) {
                throw .invalidMetadata(key: key, reason: "id \(id) is outside the vocabulary of \(tokens.count) tokens")
            }
        }
        var ids: [String: Int] = [:]
        ids.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() where ids[t] == nil { ids[t] = i }

        // Some vocabularies lack tokens for bytes that (almost) never occur, such as 0xC0 or
        // some control characters (SmolLM2 lacks 21). Like llama.cpp and Hugging Face
        // `tokenizers` without an unknown token, such bytes are dropped from the input.
        let byteToUnicode = ByteLevel.byteToUnicode
        let byteTokenIDs: [Int32] = (0..<256).map { b in ids[String(Character(byteToUnicode[b]))].map { Int32($0) } ?? -1 }
        let knownBytes = byteTokenIDs.filter { $0 >= 0 }.count
        guard knownBytes >= 128 else {
            throw .invalidMetadata(
                key: "tokenizer.ggml.tokens", reason: "only \(knownBytes) of 256 byte tokens exist; not a byte-level BPE vocabulary")
        }

        var mergeTable: [UInt64: Merge] = [:]
        mergeTable.reserveCapacity(merges.count)
        for (rank, merge) in merges.enumerated() {
            guard let space = merge.firstIndex(of: " ") else {
                throw .invalidMetadata(key: "tokenizer.ggml.merges", reason: "merge \(rank) '\(merge)' has no space between its two parts")
            }
            let left = String(merge[..<space])
            let right = String(merge[merge.index(after: space)...])
            guard let l = ids[left], let r = ids[right], let m = ids[left + right] else {
                throw .invalidMetadata(
                    key: "tokenizer.ggml.merges", reason: "merge \(rank) '\(merge)' refers to a token missing from the vocabulary")
            }
            let key = UInt64(l) << 32 | UInt64(r)
            if mergeTable[key] == nil { mergeTable[key] = Merge(rank: Int32(rank), id: Int32(m)) }
        }

        var special = [Bool](repeating: false, count: tokens.count)
        var specials: [Unicode.Scalar: [(scalars: [Unicode.Scalar], id: Int)]] = [:]
        var bytesByID: [[UInt8]] = []
        bytesByID.reserveCapacity(tokens.count)
        let unicodeToByte = ByteLevel.unicodeToByte
        for (i, text) in tokens.enumerated() {
            if types[i] == TokenType.control || types[i] == TokenType.userDefined {
                special[i] = true
                let scalars = Array(text.unicodeScalars)
                if let first = scalars.first { specials[first, default: []].append((scalars, i)) }
                bytesByID.append(Array(text.utf8))
            } else {
                var bytes: [UInt8] = []
                for s in text.unicodeScalars {
                    if let b = unicodeToByte[s] { bytes.append(b) } else { bytes.append(contentsOf: String(s).utf8) }
                }
                bytesByID.append(bytes)
            }
        }
        for key in specials.keys { specials[key]!.sort { $0.scalars.count > $1.scalars.count } }

        var stops = Set<Int>()
        if let eosTokenID { stops.insert(eosTokenID) }
        for name in ["<|im_end|>", "<|endoftext|>"] { if let id = ids[name], special[id] { stops.insert(id) } }

        self.tokens = tokens
        self.tokenTypes = types
        self.bosTokenID = bosTokenID
        self.eosTokenID = eosTokenID
        self.addBOSByDefault = addBOSByDefault
        self.preTokenizer = preTokenizer
        self.chatTemplate = chatTemplate
        self.defaultSystemPrompt = chatTemplate.flatMap(ChatML.defaultSystemPrompt(in:))
        self.stopTokenIDs = stops
        self.tokenIDs = ids
        self.byteTokenIDs = byteTokenIDs
        self.merges = mergeTable
        self.bytesByID = bytesByID
        self.longestTokenBytes = max(1, bytesByID.map(\.count).max() ?? 1)
        self.isSpecial = special
        self.specialsByFirstScalar = specials
    }

    private static func strings(_ file: GGUFFile, _ key: String) throws(GGUFModelError) -> [String] {
        guard let value = file[key] else { throw .missingMetadata(key) }
        guard case .array(.string, let values) = value else {
            throw .wrongMetadataType(key: key, expected: "array<string>", found: value.typeDescription)
        }
        return values.map { $0.stringValue ?? "" }
    }

    /// Number of tokens in the vocabulary.
    package var vocabularySize: Int { self.tokens.count }

    /// The id of a token by its exact vocabulary text (such as `<|im_end|>`).
    package func tokenID(_ text: String) -> Int? { self.tokenIDs[text] }

    /// Whether `id` is a special (control or user-defined) token.
    package func isSpecialToken(_ id: Int) -> Bool {
        self.isSpecial.indices.contains(id) && self.isSpecial[id]
    }

    /// Encodes `text` to token ids.
    ///
    /// - Parameters:
    ///   - addBOS: prepend `bosTokenID`; defaults to the model's `add_bos_token` (false for SmolLM2).
    ///   - parseSpecial: recognise special-token texts such as `<|im_start|>` as single tokens
    ///     (what a chat prompt needs); when false they are encoded as plain text.
    package func encode(_ text: String, addBOS: Bool? = nil, parseSpecial: Bool = true) -> [Int] {
        let scalars = Array(text.unicodeScalars)
        var out: [Int] = []
        out.reserveCapacity(scalars.count / 3 + 2)
        if addBOS ?? self.addBOSByDefault, let bos = self.bosTokenID { out.append(bos) }
        var start = 0
        var i = 0
        if parseSpecial && !self.specialsByFirstScalar.isEmpty {
            while i < scalars.count {
                if let candidates = self.specialsByFirstScalar[scalars[i]],
                    let match = candidates.first(where: { Self.hasPrefix(scalars, at: i, $0.scalars) })
                {
                    if start < i { self.encodeText(scalars, start..<i, into: &out) }
                    out.append(match.id)
                    i += match.scalars.count
                    start = i
                } else {
                    i += 1
                }
            }
        }
        if start < scalars.count { self.encodeText(scalars, start..<scalars.count, into: &out) }
        return out
    }

    private static func hasPrefix(_ s: [Unicode.Scalar], at i: Int, _ p: [Unicode.Scalar]) -> Bool {
        guard i + p.count <= s.count else { return false }
        for k in 0..<p.count where s[i + k] != p[k] { return false }
        return true
    }

    private func encodeText(_ scalars: [Unicode.Scalar], _ range: Range<Int>, into out: inout [Int]) {
        let segment = Array(scalars[range])
        var bytes: [UInt8] = []
        for piece in self.preTokenizer.split(segment) {
            bytes.removeAll(keepingCapacity: true)
            for s in segment[piece] { UTF8.encode(s) { bytes.append($0) } }
            self.bpe(bytes, into: &out)
        }
    }

    /// Merges one piece's bytes (minus bytes without a token) by rank: a priority queue of (rank, position) over a linked
    /// list of symbols, as in Hugging Face `tokenizers`' `Word::merge_all`, O(n log n).
    private func bpe(_ bytes: [UInt8], into out: inout [Int]) {
        var symbols: [Int32] = []
        symbols.reserveCapacity(bytes.count)
        for b in bytes {
            let id = self.byteTokenIDs[Int(b)]
            if id >= 0 { symbols.append(id) }
        }
        let n = symbols.count
        if n <= 1 {
            out.append(contentsOf: symbols.map { Int($0) })
            return
        }
        var next = (0..<n).map { $0 + 1 < n ? Int32($0 + 1) : -1 }
        var prev = (0..<n).map { Int32($0 - 1) }
        var alive = [Bool](repeating: true, count: n)
        var heap = MinHeap()
        for i in 0..<(n - 1) {
            if let m = self.merges[UInt64(UInt32(symbols[i])) << 32 | UInt64(UInt32(symbols[i + 1]))] {
                heap.push(UInt64(UInt32(m.rank)) << 32 | UInt64(i))
            }
        }
        while let top = heap.pop() {
            let rank = Int32(truncatingIfNeeded: top >> 32)
            let pos = Int(truncatingIfNeeded: top & 0xFFFF_FFFF)
            guard alive[pos] else { continue }
            let right = Int(next[pos])
            guard right >= 0 else { continue }
            guard let m = self.merges[UInt64(UInt32(symbols[pos])) << 32 | UInt64(UInt32(symbols[right]))],
                m.rank == rank
            else { continue }
            symbols[pos] = m.id
            alive[right] = false
            let after = next[right]
            next[pos] = after
            if after >= 0 { prev[Int(after)] = Int32(pos) }
            let before = Int(prev[pos])
            if before >= 0, let m = self.merges[UInt64(UInt32(symbols[before])) << 32 | UInt64(UInt32(symbols[pos]))] {
                heap.push(UInt64(UInt32(m.rank)) << 32 | UInt64(before))
            }
            if after >= 0, let m = self.merges[UInt64(UInt32(symbols[pos])) << 32 | UInt64(UInt32(symbols[Int(after)]))] {
                heap.push(UInt64(UInt32(m.rank)) << 32 | UInt64(pos))
            }
        }
        var i = 0
        while i >= 0 {
            out.append(Int(symbols[i]))
            i = Int(next[i])
        }
    }

    /// The bytes token `id` stands for (byte-level decoded; a special token's own text);
    /// empty for an id outside the vocabulary.
    ///
    /// For streaming: a token may end inside a multi-byte UTF-8 character, so concatenate
    /// bytes and emit text only up to the last complete character.
    package func tokenBytes(_ id: Int) -> [UInt8] {
        self.bytesByID.indices.contains(id) ? self.bytesByID[id] : []
    }

    /// Decodes ids to text; invalid UTF-8 (a sequence cut inside a character) becomes U+FFFD.
    ///
    /// - Parameter skipSpecial: leave out special tokens such as `<|im_end|>`.
    package func decode(_ ids: [Int], skipSpecial: Bool = false) -> String {
        var bytes: [UInt8] = []
        for id in ids where !(skipSpecial && self.isSpecialToken(id)) {
            bytes.append(contentsOf: self.tokenBytes(id))
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Renders a conversation the way the model's ChatML `tokenizer.chat_template` does:
    /// `<|im_start|>{role}\n{content}<|im_end|>\n` per message, preceded by the template's
    /// default system message when the first message is not `system`, followed by
    /// `<|im_start|>assistant\n` when `addGenerationPrompt`.
    package func renderChat(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) -> String {
        ChatML.render(messages, defaultSystemPrompt: self.defaultSystemPrompt, addGenerationPrompt: addGenerationPrompt)
    }
}

/// GPT-2's reversible byte ↔ printable-unicode mapping (`bytes_to_unicode` in openai/gpt-2 `encoder.py`).
package enum ByteLevel {
    /// Printable bytes map to themselves; the other 68 map to U+0100 onwards in byte order.
    package static let byteToUnicode: [Unicode.Scalar] = {
        var printable = Set<Int>()
        printable.formUnion(Int(UInt8(ascii: "!"))...Int(UInt8(ascii: "~")))
        printable.formUnion(0xA1...0xAC)
        printable.formUnion(0xAE...0xFF)
        var table: [Unicode.Scalar] = []
        var n: UInt32 = 0
        for b in 0..<256 {
            if printable.contains(b) {
                table.append(Unicode.Scalar(UInt8(b)))
            } else {
                table.append(Unicode.Scalar(256 + n)!)
                n += 1
            }
        }
        return table
    }()

    /// Inverse of `byteToUnicode`.
    package static let unicodeToByte: [Unicode.Scalar: UInt8] = {
        var table: [Unicode.Scalar: UInt8] = [:]
        for (b, s) in byteToUnicode.enumerated() { table[s] = UInt8(b) }
        return table
    }()
}

/// A binary min-heap of packed `(rank << 32 | position)` keys.
struct MinHeap {
    private var items: [UInt64] = []

    mutating func push(_ v: UInt64) {
        self.items.append(v)
        var i = self.items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if self.items[parent] <= self.items[i] { break }
            self.items.swapAt(parent, i)
            i = parent
        }
    }

    mutating func pop() -> UInt64? {
        guard let last = self.items.popLast() else { return nil }
        guard !self.items.isEmpty else { return last }
        let top = self.items[0]
        self.items[0] = last
        var i = 0
        let n = self.items.count
        while true {
            let l = 2 * i + 1
            let r = l + 1
            var m = i
            if l < n && self.items[l] < self.items[m] { m = l }
            if r < n && self.items[r] < self.items[m] { m = r }
            if m == i { break }
            self.items.swapAt(i, m)
            i = m
        }
        return top
    }
}
