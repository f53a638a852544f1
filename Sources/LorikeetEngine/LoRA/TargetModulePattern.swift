/// A PEFT `target_modules` regex (a string other than `"all-linear"`), matched without
/// backtracking.
///
/// PEFT selects a module when `re.fullmatch(target_modules, module_path)`. An adapter
/// file is untrusted, and a backtracking engine can spend exponential time on patterns
/// such as `(a+)+$` or `(.*)*x`; so patterns are compiled to a Thompson NFA and run as a
/// Pike VM, in time linear in `pattern × text` whatever the pattern.
///
/// Supported (the subset PEFT adapters use in practice): literals and escaped
/// punctuation, `.`, classes `[...]` with ranges and negation, `\d \D \w \W \s \S`,
/// groups `( )`, `(?: )` and `(?P<name> )`, alternation `|`, quantifiers `* + ?` (also
/// lazy `*? +? ??`, which cannot change whether a full match exists) and `{m}`, `{m,}`,
/// `{m,n}` (bounds up to `maxRepeat`), anchors `^` and `$`. Refused with a reason:
/// backreferences, lookaround, inline flags, possessive quantifiers, `\b`, and patterns
/// longer than `maxPatternBytes` or compiling to more than `maxInstructions` states.
package struct TargetModulePattern: Sendable {
    /// Longest accepted pattern, in UTF-8 bytes.
    package static let maxPatternBytes = 1024
    /// Most NFA states a pattern may compile to (bounds matching work per character).
    package static let maxInstructions = 1024
    /// Largest bound in `{m,n}`.
    package static let maxRepeat = 100

    /// Why a pattern was refused (the message never repeats the pattern).
    package struct Unsupported: Error, Equatable, Sendable, CustomStringConvertible {
        /// What is not supported, e.g. "lookaround '(?=' at offset 3".
        package var reason: String
        package var description: String { self.reason }
    }

    private enum Item: Sendable {
        case any  // `.`: anything but a newline
        case set(ranges: [ClosedRange<UInt32>], negated: Bool)
    }

    private enum Instruction: Sendable {
        case match(Item)
        case split(Int, Int)
        case jump(Int)
        case lineStart
        case lineEnd
        case accept
    }

    private let program: [Instruction]

    /// Compiles `pattern`; throws `Unsupported` for anything outside the subset.
    package init(_ pattern: String) throws(Unsupported) {
        guard pattern.utf8.count <= Self.maxPatternBytes else {
            throw Unsupported(reason: "the pattern is \(pattern.utf8.count) bytes; the limit is \(Self.maxPatternBytes)")
        }
        var parser = Parser(scalars: Array(pattern.unicodeScalars))
        let node = try parser.parseAll()
        var compiler = Compiler()
        try compiler.emit(node)
        compiler.program.append(.accept)
        guard compiler.program.count <= Self.maxInstructions else {
            throw Unsupported(reason: "the pattern is too complex (more than \(Self.maxInstructions) states)")
        }
        self.program = compiler.program
    }

    /// Whether the whole of `text` matches (`re.fullmatch`).
    package func fullMatch(_ text: String) -> Bool {
        let input = Array(text.unicodeScalars)
        let count = self.program.count
        var current: [Int] = []
        var next: [Int] = []
        var mark = [Int](repeating: -1, count: count)
        var stack: [Int] = []
        current.reserveCapacity(count)
        next.reserveCapacity(count)

        // Adds `start` and everything reachable from it without consuming input.
        func addClosure(_ start: Int, position: Int, into list: inout [Int]) {
            stack.append(start)
            while let pc = stack.popLast() {
                if mark[pc] == position { continue }
                mark[pc] = position
                switch self.program[pc] {
                case .jump(let target): stack.append(target)
                case .split(let a, let b):
                    stack.append(b)
                    stack.append(a)
                case .lineStart: if position == 0 { stack.append(pc + 1) }
                case .lineEnd: if position == input.count { stack.append(pc + 1) }
                case .match, .accept: list.append(pc)
                }
            }
        }

        addClosure(0, position: 0, into: &current)
        for (i, scalar) in input.enumerated() {
            next.removeAll(keepingCapacity: true)
            for pc in current {
                if case .match(let item) = self.program[pc], Self.matches(item, scalar.value) {
                    addClosure(pc + 1, position: i + 1, into: &next)
                }
            }
            swap(&current, &next)
            if current.isEmpty { return false }
        }
        return current.contains { if case .accept = self.program[$0] { true } else { false } }
    }

    private static func matches(_ item: Item, _ value: UInt32) -> Bool {
        switch item {
        case .any: return value != 0x0A
        case .set(let ranges, let negated): return ranges.contains { $0.contains(value) } != negated
        }
    }

    // MARK: Parsing

    private indirect enum Node {
        case empty
        case item(Item)
        case lineStart
        case lineEnd
        case concat([Node])
        case alternation([Node])
        case repeated(Node, min: Int, max: Int?)  // max nil: unbounded
    }

    private struct Parser {
        let scalars: [Unicode.Scalar]
        var index = 0
        var depth = 0

        func fail(_ reason: String) -> Unsupported {
            Unsupported(reason: "\(reason) at offset \(self.index)")
        }

        var atEnd: Bool { self.index >= self.scalars.count }
        var peek: Unicode.Scalar? { self.atEnd ? nil : self.scalars[self.index] }

        mutating func parseAll() throws(Unsupported) -> Node {
            let node = try self.parseAlternation()
            guard self.atEnd else { throw self.fail("unbalanced ')'") }
            return node
        }

        mutating func parseAlternation() throws(Unsupported) -> Node {
            var branches = [try self.parseConcat()]
            while self.peek == "|" {
                self.index += 1
                branches.append(try self.parseConcat())
            }
            return branches.count == 1 ? branches[0] : .alternation(branches)
        }

        mutating func parseConcat() throws(Unsupported) -> Node {
            var items: [Node] = []
            while let c = self.peek, c != "|", c != ")" {
                var atom = try self.parseAtom()
                while let q = self.peek, q == "*" || q == "+" || q == "?" || q == "{" {
                    if q == "{", !self.looksLikeCount() { break }
                    if case .lineStart = atom { throw self.fail("a quantifier after '^'") }
                    if case .lineEnd = atom { throw self.fail("a quantifier after '$'") }
                    let (min, max) = try self.parseQuantifier()
                    if self.peek == "?" {
                        self.index += 1  // lazy: the same set of full matches
                    } else if self.peek == "+" {
                        throw self.fail("possessive quantifiers are not supported")
                    }
                    atom = .repeated(atom, min: min, max: max)
                }
                items.append(atom)
            }
            return items.isEmpty ? .empty : items.count == 1 ? items[0] : .concat(items)
        }

        func looksLikeCount() -> Bool {
            // Python treats '{' that does not start a valid count as a literal.
            var i = self.index + 1
            var digits = 0
            while i < self.scalars.count, self.scalars[i].properties.numericType == .decimal, self.scalars[i].isASCII {
                i += 1
                digits += 1
            }
            if i < self.scalars.count, self.scalars[i] == "}" { return digits > 0 }
            guard i < self.scalars.count, self.scalars[i] == "," else { return false }
            i += 1
            while i < self.scalars.count, self.scalars[i].properties.numericType == .decimal, self.scalars[i].isASCII { i += 1 }
            return i < self.scalars.count && self.scalars[i] == "}"
        }

        mutating func parseQuantifier() throws(Unsupported) -> (Int, Int?) {
            let q = self.scalars[self.index]
            self.index += 1
            switch q {
            case "*": return (0, nil)
            case "+": return (1, nil)
            case "?": return (0, 1)
            default: break
            }
            let low = try self.parseNumber() ?? 0
            var high: Int? = low
            if self.peek == "," {
                self.index += 1
                high = try self.parseNumber()
            }
            self.index += 1  // '}' (checked by looksLikeCount)
            if let high, high < low { throw self.fail("a repeat range {m,n} with n < m") }
            return (low, high)
        }

        mutating func parseNumber() throws(Unsupported) -> Int? {
            var value: Int?
            while let c = self.peek, c.isASCII, let digit = Int(String(c)) {
                value = (value ?? 0) * 10 + digit
                if value! > TargetModulePattern.maxRepeat {
                    throw self.fail("a repeat count above \(TargetModulePattern.maxRepeat)")
                }
                self.index += 1
            }
            return value
        }

        mutating func parseAtom() throws(Unsupported) -> Node {
            let c = self.scalars[self.index]
            self.index += 1
            switch c {
            case "(":
                self.depth += 1
                guard self.depth <= 64 else { throw self.fail("groups nested more than 64 deep") }
                if self.peek == "?" {
                    self.index += 1
                    if self.peek == ":" {
                        self.index += 1
                    } else if self.peek == "P", self.index + 1 < self.scalars.count, self.scalars[self.index + 1] == "<" {
                        self.index += 2
                        while let n = self.peek, n != ">" {
                            guard n.properties.isAlphabetic || n == "_" || (n.isASCII && Int(String(n)) != nil) else {
                                throw self.fail("an invalid group name")
                            }
                            self.index += 1
                        }
                        guard self.peek == ">" else { throw self.fail("an unterminated group name") }
                        self.index += 1
                    } else {
                        throw self.fail("lookaround, inline flags and backreferences ('(?') are not supported")
                    }
                }
                let inner = try self.parseAlternation()
                guard self.peek == ")" else { throw self.fail("a missing ')'") }
                self.index += 1
                self.depth -= 1
                return inner
            case ")": throw self.fail("unbalanced ')'")
            case "[": return .item(try self.parseClass())
            case ".": return .item(.any)
            case "^": return .lineStart
            case "$": return .lineEnd
            case "*", "+", "?": throw self.fail("nothing to repeat")
            case "\\": return .item(try self.parseEscape(inClass: false))
            default: return .item(.set(ranges: [c.value...c.value], negated: false))
            }
        }

        mutating func parseEscape(inClass: Bool) throws(Unsupported) -> Item {
            guard let c = self.peek else { throw self.fail("a trailing backslash") }
            self.index += 1
            let digits: [ClosedRange<UInt32>] = [0x30...0x39]
            let word: [ClosedRange<UInt32>] = [0x30...0x39, 0x41...0x5A, 0x5F...0x5F, 0x61...0x7A]
            let space: [ClosedRange<UInt32>] = [0x09...0x0D, 0x20...0x20]
            switch c {
            case "d": return .set(ranges: digits, negated: false)
            case "D": return .set(ranges: digits, negated: true)
            case "w": return .set(ranges: word, negated: false)
            case "W": return .set(ranges: word, negated: true)
            case "s": return .set(ranges: space, negated: false)
            case "S": return .set(ranges: space, negated: true)
            case "n": return .set(ranges: [0x0A...0x0A], negated: false)
            case "t": return .set(ranges: [0x09...0x09], negated: false)
            default:
                // Escaped punctuation is a literal; letters and digits are other escapes
                // (backreferences, \b, \A, unicode names) that this matcher does not have.
                if c.isASCII, c.properties.isAlphabetic || c.properties.numericType != nil {
                    throw self.fail("the escape '\\\(c)' is not supported")
                }
                return .set(ranges: [c.value...c.value], negated: false)
            }
        }

        mutating func parseClass() throws(Unsupported) -> Item {
            var negated = false
            if self.peek == "^" {
                negated = true
                self.index += 1
            }
            var ranges: [ClosedRange<UInt32>] = []
            var first = true
            while true {
                guard let c = self.peek else { throw self.fail("an unterminated '['") }
                if c == "]" && !first { break }
                first = false
                self.index += 1
                var low: UInt32
                if c == "\\" {
                    let item = try self.parseEscape(inClass: true)
                    guard case .set(let r, let neg) = item, !neg, r.count == 1, r[0].lowerBound == r[0].upperBound else {
                        if case .set(let r, false) = item { ranges += r } else { throw self.fail("a negated escape in a class") }
                        continue
                    }
                    low = r[0].lowerBound
                } else {
                    if c == "[", self.peek == ":" { throw self.fail("POSIX classes are not supported") }
                    low = c.value
                }
                if self.peek == "-", self.index + 1 < self.scalars.count, self.scalars[self.index + 1] != "]" {
                    self.index += 1
                    var high = self.scalars[self.index].value
                    self.index += 1
                    if high == 0x5C {  // backslash
                        let item = try self.parseEscape(inClass: true)
                        guard case .set(let r, false) = item, r.count == 1, r[0].lowerBound == r[0].upperBound else {
                            throw self.fail("a class range ending in a class escape")
                        }
                        high = r[0].lowerBound
                    }
                    guard low <= high else { throw self.fail("a reversed class range") }
                    ranges.append(low...high)
                } else {
                    ranges.append(low...low)
                }
            }
            self.index += 1  // ']'
            return .set(ranges: ranges, negated: negated)
        }
    }

    // MARK: Compiling

    private struct Compiler {
        var program: [Instruction] = []
        /// Nodes emitted: bounds compile time even for repeats of empty groups.
        var work = 0

        mutating func emit(_ node: Node) throws(Unsupported) {
            self.work += 1
            guard self.program.count <= TargetModulePattern.maxInstructions, self.work <= 4 * TargetModulePattern.maxInstructions
            else {
                throw Unsupported(reason: "the pattern is too complex (more than \(TargetModulePattern.maxInstructions) states)")
            }
            switch node {
            case .empty: break
            case .item(let item): self.program.append(.match(item))
            case .lineStart: self.program.append(.lineStart)
            case .lineEnd: self.program.append(.lineEnd)
            case .concat(let nodes):
                for n in nodes { try self.emit(n) }
            case .alternation(let branches):
                // split L1, next; L1: branch; jump end; next: split ...
                var jumps: [Int] = []
                for (i, branch) in branches.enumerated() {
                    if i < branches.count - 1 {
                        let split = self.program.count
                        self.program.append(.split(split + 1, -1))
                        try self.emit(branch)
                        jumps.append(self.program.count)
                        self.program.append(.jump(-1))
                        self.program[split] = .split(split + 1, self.program.count)
                    } else {
                        try self.emit(branch)
                    }
                }
                for j in jumps { self.program[j] = .jump(self.program.count) }
            case .repeated(let inner, let min, let max):
                for _ in 0..<min { try self.emit(inner) }
                if let max {
                    // Optional copies: split body, end (nested so each copy is optional).
                    var splits: [Int] = []
                    for _ in min..<max {
                        splits.append(self.program.count)
                        self.program.append(.split(self.program.count + 1, -1))
                        try self.emit(inner)
                    }
                    for s in splits { self.program[s] = .split(s + 1, self.program.count) }
                } else {
                    let loop = self.program.count
                    self.program.append(.split(loop + 1, -1))
                    try self.emit(inner)
                    self.program.append(.jump(loop))
                    self.program[loop] = .split(loop + 1, self.program.count)
                }
            }
        }
    }
}
