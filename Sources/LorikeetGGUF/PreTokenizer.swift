/// Splits text into the pieces byte-level BPE encodes one at a time, as llama.cpp does for
/// GPT-2–style vocabularies (`src/llama-vocab.cpp`, `src/unicode.cpp`).
///
/// For pre-tokenizer `smollm` (also starcoder, refact, command-r, codeshell) llama.cpp applies
/// two expressions in turn: `\p{N}` (every number character is its own piece), then GPT-2's
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` within each
/// piece. That matches the Hugging Face `tokenizer.json` of SmolLM2: `Sequence[Digits(individual_digits),
/// ByteLevel(use_regex)]`. For `gpt2` only the second expression applies.
///
/// Written by hand over Unicode scalar properties rather than with a regex engine: `\p{L}` is
/// general category L*, `\p{N}` is Nd/Nl/No, `\s` is the Unicode `White_Space` property,
/// and ` ?` is U+0020 only.
package enum PreTokenizer: Sendable {
    /// GPT-2 regex only.
    case gpt2
    /// Each number character apart, then the GPT-2 regex (llama.cpp `LLAMA_VOCAB_PRE_TYPE_SMOLLM`).
    case smollm

    /// Character classes the GPT-2 expression distinguishes.
    enum CharClass: UInt8 {
        case letter, number, whitespace, other
    }

    private static let asciiClasses: [CharClass] = (0..<128).map { Self.computeClass(Unicode.Scalar(UInt8($0))) }

    @inline(__always)
    static func charClass(_ s: Unicode.Scalar) -> CharClass {
        s.value < 128 ? Self.asciiClasses[Int(s.value)] : Self.computeClass(s)
    }

    private static func computeClass(_ s: Unicode.Scalar) -> CharClass {
        let p = s.properties
        if p.isWhitespace { return .whitespace }
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            return .letter
        case .decimalNumber, .letterNumber, .otherNumber:
            return .number
        default:
            return .other
        }
    }

    /// The pieces of `scalars` as index ranges, in order, covering every scalar exactly once.
    package func split(_ scalars: [Unicode.Scalar]) -> [Range<Int>] {
        let classes = scalars.map(Self.charClass)
        var pieces: [Range<Int>] = []
        pieces.reserveCapacity(scalars.count / 3 + 1)
        switch self {
        case .gpt2:
            Self.splitGPT2(scalars, classes, 0..<scalars.count, into: &pieces)
        case .smollm:
            var start = 0
            for i in 0..<scalars.count where classes[i] == .number {
                if start < i { Self.splitGPT2(scalars, classes, start..<i, into: &pieces) }
                pieces.append(i..<(i + 1))
                start = i + 1
            }
            if start < scalars.count { Self.splitGPT2(scalars, classes, start..<scalars.count, into: &pieces) }
        }
        return pieces
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` over
    /// `range`, leftmost-first like a backtracking regex engine; text outside `range` is
    /// invisible (the lookahead sees the end of the piece).
    static func splitGPT2(
        _ s: [Unicode.Scalar],
        _ classes: [CharClass],
        _ range: Range<Int>,
        into pieces: inout [Range<Int>]
    ) {
        let end = range.upperBound
        var pos = range.lowerBound
        while pos < end {
            let c = s[pos]
            // 's|'t|'re|'ve|'m|'ll|'d
            if c == "'", pos + 1 < end {
                let n = s[pos + 1]
                if n == "s" || n == "t" || n == "m" || n == "d" {
                    pieces.append(pos..<(pos + 2))
                    pos += 2
                    continue
                }
                if pos + 2 < end {
                    let nn = s[pos + 2]
                    if (n == "r" && nn == "e") || (n == "v" && nn == "e") || (n == "l" && nn == "l") {
                        pieces.append(pos..<(pos + 3))
                        pos += 3
                        continue
                    }
                }
            }
            // ` ?X+` for X in letter, number, other: an optional U+0020 then a run of one class.
            let leadingSpace = c == " " && pos + 1 < end
            let first = leadingSpace ? pos + 1 : pos
            let cls = classes[first]
            if cls != .whitespace {
                var j = first + 1
                while j < end && classes[j] == cls { j += 1 }
                pieces.append(pos..<j)
                pos = j
                continue
            }
            // \s+(?!\S) | \s+
            var j = pos
            while j < end && classes[j] == .whitespace { j += 1 }
            let run = j - pos
            if run > 1 && j < end {
                // Leave the last whitespace to prefix the next piece.
                pieces.append(pos..<(j - 1))
                pos = j - 1
            } else {
                pieces.append(pos..<j)
                pos = j
            }
        }
    }
}
