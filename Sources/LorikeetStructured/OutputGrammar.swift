/// What a constrained generation must spell, compiled from a JSON schema, from
/// `json_object`, or from a list of choices (vLLM's `structured_outputs` / `guided_*`,
/// OpenAI's `response_format`).
///
/// Nodes refer to each other by index, so a `$ref` can be recursive. The matcher
/// (`GrammarMatcher`) walks it byte by byte.
package struct OutputGrammar: Sendable, Equatable {
    /// One kind of value.
    package enum Node: Sendable, Equatable {
        /// Any JSON value (nested at most `Limits.structuredNestingDepth` deep).
        case anyValue
        /// An object: each known property at most once, in any order; `required` is a bit
        /// set over `properties`; `additional` is the node of other members' values (their
        /// keys are any string), nil when no other member is allowed.
        case object(properties: [Property], required: UInt64, additional: Int?)
        /// An array of `items`, with `minItems`…`maxItems` entries (nil = no upper bound).
        case array(items: Int, minItems: Int, maxItems: Int?)
        /// A JSON string of `minLength`…`maxLength` characters (an escape counts as one).
        case string(minLength: Int, maxLength: Int?)
        /// Exactly one of these byte sequences (`enum`, `const`, `true`/`false`/`null`, or
        /// the raw text of `guided_choice`).
        case literals([[UInt8]])
        /// A JSON number without a fraction or exponent.
        case integer
        /// A JSON number.
        case number
        /// Any one of these nodes.
        case anyOf([Int])
    }

    /// A known property of an object node.
    package struct Property: Sendable, Equatable {
        /// The name's UTF-8 bytes.
        package var name: [UInt8]
        /// The key as it appears in the document, quotes included (`"name"`).
        package var quotedKey: [UInt8]
        /// The node of its value.
        package var value: Int
    }

    /// Every node; `root` is the document's.
    package var nodes: [Node]
    /// The node the whole document is.
    package var root: Int
    /// False for `guided_choice`: the document is raw text (no JSON whitespace around it).
    package var isJSON: Bool
    /// The nodes `anyValue` dispatches to for `{` and `[` (an object or array of any values).
    package var anyObject: Int
    package var anyArray: Int
    /// Per node, the nodes that are not `anyOf` its value can be (its `anyOf`s flattened,
    /// each once): a value starts as one of them. Empty when it can be none (a `$ref` cycle).
    package private(set) var leaves: [[Int]] = []
    /// Per node, the fewest containers (`{`/`[`) a value of it must open, nested, to be
    /// complete (`Int.max`: it can never be, e.g. an object that requires itself).
    package private(set) var minimumDepth: [Int] = []

    /// A grammar of `nodes`, with its derived tables.
    package init(nodes: [Node], root: Int, isJSON: Bool, anyObject: Int, anyArray: Int) {
        self.nodes = nodes
        self.root = root
        self.isJSON = isJSON
        self.anyObject = anyObject
        self.anyArray = anyArray
        self.leaves = nodes.indices.map(self.flattened)
        self.minimumDepth = self.depths()
    }

    /// The grammar of exactly one of `choices`, as raw text (vLLM's `guided_choice`).
    package static func choice(_ choices: [String]) -> OutputGrammar {
        OutputGrammar(nodes: [.literals(choices.map { Array($0.utf8) })], root: 0, isJSON: false, anyObject: 0, anyArray: 0)
    }

    /// The non-`anyOf` nodes reachable from `node` through `anyOf`s, each once, in order.
    private func flattened(_ node: Int) -> [Int] {
        var seen = Set<Int>()
        var leaves: [Int] = []
        var pending = [node]
        while let next = pending.popLast() {
            guard seen.insert(next).inserted else { continue }
            if case .anyOf(let alternatives) = self.nodes[next] {
                pending += alternatives.reversed()
            } else {
                leaves.append(next)
            }
        }
        return leaves
    }

    /// `minimumDepth` by fixpoint: start from "never", lower until nothing changes (the
    /// nodes form a graph with cycles through `$ref`).
    private func depths() -> [Int] {
        var depth = [Int](repeating: Int.max, count: self.nodes.count)
        func plusOne(_ value: Int) -> Int { value == Int.max ? Int.max : value + 1 }
        var changed = true
        while changed {
            changed = false
            for (index, node) in self.nodes.enumerated() {
                let value: Int
                switch node {
                case .anyValue, .string, .literals, .integer, .number: value = 0
                case .object(let properties, let required, _):
                    var deepest = 0
                    for (offset, property) in properties.enumerated() where required & (1 << UInt64(offset)) != 0 {
                        deepest = max(deepest, depth[property.value])
                    }
                    value = plusOne(deepest)
                case .array(let items, let minItems, _): value = plusOne(minItems > 0 ? depth[items] : 0)
                case .anyOf(let alternatives): value = alternatives.map { depth[$0] }.min() ?? Int.max
                }
                if value < depth[index] {
                    depth[index] = value
                    changed = true
                }
            }
        }
        return depth
    }
}
