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

    /// The grammar of exactly one of `choices`, as raw text (vLLM's `guided_choice`).
    package static func choice(_ choices: [String]) -> OutputGrammar {
        OutputGrammar(nodes: [.literals(choices.map { Array($0.utf8) })], root: 0, isJSON: false, anyObject: 0, anyArray: 0)
    }
}
