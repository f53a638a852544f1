import Foundation
import LorikeetTestSupport
import Testing

@testable import LorikeetEngine

/// The sampler against `sampling.json`, written by `Tests/Fixtures/make_tiny_llama.py`:
/// vLLM's formulas re-implemented in numpy (`vllm_process`, `vllm_filter`, `log_softmax`)
/// on the fixture model's reference logits, never derived from the Swift code.
@Suite("Sampling against numpy re-implementations of vLLM's formulas", .ownThreads)
struct SamplingTests {
    struct Reference: Decodable {
        struct Position: Decodable {
            var token: UInt32
            var logprob: Double
            var top: [[Double]]
        }
        struct Processed: Decodable {
            var name: String
            var min_tokens: Int
            var bias: [[Double]]
            var repetition_penalty: Float
            var frequency_penalty: Float
            var presence_penalty: Float
            var masked: [Int]
            var logits: [Float]
        }
        struct Filter: Decodable {
            var temperature: Float
            var min_p: Float
            var top_k: Int
            var top_p: Float
            var kept: [Int]
            var probs: [Double]
        }
        struct PenalizedGreedy: Decodable {
            var min_tokens: Int
            var bias: [[Double]]
            var repetition_penalty: Float
            var frequency_penalty: Float
            var presence_penalty: Float
            var tokens: [UInt32]
        }
        var prompt_logprobs: [Position]
        var greedy_logprobs: [Position]
        var output_tokens: [UInt32]
        var processed: [Processed]
        var filters: [Filter]
        var penalized_greedy: PenalizedGreedy
    }

    static func reference() throws -> Reference {
        let data = try Data(contentsOf: URL(fileURLWithPath: try Fixture.directory() + "/sampling.json"))
        return try JSONDecoder().decode(Reference.self, from: data)
    }

    static func bias(_ pairs: [[Double]]) -> [UInt32: Float] {
        Dictionary(uniqueKeysWithValues: pairs.map { (UInt32($0[0]), Float($0[1])) })
    }

    static func expectClose(_ got: TokenLogprobs, _ want: Reference.Position, _ label: String) {
        #expect(got.chosen.tokenID == want.token, "\(label)")
        #expect(abs(Double(got.chosen.logprob) - want.logprob) < 1e-4, "\(label): \(got.chosen.logprob) vs \(want.logprob)")
        #expect(got.top.map(\.tokenID) == want.top.map { UInt32($0[0]) }, "\(label)")
        for (g, w) in zip(got.top, want.top) {
            #expect(abs(Double(g.logprob) - w[1]) < 1e-4, "\(label): top \(g.tokenID) \(g.logprob) vs \(w[1])")
        }
    }

    @Test("min_tokens, logit_bias and the penalties give vLLM's processed logits")
    func processedLogits() throws {
        let ref = try Self.reference()
        let base = try Fixture.reference()
        let logits = try #require(base.cases["base"]).logits
        for c in ref.processed {
            let params = SamplingParams(
                presencePenalty: c.presence_penalty, frequencyPenalty: c.frequency_penalty,
                repetitionPenalty: c.repetition_penalty, logitBias: Self.bias(c.bias), minTokens: c.min_tokens)
            var sampler = Sampler(params, prompt: base.promptTokens, eosTokenIDs: [257])
            for token in ref.output_tokens { sampler.record(token) }
            var l = logits
            sampler.process(&l)
            let masked = l.indices.filter { l[$0] == -.infinity }
            #expect(masked == c.masked, "\(c.name)")
            for i in l.indices where l[i] > -.infinity {
                #expect(abs(l[i] - c.logits[i]) < 1e-4, "\(c.name): token \(i): \(l[i]) vs \(c.logits[i])")
            }
        }
    }

    @Test("temperature, min_p, top-k and top-p keep vLLM's tokens with vLLM's probabilities")
    func filters() throws {
        let ref = try Self.reference()
        let logits = try #require(try Fixture.reference().cases["base"]).logits
        for f in ref.filters {
            var sampler = Sampler(SamplingParams(temperature: f.temperature, topP: f.top_p, topK: f.top_k, minP: f.min_p))
            var l = logits
            let filtered = sampler.filter(&l)
            let (m, total) = try #require(filtered)
            let kept = l.indices.filter { l[$0] > -.infinity }
            let label = "T=\(f.temperature) min_p=\(f.min_p) k=\(f.top_k) p=\(f.top_p)"
            #expect(kept == f.kept, "\(label)")
            for (i, p) in zip(kept, f.probs) {
                #expect(abs(exp(Double(l[i]) - m) / total - p) < 1e-5, "\(label): token \(i)")
            }
        }
    }

    @Test("draws stay within the filtered set, and a seed repeats them")
    func drawsAreFilteredAndSeeded() throws {
        let ref = try Self.reference()
        let logits = try #require(try Fixture.reference().cases["base"]).logits
        let f = try #require(ref.filters.first(where: { $0.top_k == 20 }))
        let params = SamplingParams(temperature: f.temperature, topP: f.top_p, topK: f.top_k, minP: f.min_p, seed: 42)
        var a = Sampler(params)
        var b = Sampler(params)
        var seen = Set<UInt32>()
        for _ in 0..<300 {
            let token = a.sample(logits)
            #expect(b.sample(logits) == token)
            seen.insert(token)
        }
        #expect(seen.isSubset(of: Set(f.kept.map { UInt32($0) })))
        #expect(seen.count > 1)
    }

    @Test("kthLargest agrees with a sort, ties included", arguments: [1, 2, 5, 37, 100])
    func kthLargest(k: Int) {
        var rng = Xoshiro256(seed: UInt64(k))
        var values = (0..<100).map { _ in Float(Int(rng.nextUnit() * 20)) }
        let sorted = values.sorted(by: >)
        #expect(Sampler.kthLargest(&values, k) == sorted[k - 1])
    }

    @Test("greedy with every processor on decodes numpy's tokens")
    func penalizedGreedy() async throws {
        let ref = try Self.reference().penalized_greedy
        let core = try Fixture.engine()
        let out = await core.complete(
            GenerationRequest(
                id: "pen", prompt: .tokens(try Fixture.reference().promptTokens),
                params: SamplingParams(
                    maxTokens: ref.tokens.count, presencePenalty: ref.presence_penalty,
                    frequencyPenalty: ref.frequency_penalty, repetitionPenalty: ref.repetition_penalty,
                    logitBias: Self.bias(ref.bias), minTokens: ref.min_tokens, ignoreEOS: true)))
        #expect(out.tokens == ref.tokens)
    }

    @Test("log probabilities of generated and prompt tokens are numpy's log-softmax")
    func logprobs() async throws {
        let ref = try Self.reference()
        let core = try Fixture.engine()
        let prompt = try Fixture.reference().promptTokens
        var generated: [TokenLogprobs] = []
        var promptLogprobs: [TokenLogprobs]?
        var tokens: [UInt32] = []
        for await event in core.generate(
            GenerationRequest(
                id: "lp", prompt: .tokens(prompt),
                params: SamplingParams(maxTokens: ref.greedy_logprobs.count, ignoreEOS: true, logprobs: 5, promptLogprobs: 5)))
        {
            #expect(event.logprobs.count == event.tokens.count)
            generated += event.logprobs
            tokens += event.tokens
            if let p = event.promptLogprobs {
                #expect(promptLogprobs == nil, "prompt log probabilities sent twice")
                promptLogprobs = p
            }
        }
        #expect(tokens == ref.greedy_logprobs.map(\.token))
        #expect(generated.count == ref.greedy_logprobs.count)
        for (i, (g, w)) in zip(generated, ref.greedy_logprobs).enumerated() { Self.expectClose(g, w, "step \(i)") }
        let p = try #require(promptLogprobs)
        #expect(p.count == prompt.count)
        #expect(p.first?.chosen.tokenID == prompt[0])
        for (i, (g, w)) in zip(p.dropFirst(), ref.prompt_logprobs).enumerated() { Self.expectClose(g, w, "prompt \(i + 1)") }
    }

    @Test("prompt log probabilities survive a prefill split into chunks")
    func promptLogprobsAcrossChunks() async throws {
        let core = try Fixture.engine()
        // 150 tokens: more than the 64-token prefill budget, so three chunks.
        let prompt: [UInt32] = [256] + (0..<149).map { UInt32(65 + $0 % 26) }
        var got: [TokenLogprobs]?
        for await event in core.generate(
            GenerationRequest(id: "chunks", prompt: .tokens(prompt), params: SamplingParams(maxTokens: 1, promptLogprobs: 0)))
        {
            if let p = event.promptLogprobs { got = p }
        }
        let p = try #require(got)
        #expect(p.map(\.chosen.tokenID) == prompt)
        #expect(p.dropFirst().allSatisfy { $0.chosen.logprob <= 0 && $0.top.isEmpty })
    }

    @Test("identical prompts running together share one prefill, and each gives what it gives alone")
    func sharedPrefill() async throws {
        let core = try Fixture.engine()
        let prompt = PromptInput.text(String(repeating: "The quick brown fox jumps over the lazy dog. ", count: 3))
        let length = core.promptTokens(prompt).count
        func request(_ id: String, seed: UInt64) -> GenerationRequest {
            GenerationRequest(id: id, prompt: prompt, params: SamplingParams(maxTokens: 8, temperature: 1, seed: seed, ignoreEOS: true))
        }
        var alone: [Completion] = []
        for seed in UInt64(1)...3 { alone.append(await core.complete(request("alone-\(seed)", seed: seed))) }
        #expect(core.sharedPromptTokens == 0, "one at a time: nothing to share")
        // Queued together: the first computes the prompt, the other two wait for it.
        let streams = try await core.admittedTogether { (UInt64(1)...3).map { core.generate(request("together-\($0)", seed: $0)) } }
        var together: [UInt64: Completion] = [:]
        for (offset, stream) in streams.enumerated() {
            var completion = Completion()
            for await event in stream { completion.tokens += event.tokens }
            together[UInt64(offset + 1)] = completion
        }
        for seed in UInt64(1)...3 {
            #expect(together[seed]?.tokens == alone[Int(seed) - 1].tokens, "seed \(seed)")
        }
        // One computes the prompt; two copy all but its last position.
        #expect(core.sharedPromptTokens == 2 * (length - 1), "shared \(core.sharedPromptTokens) of \(length)-token prompts")
    }

    @Test("skip_special_tokens: false renders control tokens' text; the final EOS only with include_stop_str_in_output")
    func specialTokens() async throws {
        let core = try Fixture.engine()
        func run(skip: Bool, includeStop: Bool = false, bias: [UInt32: Float]) async -> Completion {
            var params = SamplingParams(maxTokens: 3, temperature: 0, logitBias: bias, includeStopStrInOutput: includeStop)
            params.skipSpecialTokens = skip
            return await core.complete(GenerationRequest(id: "special-\(skip)-\(includeStop)", prompt: .text("x"), params: params))
        }
        // BOS (256) forced three times: nothing by default, "<s>" each time without skipping.
        #expect(await run(skip: true, bias: [256: 100]).text == "")
        #expect(await run(skip: false, bias: [256: 100]).text == "<s><s><s>")
        // EOS (257) forced: it ends the text, which holds it only with include_stop_str_in_output.
        #expect(await run(skip: false, bias: [257: 100]).text == "")
        #expect(await run(skip: false, includeStop: true, bias: [257: 100]).text == "</s>")
        #expect(await run(skip: true, includeStop: true, bias: [257: 100]).text == "")
    }

    @Test("bad_words: a word's last token never follows its other tokens; a one-token word never appears")
    func badWords() async throws {
        let core = try Fixture.engine()
        let prompt = PromptInput.text("The quick brown fox")
        let count = 60
        func run(_ id: String, _ words: [String]) async -> Completion {
            await core.complete(
                GenerationRequest(
                    id: id, prompt: prompt,
                    params: SamplingParams(
                        maxTokens: count, temperature: 0, ignoreEOS: true,
                        badWordTokenIDs: BadWords.tokenIDs(words, tokenizer: core.tokenizer))))
        }
        let free = await run("free", [])
        #expect(free.tokens.count == count)
        // Byte tokens: a word of two printable ASCII characters is two tokens.
        let printable = { (token: UInt32) in (0x21...0x7E).contains(token) }
        let at = try #require(
            (0..<(count - 1)).first { printable(free.tokens[$0]) && printable(free.tokens[$0 + 1]) },
            "the greedy text has two printable characters in a row: \(free.text.debugDescription)")
        let word = String(decoding: free.tokens[at...(at + 1)].map { UInt8($0) }, as: UTF8.self)
        let banned = await run("banned", [word])
        #expect(banned.tokens[...at] == free.tokens[...at], "the prefix alone is not banned")
        #expect(banned.tokens[at + 1] != free.tokens[at + 1], "its last token is, right after it")
        #expect(!banned.text.contains(word), "\(word.debugDescription) in \(banned.text.debugDescription)")
        let single = String(decoding: [UInt8(free.tokens[at])], as: UTF8.self)
        let never = await run("never", [single])
        #expect(!never.tokens.contains(free.tokens[at]))
        // Leading whitespace is stripped (vLLM's lstrip); a space before a byte-level word
        // changes its length, so only the plain sequence is banned.
        #expect(BadWords.tokenIDs(["ab"], tokenizer: core.tokenizer) == [[97, 98]])
        #expect(BadWords.tokenIDs(["\n ab"], tokenizer: core.tokenizer) == [[97, 98]])
        #expect(BadWords.tokenIDs([" "], tokenizer: core.tokenizer).isEmpty)
    }

    @Test("include_stop_str_in_output keeps the stop string; the default cuts it")
    func includeStopString() {
        var cut = StopStringMatcher(["STOP"])
        var kept = StopStringMatcher(["STOP"], includeStop: true)
        #expect(cut.feed("abcST").emit == "abc")
        #expect(cut.feed("OPxyz") == ("", true))
        #expect(kept.feed("abcST").emit == "abc")
        #expect(kept.feed("OPxyz") == ("STOP", true))
    }

    @Test("generation_config.json's sampling keys become the defaults; others are ignored")
    func generationDefaults() {
        let d = GenerationDefaults(
            json: Array(#"{"temperature": 0.6, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.1, "min_p": 7, "x": 1}"#.utf8))
        #expect(d.temperature == 0.6 && d.topP == 0.9 && d.topK == 50 && d.repetitionPenalty == 1.1 && d.minP == nil)
        #expect(GenerationDefaults(json: Array("not json".utf8)) == GenerationDefaults())
    }

    @Test("out-of-range processors and out-of-vocabulary logit_bias are refused naming the field")
    func refusals() throws {
        let cases: [(SamplingParams, String)] = [
            (SamplingParams(minP: 1.5), "min_p"),
            (SamplingParams(presencePenalty: 3), "presence_penalty"),
            (SamplingParams(frequencyPenalty: -2.5), "frequency_penalty"),
            (SamplingParams(repetitionPenalty: 0), "repetition_penalty"),
            (SamplingParams(logitBias: [258: 1]), "logit_bias"),
            (SamplingParams(logitBias: [3: 101]), "logit_bias"),
            (SamplingParams(maxTokens: 4, minTokens: 5), "min_tokens"),
            (SamplingParams(logprobs: 21), "logprobs"),
        ]
        for (params, field) in cases {
            #expect(throws: EngineError.self) { try EngineCore.check(params, vocabSize: 258) }
            do {
                try EngineCore.check(params, vocabSize: 258)
            } catch {
                #expect(error.param == field)
            }
        }
    }
}
