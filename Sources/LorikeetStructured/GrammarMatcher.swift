import LorikeetJSON
import LorikeetLimits

/// Follows a document through an `OutputGrammar` one byte at a time: which bytes may come
/// next, and whether the document may end here.
///
/// It is a pushdown automaton run on a set of stacks ("threads"), one per way the bytes
/// so far can be read (`anyOf`, enum values sharing a prefix, a number that may or may not
/// be over). Every byte either advances some thread or is refused; nothing is ever
/// backtracked, so the cost per byte is bounded by the number of live threads
/// (at most `maximumThreads`).
package struct GrammarMatcher: Sendable {
    private let grammar: OutputGrammar
    private var threads: [[Frame]]

    /// Distinct live readings kept (identical ones are merged after every byte); more are
    /// cut, the first kept. The compiler refuses an `anyOf` with more alternatives than
    /// this, so only nested alternatives can reach it.
    package static let maximumThreads = 64
    /// Bytes of one object key whose name is checked against the known properties.
    static let maximumKeyBytes = 1024

    /// A matcher at the start of a document.
    package init(_ grammar: OutputGrammar) {
        self.grammar = grammar
        let start: Frame =
            if grammar.isJSON {
                .value(node: grammar.root, whitespace: 0)
            } else if case .literals(let options) = grammar.nodes[grammar.root] {
                .literal(options: options, tags: options.indices.map { $0 }, at: 0)
            } else {
                .value(node: grammar.root, whitespace: 0)
            }
        self.threads = [[start]]
    }

    /// Whether `bytes` can come next (the matcher does not move).
    package func accepts(_ bytes: some Sequence<UInt8>) -> Bool {
        var copy = self
        return copy.advance(bytes)
    }

    /// Moves past `bytes`. Returns false, and stays where it was, when they cannot come next.
    @discardableResult
    package mutating func advance(_ bytes: some Sequence<UInt8>) -> Bool {
        var current = self.threads
        for byte in bytes {
            var next: [[Frame]] = []
            for thread in current { self.step(thread, byte, into: &next) }
            guard !next.isEmpty else { return false }
            if next.count > 1 {
                // Readings that became identical (a DAG of `$ref`s, equal enum values) merge.
                var distinct: [[Frame]] = []
                for thread in next where !distinct.contains(thread) {
                    distinct.append(thread)
                    if distinct.count == Self.maximumThreads { break }
                }
                next = distinct
            }
            current = next
        }
        self.threads = current
        return true
    }

    /// Whether the document may end here (every open value closed).
    package var isComplete: Bool {
        self.threads.contains { self.canFinish($0) }
    }

    /// Whether any byte can come next.
    package var canContinue: Bool {
        (0...255).contains { self.accepts(CollectionOfOne(UInt8($0))) }
    }

    // MARK: Many candidates at one position

    /// Checks many candidate continuations of this position (every token of the
    /// vocabulary, at one decoding step) faster than `accepts` one by one: the verdict of
    /// every first byte is computed once, a token inside a string is followed without
    /// building stacks, and a token that starts with whitespace is refused by its first
    /// byte after it. Every verdict equals `accepts`'s.
    package struct Candidates: Sendable {
        private let matcher: GrammarMatcher
        private let firstByte: [Bool]
        /// The one reading is inside a string value (not a key): its frame's fields.
        private let string: (minLength: Int, maxLength: Int?, count: Int, state: StringState)?
        /// The one reading is where whitespace only counts (the run so far).
        private let whitespace: Int?

        init(_ matcher: GrammarMatcher) {
            self.matcher = matcher
            self.firstByte = (0...255).map { matcher.accepts(CollectionOfOne(UInt8($0))) }
            var string: (Int, Int?, Int, StringState)?
            var whitespace: Int?
            if matcher.threads.count == 1, let top = matcher.threads[0].last {
                switch top {
                case .string(let minLength, let maxLength, let count, let state) where count >= 0:
                    string = (minLength, maxLength, count, state)
                case .value(_, let run): whitespace = run
                case .object(_, _, let phase, let run) where run >= 0 && phase != .key && phase != .member: whitespace = run
                case .array(_, _, let phase, let run) where run >= 0 && phase != .item: whitespace = run
                default: break
                }
            }
            self.string = string
            self.whitespace = whitespace
        }

        /// Whether `bytes` can come next (false for no bytes).
        package func accepts(_ bytes: [UInt8]) -> Bool {
            guard let first = bytes.first, self.firstByte[Int(first)] else { return false }
            if bytes.count == 1 { return true }
            if let string = self.string, let verdict = Self.insideString(bytes, string) { return verdict }
            if let run = self.whitespace {
                var index = 0
                while index < bytes.count && GrammarMatcher.isWhitespace(bytes[index]) { index += 1 }
                if index > 0 {
                    guard run + index <= Limits.structuredWhitespaceRun else { return false }
                    if index == bytes.count { return true }
                    // Whitespace only counted: what follows it is judged as a first byte.
                    guard self.firstByte[Int(bytes[index])] else { return false }
                }
            }
            return self.matcher.accepts(bytes)
        }

        /// The verdict for bytes read inside a string, or nil when they close it (the
        /// frames below then decide).
        private static func insideString(
            _ bytes: [UInt8], _ string: (minLength: Int, maxLength: Int?, count: Int, state: StringState)
        ) -> Bool? {
            var count = string.count
            var state = string.state
            for byte in bytes {
                if let maxLength = string.maxLength, count >= maxLength, state == .body, byte != UInt8(ascii: "\"") {
                    return false
                }
                guard let (next, counted, closes) = GrammarMatcher.stringStep(state, byte) else { return false }
                if closes { return nil }
                state = next
                if counted { count += 1 }
            }
            return true
        }
    }

    /// A checker of many candidates at this position.
    package var candidates: Candidates { Candidates(self) }

    // MARK: Frames

    /// One open construct of the document.
    private enum Frame: Sendable, Equatable {
        /// A value of `node` is expected (JSON whitespace may come first).
        case value(node: Int, whitespace: Int)
        /// Inside a literal: every option still possible shares the `at` bytes read.
        /// `tags` say which option is which to the frame below (a property index).
        case literal(options: [[UInt8]], tags: [Int], at: Int)
        /// Inside an object key (of an object that allows other members than its
        /// properties): the bytes read so far decide, at the closing quote, which property
        /// it names, if any.
        case key(read: [UInt8], state: StringState)
        /// Inside a string, after its opening quote.
        case string(minLength: Int, maxLength: Int?, count: Int, state: StringState)
        /// Inside a number.
        case number(state: NumberState, integer: Bool, length: Int)
        /// Inside an object.
        case object(node: Int, seen: UInt64, phase: ObjectPhase, whitespace: Int)
        /// Inside an array.
        case array(node: Int, count: Int, phase: ArrayPhase, whitespace: Int)
    }

    fileprivate enum StringState: Sendable, Equatable {
        case body
        case escape
        /// Hex digits of a `\u` escape still to come, the value so far, and whether it is
        /// the low half of a surrogate pair (which must be DC00–DFFF).
        case unicode(Int, value: UInt32, low: Bool)
        /// After a high surrogate (D800–DBFF): its low half must follow, `\` then `u`.
        case lowBackslash
        case lowU
        /// UTF-8 continuation bytes still to come, and the range the next one must be in.
        case continuation(Int, low: UInt8, high: UInt8)
    }

    private enum NumberState: Sendable, Equatable {
        case start, sign, zero, integerDigits, point, fractionDigits, exponent, exponentSign, exponentDigit, exponentDigits

        var isTerminal: Bool {
            self == .zero || self == .integerDigits || self == .fractionDigits || self == .exponentDigit || self == .exponentDigits
        }
    }

    fileprivate enum ObjectPhase: Sendable, Equatable {
        /// After `{`: a key or `}`.
        case open
        /// A key is being read (the frame above).
        case key
        /// After the key of a member whose value is `value`: `:`.
        case colon(value: Int)
        /// The value is being read (the frame above).
        case member
        /// After a member: `,` or `}`.
        case afterMember
        /// After `,`: a key.
        case comma
    }

    fileprivate enum ArrayPhase: Sendable, Equatable {
        /// After `[`: a value or `]`.
        case open
        /// An item is being read (the frame above).
        case item
        /// After an item: `,` or `]`.
        case afterItem
        /// After `,`: a value.
        case comma
    }

    fileprivate static func isWhitespace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x0A || byte == 0x09 || byte == 0x0D
    }

    // MARK: Stepping

    /// Every stack `thread` becomes after `byte`, appended to `next`.
    private func step(_ thread: [Frame], _ byte: UInt8, into next: inout [[Frame]]) {
        var stack = thread
        guard let top = stack.popLast() else { return }
        switch top {
        case .value(let node, let whitespace):
            if Self.isWhitespace(byte) {
                guard whitespace < Limits.structuredWhitespaceRun else { return }
                stack.append(.value(node: node, whitespace: whitespace + 1))
                next.append(stack)
                return
            }
            for start in self.starts(of: node, byte, depth: stack.count) {
                self.step(stack + [start], byte, into: &next)
            }

        case .literal(let options, let tags, let at):
            var kept: [[UInt8]] = []
            var keptTags: [Int] = []
            for (option, tag) in zip(options, tags) where at < option.count && option[at] == byte {
                if at + 1 == option.count {
                    self.complete(stack, tag: tag, into: &next)
                } else {
                    kept.append(option)
                    keptTags.append(tag)
                }
            }
            if !kept.isEmpty {
                stack.append(.literal(options: kept, tags: keptTags, at: at + 1))
                next.append(stack)
            }

        case .string(let minLength, let maxLength, let count, let state):
            // count −1: the opening quote is this frame's first byte.
            if count < 0 {
                guard byte == UInt8(ascii: "\"") else { return }
                stack.append(.string(minLength: minLength, maxLength: maxLength, count: 0, state: .body))
                next.append(stack)
                return
            }
            // At the length limit only the closing quote may come (not the first byte of
            // a character whose last byte would then be refused: a dead end).
            if let maxLength, count >= maxLength, state == .body, byte != UInt8(ascii: "\"") { return }
            guard let (newState, counted, closes) = Self.stringStep(state, byte) else { return }
            if closes {
                guard count >= minLength else { return }
                self.complete(stack, tag: -1, into: &next)
                return
            }
            let newCount = count + (counted ? 1 : 0)
            if let maxLength, newCount > maxLength { return }
            stack.append(.string(minLength: minLength, maxLength: maxLength, count: newCount, state: newState))
            next.append(stack)

        case .number(let state, let integer, let length):
            // The last byte the cap allows must leave a complete number (else a dead end).
            if let newState = Self.numberStep(state, byte, integer: integer),
                length + 1 < Limits.structuredNumberBytes || (length + 1 == Limits.structuredNumberBytes && newState.isTerminal)
            {
                var continued = stack
                continued.append(.number(state: newState, integer: integer, length: length + 1))
                next.append(continued)
            }
            // A number ends at the first byte that cannot continue it: that byte belongs to
            // the frame below.
            if state.isTerminal {
                var ended: [[Frame]] = []
                self.complete(stack, tag: -1, into: &ended)
                for thread in ended { self.step(thread, byte, into: &next) }
            }

        case .key(let read, let state):
            // Near the key limit only the closing quote (a character or escape begun
            // there could not be finished).
            if read.count >= Self.maximumKeyBytes - 16, state == .body, byte != UInt8(ascii: "\"") { return }
            guard let (newState, _, closes) = Self.stringStep(state, byte) else { return }
            guard closes, let (node, seen) = stack.last.flatMap(Self.objectReadingKey) else {
                stack.append(.key(read: read + [byte], state: newState))
                next.append(stack)
                return
            }
            guard case .object(let properties, _, let additional) = self.grammar.nodes[node] else { return }
            // Compared unescaped: "\u0061" names property "a" as much as "a" does.
            let name = Self.unescaped(read + [byte])
            if let index = properties.firstIndex(where: { $0.name == name }) {
                // A known key is that property (never an "additional" one), only once, and
                // only when its value fits the nesting limit.
                guard seen & (1 << UInt64(index)) == 0, self.fits(properties[index].value, depth: stack.count) else { return }
                self.complete(stack, tag: index, into: &next)
            } else if additional != nil {
                self.complete(stack, tag: -1, into: &next)
            }

        case .object(let node, let seen, let phase, let whitespace):
            self.objectStep(stack, node: node, seen: seen, phase: phase, whitespace: whitespace, byte, into: &next)

        case .array(let node, let count, let phase, let whitespace):
            self.arrayStep(stack, node: node, count: count, phase: phase, whitespace: whitespace, byte, into: &next)
        }
    }

    /// The frames a value of `node` can start with when its first byte is `byte` (before
    /// that byte is read), `depth` containers deep. Its `anyOf`s are flattened once, at
    /// compile time (`OutputGrammar.leaves`): no walk here, however the `$ref`s nest.
    private func starts(of node: Int, _ byte: UInt8, depth: Int) -> [Frame] {
        var starts: [Frame] = []
        for leaf in self.grammar.leaves[node] {
            var target = leaf
            if case .anyValue = self.grammar.nodes[leaf] {
                switch byte {
                case UInt8(ascii: "{"): target = self.grammar.anyObject
                case UInt8(ascii: "["): target = self.grammar.anyArray
                case UInt8(ascii: "\""):
                    starts.append(.string(minLength: 0, maxLength: nil, count: -1, state: .body))
                    continue
                case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                    starts.append(.number(state: .start, integer: false, length: 0))
                    continue
                default:
                    let words = ["true", "false", "null"].map { Array($0.utf8) }
                    starts.append(.literal(options: words, tags: [-1, -1, -1], at: 0))
                    continue
                }
            }
            switch self.grammar.nodes[target] {
            case .object:
                // Only when it can be completed within the nesting limit (else a dead end).
                guard byte == UInt8(ascii: "{"), self.fits(target, depth: depth) else { continue }
                starts.append(.object(node: target, seen: 0, phase: .open, whitespace: -1))
            case .array:
                guard byte == UInt8(ascii: "["), self.fits(target, depth: depth) else { continue }
                starts.append(.array(node: target, count: 0, phase: .open, whitespace: -1))
            case .string(let minLength, let maxLength):
                guard byte == UInt8(ascii: "\"") else { continue }
                starts.append(.string(minLength: minLength, maxLength: maxLength, count: -1, state: .body))
            case .literals(let options):
                starts.append(.literal(options: options, tags: Array(repeating: -1, count: options.count), at: 0))
            case .integer: starts.append(.number(state: .start, integer: true, length: 0))
            case .number: starts.append(.number(state: .start, integer: false, length: 0))
            case .anyValue, .anyOf: continue
            }
        }
        return starts
    }

    /// Whether a value of `node` opened `depth` containers deep can be completed within
    /// `Limits.structuredNestingDepth`.
    private func fits(_ node: Int, depth: Int) -> Bool {
        let needed = self.grammar.minimumDepth[node]
        return needed != Int.max && depth + needed <= Limits.structuredNestingDepth
    }

    /// The frame on top of `stack` finished (with `tag`, for an object key): the frames
    /// below learn it; appended to `next`.
    private func complete(_ stack: [Frame], tag: Int, into next: inout [[Frame]]) {
        var stack = stack
        guard let parent = stack.popLast() else {
            next.append([])
            return
        }
        switch parent {
        case .object(let node, let seen, let phase, _):
            guard case .object(let properties, _, let additional) = self.grammar.nodes[node] else { return }
            switch phase {
            case .key:
                if tag >= 0 {
                    stack.append(
                        .object(node: node, seen: seen | 1 << UInt64(tag), phase: .colon(value: properties[tag].value), whitespace: 0))
                } else if let additional {
                    stack.append(.object(node: node, seen: seen, phase: .colon(value: additional), whitespace: 0))
                } else {
                    return
                }
            case .member:
                stack.append(.object(node: node, seen: seen, phase: .afterMember, whitespace: 0))
            default: return
            }
        case .array(let node, let count, .item, _):
            stack.append(.array(node: node, count: count + 1, phase: .afterItem, whitespace: 0))
        case .value:
            // A `.value` frame is replaced by its value's frame before any byte is read.
            return
        default:
            return
        }
        next.append(stack)
    }

    /// What objects and arrays handle alike: their opening byte (whitespace −1 marks a
    /// frame that has not read it yet) and whitespace between tokens (not while a key,
    /// member or item above is being read). True when `byte` was handled here.
    private func containerPrelude(
        _ stack: [Frame], opening: UInt8, whitespace: Int, reading: Bool, _ byte: UInt8, into next: inout [[Frame]],
        rebuild: (Int) -> Frame
    ) -> Bool {
        if whitespace < 0 {
            if byte == opening { next.append(stack + [rebuild(0)]) }
            return true
        }
        guard Self.isWhitespace(byte) && !reading else { return false }
        if whitespace < Limits.structuredWhitespaceRun { next.append(stack + [rebuild(whitespace + 1)]) }
        return true
    }

    private func objectStep(
        _ stack: [Frame], node: Int, seen: UInt64, phase: ObjectPhase, whitespace: Int, _ byte: UInt8, into next: inout [[Frame]]
    ) {
        guard case .object(let properties, let required, let additional) = self.grammar.nodes[node] else { return }
        let handled = self.containerPrelude(
            stack, opening: UInt8(ascii: "{"), whitespace: whitespace, reading: phase == .key || phase == .member, byte, into: &next
        ) { .object(node: node, seen: seen, phase: phase, whitespace: $0) }
        guard !handled else { return }
        switch phase {
        case .open, .comma:
            if phase == .open && byte == UInt8(ascii: "}") {
                if required & ~seen == 0 { self.complete(stack, tag: -1, into: &next) }
                return
            }
            guard byte == UInt8(ascii: "\"") else { return }
            let reading = stack + [.object(node: node, seen: seen, phase: .key, whitespace: 0)]
            // Members are one container deeper than the frames below this object.
            let depth = stack.count + 1
            if let additional, self.fits(additional, depth: depth) {
                // Any key: which property it names is known at its closing quote.
                next.append(reading + [.key(read: [byte], state: .body)])
                return
            }
            var options: [[UInt8]] = []
            var tags: [Int] = []
            for (index, property) in properties.enumerated()
            where seen & (1 << UInt64(index)) == 0 && self.fits(property.value, depth: depth) {
                options.append(property.quotedKey)
                tags.append(index)
            }
            if !options.isEmpty { self.step(reading + [.literal(options: options, tags: tags, at: 0)], byte, into: &next) }
        case .colon(let value):
            guard byte == UInt8(ascii: ":") else { return }
            next.append(stack + [.object(node: node, seen: seen, phase: .member, whitespace: 0), .value(node: value, whitespace: 0)])
        case .afterMember:
            if byte == UInt8(ascii: ",") {
                // Only when another member can follow: a comma after the last property would be a dead end.
                let depth = stack.count + 1
                let unseen = properties.indices.contains {
                    seen & (1 << UInt64($0)) == 0 && self.fits(properties[$0].value, depth: depth)
                }
                guard additional.map({ self.fits($0, depth: depth) }) == true || unseen else { return }
                next.append(stack + [.object(node: node, seen: seen, phase: .comma, whitespace: 0)])
            } else if byte == UInt8(ascii: "}"), required & ~seen == 0 {
                self.complete(stack, tag: -1, into: &next)
            }
        case .key, .member:
            // The key or value frame is above this one: never reached.
            return
        }
    }

    private func arrayStep(
        _ stack: [Frame], node: Int, count: Int, phase: ArrayPhase, whitespace: Int, _ byte: UInt8, into next: inout [[Frame]]
    ) {
        guard case .array(let items, let minItems, let maxItems) = self.grammar.nodes[node] else { return }
        let handled = self.containerPrelude(
            stack, opening: UInt8(ascii: "["), whitespace: whitespace, reading: phase == .item, byte, into: &next
        ) { .array(node: node, count: count, phase: phase, whitespace: $0) }
        guard !handled else { return }
        switch phase {
        case .open, .comma:
            if phase == .open && byte == UInt8(ascii: "]") {
                if count >= minItems { self.complete(stack, tag: -1, into: &next) }
                return
            }
            if let maxItems, count >= maxItems { return }
            guard self.fits(items, depth: stack.count + 1) else { return }
            self.step(
                stack + [.array(node: node, count: count, phase: .item, whitespace: 0), .value(node: items, whitespace: 0)], byte,
                into: &next)
        case .afterItem:
            if byte == UInt8(ascii: ",") {
                if let maxItems, count >= maxItems { return }
                guard self.fits(items, depth: stack.count + 1) else { return }
                next.append(stack + [.array(node: node, count: count, phase: .comma, whitespace: 0)])
            } else if byte == UInt8(ascii: "]"), count >= minItems {
                self.complete(stack, tag: -1, into: &next)
            }
        case .item:
            return
        }
    }

    /// A string byte: the new state, whether it ends a character (for the length), and
    /// whether it is the closing quote. Nil when the byte cannot come here.
    fileprivate static func stringStep(_ state: StringState, _ byte: UInt8) -> (StringState, Bool, Bool)? {
        switch state {
        case .body:
            switch byte {
            case UInt8(ascii: "\""): return (.body, false, true)
            case UInt8(ascii: "\\"): return (.escape, false, false)
            case 0x00..<0x20, 0x7F: return nil
            case 0x20..<0x80: return (.body, true, false)
            case 0xC2...0xDF: return (.continuation(1, low: 0x80, high: 0xBF), false, false)
            case 0xE0: return (.continuation(2, low: 0xA0, high: 0xBF), false, false)
            case 0xED: return (.continuation(2, low: 0x80, high: 0x9F), false, false)
            case 0xE1...0xEF: return (.continuation(2, low: 0x80, high: 0xBF), false, false)
            case 0xF0: return (.continuation(3, low: 0x90, high: 0xBF), false, false)
            case 0xF4: return (.continuation(3, low: 0x80, high: 0x8F), false, false)
            case 0xF1...0xF3: return (.continuation(3, low: 0x80, high: 0xBF), false, false)
            default: return nil
            }
        case .escape:
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                return (.body, true, false)
            case UInt8(ascii: "u"): return (.unicode(4, value: 0, low: false), false, false)
            default: return nil
            }
        case .unicode(let remaining, let value, let low):
            guard let digit = Self.hexValue(byte) else { return nil }
            let newValue = value << 4 | digit
            // Surrogates are judged by their first two digits, so no digit is accepted that
            // a later one could not complete: a low half is DC–DF, anything else is not.
            if remaining == 4 && low && newValue != 0xD { return nil }
            if remaining == 3 && (0xDC...0xDF).contains(newValue) != low { return nil }
            if remaining > 1 { return (.unicode(remaining - 1, value: newValue, low: low), false, false) }
            if !low && (0xD800...0xDBFF).contains(newValue) { return (.lowBackslash, false, false) }
            return (.body, true, false)
        case .lowBackslash:
            return byte == UInt8(ascii: "\\") ? (.lowU, false, false) : nil
        case .lowU:
            return byte == UInt8(ascii: "u") ? (.unicode(4, value: 0, low: true), false, false) : nil
        case .continuation(let remaining, let low, let high):
            guard byte >= low && byte <= high else { return nil }
            return remaining == 1 ? (.body, true, false) : (.continuation(remaining - 1, low: 0x80, high: 0xBF), false, false)
        }
    }

    private static func hexValue(_ byte: UInt8) -> UInt32? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt32(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): UInt32(byte - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): UInt32(byte - UInt8(ascii: "A") + 10)
        default: nil
        }
    }

    /// A number byte: the new state, or nil when the byte cannot continue the number.
    private static func numberStep(_ state: NumberState, _ byte: UInt8, integer: Bool) -> NumberState? {
        let digit = byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
        switch state {
        case .start:
            if byte == UInt8(ascii: "-") { return .sign }
            if byte == UInt8(ascii: "0") { return .zero }
            return digit ? .integerDigits : nil
        case .sign:
            if byte == UInt8(ascii: "0") { return .zero }
            if digit { return .integerDigits }
            return nil
        case .zero, .integerDigits:
            if digit { return state == .zero ? nil : .integerDigits }
            if integer { return nil }
            if byte == UInt8(ascii: ".") { return .point }
            if byte == UInt8(ascii: "e") || byte == UInt8(ascii: "E") { return .exponent }
            return nil
        case .point, .fractionDigits:
            if digit { return .fractionDigits }
            if state == .fractionDigits && (byte == UInt8(ascii: "e") || byte == UInt8(ascii: "E")) { return .exponent }
            return nil
        case .exponent:
            if byte == UInt8(ascii: "+") || byte == UInt8(ascii: "-") { return .exponentSign }
            return digit ? .exponentDigit : nil
        case .exponentSign:
            return digit ? .exponentDigit : nil
        case .exponentDigit:
            // At most two exponent digits: every number then fits a double (1e999 would not).
            return digit ? .exponentDigits : nil
        case .exponentDigits:
            return nil
        }
    }

    /// The UTF-8 text of a complete JSON string (quotes included), escapes decoded by the
    /// server's own JSON parser.
    static func unescaped(_ quoted: [UInt8]) -> [UInt8] {
        guard quoted.contains(UInt8(ascii: "\\")) else { return Array(quoted.dropFirst().dropLast()) }
        guard case .string(let text)? = try? JSONParser.parse(quoted) else { return [] }
        return Array(text.utf8)
    }

    /// The object node and its seen properties when `frame` is an object reading a key.
    private static func objectReadingKey(_ frame: Frame) -> (Int, UInt64)? {
        guard case .object(let node, let seen, .key, _) = frame else { return nil }
        return (node, seen)
    }

    /// Whether `stack` can be closed without another byte.
    private func canFinish(_ stack: [Frame]) -> Bool {
        guard let top = stack.last else { return true }
        switch top {
        case .number(let state, _, _) where state.isTerminal:
            var ended: [[Frame]] = []
            self.complete(Array(stack.dropLast()), tag: -1, into: &ended)
            return ended.contains { self.canFinish($0) }
        default:
            return false
        }
    }
}
