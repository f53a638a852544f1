import Dispatch
import Foundation
import LorikeetEngine
import LorikeetGGUF
import LorikeetStructured
import Synchronization

/// `--model smollm2`: the default model (SmolLM2-135M-Instruct Q4_1) through the whole
/// engine (scheduler thread, sampler, detokenizer): time to first token for a 100-token
/// prompt and greedy decode tokens/s, at each thread count. Writes the numbers and the
/// prompt token ids as JSON for bin/bench-engine, which runs llama.cpp on the same ids.
enum SmolLM2Bench {
    struct Result: Codable {
        var threads: Int
        var ttftMs: Double
        var decodeTokensPerSecond: Double
    }

    struct Report: Codable {
        var model: String
        var promptTokens: [UInt32]
        var decodeTokens: Int
        var storage: String
        var weightMiB: Double
        var loadSeconds: Double
        var rssMiB: Double
        var results: [Result]
    }

    static let promptText = """
        The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined \
        movable metal type, oil-based inks and a wooden screw press adapted from wine making. Within a few \
        decades, print shops had spread across Europe, books became cheaper, literacy rose, and the rapid \
        exchange of ideas helped to fuel the Renaissance, the Reformation and the Scientific Revolution. \
        Historians still debate how quickly these changes happened and which of them mattered most.
        """

    static func run(modelFile: String, threadCounts: [Int], decodeTokens: Int, storage: WeightStorage, json: String?) throws {
        let clock = ContinuousClock()
        let start = clock.now
        let base = try EngineCore.open(modelPath: modelFile, options: EngineOptions(threads: 1), storage: storage)
        let loadSeconds = Double((clock.now - start).components.attoseconds) / 1e18 + Double((clock.now - start).components.seconds)
        base.shutdown()
        var prompt = base.tokenizer.encode(Self.promptText)
        while prompt.count < 100 { prompt += prompt }
        prompt = Array(prompt.prefix(100))
        let weights = base.model.weights
        var bytes = weights.embedTokens.byteCount
        for layer in weights.layers {
            bytes += layer.linear.reduce(0) { $0 + $1.byteCount } + 2 * weights.config.hiddenSize * 4
        }
        let weightMiB = Double(bytes) / 1_048_576
        print(
            "SmolLM2-135M-Instruct Q4_1, weights \(storage.rawValue) (\(String(format: "%.0f", weightMiB)) MiB), "
                + "loaded in \(String(format: "%.2f", loadSeconds)) s; prompt \(prompt.count) tokens, \(decodeTokens) decode tokens; kernels \(EngineCore.kernels)"
        )
        var results: [Result] = []
        for threads in threadCounts {
            // The prefix cache off: every round computes the whole prompt (what llama.cpp's
            // side measures), and the cache has its own comparison below.
            let core = EngineCore(
                weights: weights, tokenizer: base.tokenizer,
                options: EngineOptions(threads: threads, modelName: "SmolLM2-135M-Instruct", prefixCacheMiB: 0))
            _ = try Self.once(core, prompt: prompt, tokens: 8, tag: "warmup-\(threads)")
            var best: Result?
            for round in 0..<3 {
                let (ttft, rate) = try Self.once(core, prompt: prompt, tokens: decodeTokens, tag: "t\(threads)-\(round)")
                let r = Result(
                    threads: threads, ttftMs: min(ttft, best?.ttftMs ?? .infinity),
                    decodeTokensPerSecond: max(rate, best?.decodeTokensPerSecond ?? 0))
                best = r
            }
            results.append(best!)
            print(
                "lorikeet  threads \(threads): TTFT \(String(format: "%.1f", best!.ttftMs)) ms (100-token prompt), "
                    + "decode \(String(format: "%.1f", best!.decodeTokensPerSecond)) tokens/s (best of 3)")
            try Self.samplingOverhead(core, prompt: prompt, tokens: decodeTokens, threads: threads)
            core.shutdown()
            try Self.prefixCache(weights: weights, tokenizer: base.tokenizer, threads: threads)
        }
        let report = Report(
            model: "SmolLM2-135M-Instruct.Q4_1.gguf", promptTokens: prompt, decodeTokens: decodeTokens,
            storage: storage.rawValue, weightMiB: weightMiB, loadSeconds: loadSeconds, rssMiB: Self.peakRSSMiB(),
            results: results)
        print("peak RSS \(String(format: "%.0f", report.rssMiB)) MiB")
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(report).write(to: URL(fileURLWithPath: json))
        }
    }

    /// An object with one long string: a document the benchmark's tokens stay inside.
    static let longText = try? StructuredConstraint.grammar(
        jsonSchema: #"{"type":"object","properties":{"text":{"type":"string","maxLength":100000}},"required":["text"]}"#, choices: [])

    /// Decode tokens/s of sampling variants against greedy, interleaved round by round in
    /// the same run (best of 3 each): log probabilities (top 5 of the 49,152-token
    /// vocabulary), temperature 1 with top-p 0.9 (the selection without a full sort), both,
    /// and structured output (a JSON schema) greedy and with top-p.
    static func samplingOverhead(_ core: EngineCore, prompt: [UInt32], tokens: Int, threads: Int) throws {
        let variants: [(String, SamplingParams)] = [
            ("greedy", SamplingParams(maxTokens: tokens, temperature: 0, ignoreEOS: true)),
            ("greedy, logprobs 5", SamplingParams(maxTokens: tokens, temperature: 0, ignoreEOS: true, logprobs: 5)),
            ("T=1 top_p 0.9", SamplingParams(maxTokens: tokens, temperature: 1, topP: 0.9, seed: 1, ignoreEOS: true)),
            (
                "T=1 top_p 0.9, logprobs 5",
                SamplingParams(maxTokens: tokens, temperature: 1, topP: 0.9, seed: 1, ignoreEOS: true, logprobs: 5)
            ),
            // Structured output, inside one long string (so the document does not end first):
            // greedy checks the best token against the grammar; top-p masks the whole vocabulary.
            ("json_schema, greedy", SamplingParams(maxTokens: tokens, temperature: 0, ignoreEOS: true, grammar: Self.longText)),
            (
                "json_schema, T=1 top_p 0.9",
                SamplingParams(maxTokens: tokens, temperature: 1, topP: 0.9, seed: 1, ignoreEOS: true, grammar: Self.longText)
            ),
        ]
        var best = [Double](repeating: 0, count: variants.count)
        for round in 0..<3 {
            for (i, variant) in variants.enumerated() {
                let (_, rate) = try Self.once(
                    core, prompt: prompt, tokens: tokens, tag: "s\(threads)-\(round)-\(i)", params: variant.1)
                best[i] = max(best[i], rate)
            }
        }
        for (i, variant) in variants.enumerated() {
            print(
                "          threads \(threads): \(variant.0.padding(toLength: 26, withPad: " ", startingAt: 0)) "
                    + "\(String(format: "%6.1f", best[i])) tokens/s, \(String(format: "%.3f", best[i] / best[0])) × greedy")
        }
    }

    /// Time to first token of a request whose 500-token system prompt an earlier request
    /// (with another question) already had, with the prefix cache and without, interleaved
    /// round by round (best of 3 each).
    static func prefixCache(weights: LlamaWeights, tokenizer: any EngineTokenizer, threads: Int) throws {
        var system = tokenizer.encode(Self.promptText)
        while system.count < 500 { system += system }
        system = Array(system.prefix(500))
        let cores = [0, EngineOptions.defaultPrefixCacheMiB].map { mib in
            EngineCore(weights: weights, tokenizer: tokenizer, options: EngineOptions(threads: threads, prefixCacheMiB: mib))
        }
        var best = [Double](repeating: .infinity, count: cores.count)
        for round in 0..<3 {
            for (i, core) in cores.enumerated() {
                let first = system + tokenizer.encode(" Question \(round)-\(i)a: who built the first press?")
                let second = system + tokenizer.encode(" Question \(round)-\(i)b: why did books get cheaper?")
                _ = try Self.once(core, prompt: first, tokens: 2, tag: "p\(threads)-\(round)-\(i)a")
                let (ttft, _) = try Self.once(core, prompt: second, tokens: 2, tag: "p\(threads)-\(round)-\(i)b")
                best[i] = min(best[i], ttft)
            }
        }
        for core in cores { core.shutdown() }
        print(
            "          threads \(threads): shared 500-token system prompt, TTFT of the next request: "
                + "\(String(format: "%.1f", best[0])) ms without the prefix cache, \(String(format: "%.1f", best[1])) ms with it "
                + "(\(String(format: "%.1f", best[0] / best[1]))× faster)")
    }

    /// One request (greedy unless `params` say otherwise): (time to first token in ms,
    /// decode tokens/s after the first).
    static func once(
        _ core: EngineCore, prompt: [UInt32], tokens: Int, tag: String, params: SamplingParams? = nil
    ) throws -> (Double, Double) {
        struct Times: Sendable {
            var first: UInt64 = 0
            var last: UInt64 = 0
            var count = 0
        }
        let times = Mutex(Times())
        let done = DispatchSemaphore(value: 0)
        let start = DispatchTime.now().uptimeNanoseconds
        try core.submit(
            GenerationRequest(
                id: tag, prompt: .tokens(prompt),
                params: params ?? SamplingParams(maxTokens: tokens, temperature: 0, ignoreEOS: true))
        ) { event in
            let now = DispatchTime.now().uptimeNanoseconds
            times.withLock { t in
                if !event.tokens.isEmpty {
                    if t.count == 0 { t.first = now }
                    t.count += event.tokens.count
                    t.last = now
                }
            }
            if event.finishReason != nil { done.signal() }
        }
        done.wait()
        let t = times.withLock { $0 }
        let ttft = Double(t.first - start) / 1e6
        let rate = t.count > 1 ? Double(t.count - 1) / (Double(t.last - t.first) / 1e9) : 0
        return (ttft, rate)
    }

    static func peakRSSMiB() -> Double {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
            let kb = line.split(separator: " ").compactMap({ Double($0) }).first
        else { return 0 }
        return kb / 1024
    }
}
