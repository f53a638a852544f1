import Foundation
import LorikeetJSON
import LorikeetStructured
import LorikeetTestSupport
import Testing

@testable import LorikeetEngine

/// Structured output through the scheduler: the fixture model (random weights, byte
/// tokens) would never write JSON by itself, so every document it finishes shows the mask
/// at work; the default model shows what a user sees.
@Suite("Structured output in the engine (grammar-masked sampling)", .ownThreads)
struct StructuredOutputTests {
    static let personSchema = #"""
        {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
         "age": {"type": "integer"}, "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 3}},
         "required": ["name", "age"]}
        """#

    static func grammar(_ schema: String) throws -> OutputGrammar {
        try #require(try StructuredConstraint.grammar(jsonSchema: schema, choices: []))
    }

    /// Checks `text` against the person schema with Foundation's parser.
    static func checkPerson(_ text: String) throws {
        guard let parsed = try? JSONSerialization.jsonObject(with: Data(text.utf8)) else {
            Issue.record("not JSON: \(text.debugDescription)")
            return
        }
        let object = try #require(parsed as? [String: Any], "\(text)")
        let name = try #require(object["name"] as? String, "\(text)")
        #expect(name.count <= 12)
        #expect(object["age"] is Int, "\(text)")
        #expect(Set(object.keys).isSubset(of: ["name", "age", "pets"]), "\(text)")
        if let pets = object["pets"] {
            let list = try #require(pets as? [String])
            #expect(list.count <= 3 && list.allSatisfy { $0 == "cat" || $0 == "dog" })
        }
    }

    @Test(
        "a JSON schema: greedy, temperature alone (rejection path) and top-p (mask path) all finish a valid document",
        arguments: [(Float(0), Float(1)), (Float(1), Float(1)), (Float(1.2), Float(0.9))])
    func schemaOnFixture(temperature: Float, topP: Float) async throws {
        let core = try Fixture.engine()
        for seed in UInt64(1)...3 {
            let out = await core.complete(
                GenerationRequest(
                    id: "s\(seed)", prompt: .text("person:"),
                    params: SamplingParams(
                        maxTokens: 200, temperature: temperature, topP: topP, seed: seed,
                        grammar: try Self.grammar(Self.personSchema))))
            #expect(out.error == nil)
            // Random weights may run out of tokens inside a long string; a finished document is valid.
            if out.finishReason == .stop {
                try Self.checkPerson(out.text)
            } else {
                print("unfinished \(out.finishReason.map { "\($0)" } ?? "-") \(out.text.debugDescription)")
            }
            let followed = GrammarMatcher(try Self.grammar(Self.personSchema)).accepts(Array(out.text.utf8))
            #expect(followed, "every token followed the schema: \(out.text.debugDescription)")
        }
    }

    @Test("guided_choice: the output is one of the choices, and generation ends there")
    func choiceOnFixture() async throws {
        let core = try Fixture.engine()
        let choices = ["alpha", "beta", "gamma delta"]
        for seed in UInt64(1)...4 {
            let out = await core.complete(
                GenerationRequest(
                    id: "c\(seed)", prompt: .text("pick:"),
                    params: SamplingParams(maxTokens: 50, temperature: 1, seed: seed, grammar: .choice(choices))))
            #expect(choices.contains(out.text), "\(out.text.debugDescription)")
            #expect(out.finishReason == .stop)
        }
    }

    @Test("the default model, JSON mode at temperature 1: 50 different prompts; every finished answer is a JSON object")
    func fiftyPromptsAtTemperatureOne() async throws {
        let core = try SmolLM.engine()
        let topics = [
            "a city", "a book", "a planet", "a recipe", "a car", "a song", "a country", "a movie", "a tree", "a bird",
        ]
        let asks = ["Describe", "Give facts about", "List properties of", "Summarize", "Invent"]
        let prompts = asks.flatMap { ask in topics.map { "\(ask) \($0) as a JSON object." } }
        #expect(prompts.count == 50)
        let grammar = try Self.grammar(StructuredConstraint.jsonObjectSchema)
        let answers = await withTaskGroup(of: (String, Completion).self) { group in
            for (index, prompt) in prompts.enumerated() {
                group.addTask {
                    let answer = await core.complete(
                        GenerationRequest(
                            id: "json-\(index)", prompt: .chat([ChatTurn(role: "user", content: prompt)]),
                            params: SamplingParams(maxTokens: 200, temperature: 1, seed: UInt64(index), grammar: grammar)))
                    return (prompt, answer)
                }
            }
            var all: [(String, Completion)] = []
            for await answer in group { all.append(answer) }
            return all
        }
        var lengths: [Int] = []
        var finished = 0
        for (prompt, answer) in answers {
            #expect(answer.error == nil)
            lengths.append(answer.tokens.count)
            if answer.finishReason == .stop {
                // Finished: a JSON object, read by Foundation's parser (not our matcher).
                finished += 1
                let parsed = try? JSONSerialization.jsonObject(with: Data(answer.text.utf8))
                #expect(parsed is [String: Any], "\(prompt): \(answer.text.debugDescription)")
            } else {
                // Out of tokens (a 135M model at T=1 rambles inside strings): a valid prefix.
                #expect(answer.finishReason == .length)
                #expect(GrammarMatcher(grammar).accepts(Array(answer.text.utf8)), "\(prompt): \(answer.text.debugDescription)")
            }
        }
        #expect(finished >= 25, "\(finished) of 50 finished within 200 tokens")
        print("50 JSON-mode answers at T=1: \(finished) finished, tokens min \(lengths.min() ?? 0), max \(lengths.max() ?? 0)")
    }

    @Test("the default model: JSON mode and a schema give parseable JSON through the chat template")
    func defaultModel() async throws {
        let core = try SmolLM.engine()
        let clock = ContinuousClock()
        let start = clock.now
        let person = await core.complete(
            GenerationRequest(
                id: "person",
                prompt: .chat([ChatTurn(role: "user", content: "Describe a person called Ada who is 36, as JSON.")]),
                params: SamplingParams(maxTokens: 120, temperature: 0, grammar: try Self.grammar(Self.personSchema))))
        print("schema answer \(person.text.debugDescription) (\(person.tokens.count) tokens) in \(clock.now - start)")
        #expect(person.finishReason == .stop)
        try Self.checkPerson(person.text)

        let free = await core.complete(
            GenerationRequest(
                id: "free", prompt: .chat([ChatTurn(role: "user", content: "Give the capital of France as JSON.")]),
                params: SamplingParams(
                    maxTokens: 120, temperature: 0,
                    grammar: try Self.grammar(StructuredConstraint.jsonObjectSchema))))
        print("json_object answer \(free.text.debugDescription)")
        if free.finishReason == .stop {
            #expect(try JSONSerialization.jsonObject(with: Data(free.text.utf8)) is [String: Any], "\(free.text)")
        } else {
            let followed = GrammarMatcher(try Self.grammar(StructuredConstraint.jsonObjectSchema)).accepts(Array(free.text.utf8))
            #expect(followed, "\(free.text)")
        }
    }
}
