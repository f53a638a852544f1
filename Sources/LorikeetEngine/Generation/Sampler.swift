package import LorikeetStructured

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// xoshiro256** seeded through splitmix64: a small, fast generator whose sequence is
/// fixed by the seed on every platform and run, so a request with a seed always samples
/// the same tokens.
package struct Xoshiro256: RandomNumberGenerator, Sendable {
    private var s: (UInt64, UInt64, UInt64, UInt64)

    /// Seeds the four state words from `seed` with splitmix64.
    package init(seed: UInt64) {
        var x = seed
        func splitmix() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        self.s = (splitmix(), splitmix(), splitmix(), splitmix())
    }

    package mutating func next() -> UInt64 {
        let result = ((self.s.1 &* 5) << 7 | (self.s.1 &* 5) >> 57) &* 9
        let t = self.s.1 << 17
        self.s.2 ^= self.s.0
        self.s.3 ^= self.s.1
        self.s.1 ^= self.s.2
        self.s.0 ^= self.s.3
        self.s.2 ^= t
        self.s.3 = self.s.3 << 45 | self.s.3 >> 19
        return result
    }

    /// A uniform double in [0, 1) from the top 53 bits.
    package mutating func nextUnit() -> Double {
        Double(self.next() >> 11) * 0x1.0p-53
    }
}

/// Sampling parameters (the engine channel's `SamplingParams`; OpenAI's request fields and
/// vLLM's extensions, with vLLM's meanings).
package struct SamplingParams: Sendable, Equatable {
    /// Completion tokens to generate at most; nil = the rest of the context (vLLM's
    /// default for chat).
    package var maxTokens: Int?
    /// Below 1e-5 = greedy (vLLM's `_SAMPLING_EPS`).
    package var temperature: Float
    /// Nucleus sampling; 0 or ≥ 1 = off.
    package var topP: Float
    /// 0 = off.
    package var topK: Int
    /// vLLM's `min_p`: tokens whose probability is below `minP` × the top probability are
    /// dropped; 0 = off.
    package var minP: Float
    /// OpenAI's `presence_penalty` (−2…2): subtracted once from every token generated so far.
    package var presencePenalty: Float
    /// OpenAI's `frequency_penalty` (−2…2): subtracted once per occurrence in the output.
    package var frequencyPenalty: Float
    /// vLLM's `repetition_penalty` (> 0, 1 = off): logits of tokens in the prompt or the
    /// output are divided by it when positive, multiplied by it when not.
    package var repetitionPenalty: Float
    /// OpenAI's `logit_bias`: token id → bias added to its logit.
    package var logitBias: [UInt32: Float]
    /// vLLM's `min_tokens`: EOS and the stop token ids are impossible before this many
    /// tokens have been generated.
    package var minTokens: Int
    /// Same seed, same tokens. Nil = random.
    package var seed: UInt64?
    /// Stop strings.
    package var stop: [String]
    /// vLLM's `include_stop_str_in_output`: the matched stop string ends the text.
    package var includeStopStrInOutput: Bool
    /// Extra ids that end generation (the token is counted but not rendered).
    package var stopTokenIDs: [UInt32]
    /// Keep going past EOS.
    package var ignoreEOS: Bool
    /// Top log probabilities to report per generated token (0…20); nil = none.
    package var logprobs: Int?
    /// Top log probabilities to report per prompt token (`echo` with `logprobs`); nil = none.
    package var promptLogprobs: Int?
    /// Structured output: the document the generated text must spell; nil = free text.
    package var grammar: OutputGrammar?
    /// vLLM's `bad_words`, as token sequences (`BadWords.tokenIDs`): the last token of one
    /// is never generated right after its other tokens.
    package var badWordTokenIDs: [[UInt32]] = []
    /// vLLM's `cache_salt`: the prefix cache reuses positions only between requests with
    /// the same salt (none matches none), so tenants cannot probe each other's prompts by
    /// timing.
    package var cacheSalt: String?
    /// vLLM's `skip_special_tokens` (default true): false renders control tokens' text
    /// (`<|im_start|>`); a final EOS or stop token only with `include_stop_str_in_output`.
    package var skipSpecialTokens = true

    /// Creates parameters; defaults are greedy, 16 tokens, no processors.
    package init(
        maxTokens: Int? = 16, temperature: Float = 0, topP: Float = 1, topK: Int = 0, minP: Float = 0,
        presencePenalty: Float = 0, frequencyPenalty: Float = 0, repetitionPenalty: Float = 1,
        logitBias: [UInt32: Float] = [:], minTokens: Int = 0, seed: UInt64? = nil, stop: [String] = [],
        includeStopStrInOutput: Bool = false, stopTokenIDs: [UInt32] = [], ignoreEOS: Bool = false,
        logprobs: Int? = nil, promptLogprobs: Int? = nil, grammar: OutputGrammar? = nil, badWordTokenIDs: [[UInt32]] = []
    ) {
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.topP = topP
        self.topK = topK
        self.minP = minP
        self.presencePenalty = presencePenalty
        self.frequencyPenalty = frequencyPenalty
        self.repetitionPenalty = repetitionPenalty
        self.logitBias = logitBias
        self.minTokens = minTokens
        self.seed = seed
        self.stop = stop
        self.includeStopStrInOutput = includeStopStrInOutput
        self.stopTokenIDs = stopTokenIDs
        self.ignoreEOS = ignoreEOS
        self.logprobs = logprobs
        self.promptLogprobs = promptLogprobs
        self.grammar = grammar
        self.badWordTokenIDs = badWordTokenIDs
    }

    /// vLLM's `_SAMPLING_EPS`: a temperature below it samples greedily.
    package static let greedyTemperature: Float = 1e-5
}

/// One token and its log probability.
package struct LogprobEntry: Sendable, Equatable {
    /// The token id.
    package var tokenID: UInt32
    /// Its log probability.
    package var logprob: Float

    /// Creates an entry.
    package init(tokenID: UInt32, logprob: Float) {
        self.tokenID = tokenID
        self.logprob = logprob
    }
}

/// The log probabilities at one position: the chosen token's and the `top` most likely
/// tokens', most likely first (ties: lower id first).
package struct TokenLogprobs: Sendable, Equatable {
    /// The chosen (or, for a prompt position, the given) token.
    package var chosen: LogprobEntry
    /// The most likely tokens, most likely first.
    package var top: [LogprobEntry]

    /// Creates the log probabilities of a position.
    package init(chosen: LogprobEntry, top: [LogprobEntry]) {
        self.chosen = chosen
        self.top = top
    }

    /// The log-softmax of `logits` at `token`, and the `topN` largest, without sorting the
    /// vocabulary: one pass for the log-sum-exp, one pass keeping the `topN` best (`topN` ≤ 20).
    package static func of(_ logits: [Float], token: UInt32, topN: Int) -> TokenLogprobs {
        var maximum = -Float.infinity
        for value in logits where value > maximum { maximum = value }
        var sum = 0.0
        let m = Double(maximum)
        for value in logits { sum += exp(Double(value) - m) }
        let lse = m + log(sum)
        var top: [LogprobEntry] = []
        if topN > 0 {
            top.reserveCapacity(topN + 1)
            var floor = -Float.infinity
            for (i, value) in logits.enumerated() where top.count < topN || value > floor {
                // Insert keeping descending order; equal values keep the lower id first.
                var at = top.count
                while at > 0 && top[at - 1].logprob < value { at -= 1 }
                top.insert(LogprobEntry(tokenID: UInt32(i), logprob: value), at: at)
                if top.count > topN { top.removeLast() }
                floor = top.count == topN ? top[topN - 1].logprob : -Float.infinity
            }
            for i in top.indices { top[i].logprob = Float(Double(top[i].logprob) - lse) }
        }
        let chosen = LogprobEntry(tokenID: token, logprob: Float(Double(logits[Int(token)]) - lse))
        return TokenLogprobs(chosen: chosen, top: top)
    }
}

/// What one sampling step chose.
package struct SampledToken: Sendable, Equatable {
    /// The token id.
    package var token: UInt32
    /// Its log probabilities, when the request asked for them.
    package var logprobs: TokenLogprobs?
}

/// Chooses the next token of one sequence, in the order of vLLM's V1 sampler
/// (`vllm/v1/sample/sampler.py`, `Sampler.forward` and `sample`):
///
/// 1. log probabilities, when asked for, from the raw logits (vLLM's default
///    `logprobs_mode = "raw_logprobs"`);
/// 2. `bad_words` (the last token of a bad word → −∞ right after its other tokens), then
///    `min_tokens` (EOS and stop token ids → −∞ while fewer tokens have been generated),
///    then `logit_bias` (`vllm/v1/sample/logits_processor/builtin.py`);
/// 3. penalties (`vllm/model_executor/layers/utils.py`, `apply_penalties`): repetition
///    over prompt and output tokens, then frequency and presence over output tokens;
/// 4. greedy (argmax, the lowest id on ties) when temperature < 1e-5; otherwise
///    temperature, `min_p` (against the top probability), top-k (every token at least
///    the k-th largest logit), top-p (the smallest most-likely set whose mass reaches p,
///    `vllm/v1/sample/ops/topk_topp_sampler.py`), then a draw from the request's own
///    generator.
///
/// No step sorts the vocabulary: min-p is a threshold, top-k a selection, top-p a
/// histogram of the probabilities that sorts only the tokens of the bucket where the
/// cumulative mass crosses p.
package struct Sampler: Sendable {
    private let params: SamplingParams
    private var rng: Xoshiro256
    /// Prompt tokens (only kept with a repetition penalty).
    private let promptTokens: Set<UInt32>
    /// Occurrences of each generated token (only kept with penalties).
    private var outputCounts: [UInt32: Int] = [:]
    /// The last generated tokens, as many as the longest bad word needs.
    private var recentTokens: [UInt32] = []
    /// Tokens of the longest bad word (computed once, not per token).
    private let longestBadWord: Int
    /// Ids masked until `minTokens` tokens were generated.
    private let minTokensStopIDs: [UInt32]
    private var generated = 0
    private var scratch: [Float] = []
    /// Structured output's state; nil for free text.
    private var constraint: TokenConstraint?

    /// Creates a sampler for a sequence with `prompt`; without a seed the generator is
    /// seeded randomly.
    package init(
        _ params: SamplingParams, prompt: [UInt32] = [], eosTokenIDs: [UInt32] = [], vocabulary: ConstraintVocabulary? = nil
    ) {
        self.params = params
        self.longestBadWord = params.badWordTokenIDs.map(\.count).max() ?? 0
        if let grammar = params.grammar, let vocabulary { self.constraint = TokenConstraint(grammar, vocabulary: vocabulary) }
        var system = SystemRandomNumberGenerator()
        self.rng = Xoshiro256(seed: params.seed ?? system.next())
        self.promptTokens = params.repetitionPenalty != 1 ? Set(prompt) : []
        self.minTokensStopIDs = params.minTokens > 0 ? (params.ignoreEOS ? [] : eosTokenIDs) + params.stopTokenIDs : []
    }

    private var penalized: Bool {
        self.params.repetitionPenalty != 1 || self.params.frequencyPenalty != 0 || self.params.presencePenalty != 0
    }

    /// The next token id.
    package mutating func sample(_ logits: [Float]) -> UInt32 {
        self.next(logits).token
    }

    /// The next token and, when asked for, its log probabilities.
    package mutating func next(_ logits: [Float]) -> SampledToken {
        precondition(!logits.isEmpty)
        var l = logits
        self.process(&l)
        let token: UInt32
        if let constraint = self.constraint {
            token = self.constrainedChoice(&l, constraint)
        } else if self.params.temperature < SamplingParams.greedyTemperature {
            token = Self.argmax(l)
        } else {
            token = self.draw(&l)
        }
        self.record(token)
        let logprobs = self.params.logprobs.map { TokenLogprobs.of(logits, token: token, topN: $0) }
        return SampledToken(token: token, logprobs: logprobs)
    }

    /// The largest logit's id (the lowest id on ties).
    private static func argmax(_ l: [Float]) -> UInt32 {
        var best = 0
        for i in 1..<l.count where l[i] > l[best] { best = i }
        return UInt32(best)
    }

    /// Step 4 under structured output: the token chosen as if every token the grammar
    /// refuses had logit −∞ (vLLM applies its grammar bitmask before sampling).
    ///
    /// Masking the whole vocabulary costs one grammar check per token, so it is tried
    /// last: greedy takes the best allowed token in logit order, and a draw with only a
    /// temperature is repeated with each refused token removed — both give exactly the
    /// masked choice. With top-k, top-p or min-p (whose cut depends on the mask), after 16
    /// refusals, or when nothing was allowed, the mask is applied first.
    private mutating func constrainedChoice(_ l: inout [Float], _ constraint: TokenConstraint) -> UInt32 {
        let greedy = self.params.temperature < SamplingParams.greedyTemperature
        let p = self.params.topP
        let exact = greedy || (self.params.topK == 0 && self.params.minP == 0 && (p <= 0 || p >= 1))
        if exact {
            for _ in 0..<16 {
                var scaled = l
                let candidate = greedy ? Self.argmax(l) : self.draw(&scaled)
                guard l[Int(candidate)] > -.infinity else { break }
                if constraint.allows(candidate) { return candidate }
                l[Int(candidate)] = -.infinity
            }
        }
        constraint.mask(&l)
        guard l.contains(where: { $0 > -.infinity }) else {
            self.constraintDeadEnd = true
            return constraint.fallbackEnd
        }
        return greedy ? Self.argmax(l) : self.draw(&l)
    }

    /// Structured output reached a position no token can continue (the grammar's limits
    /// should make this impossible): the sequence must end as an error, not as a document.
    package private(set) var constraintDeadEnd = false

    /// Whether structured output's document is complete and nothing may follow it.
    package var constraintFinished: Bool { self.constraint?.isFinished ?? false }

    /// Counts `token` as generated (for `min_tokens` and the penalties); `next` calls it.
    package mutating func record(_ token: UInt32) {
        self.constraint?.record(token)
        if self.longestBadWord > 1 {
            self.recentTokens.append(token)
            if self.recentTokens.count >= self.longestBadWord {
                self.recentTokens.removeFirst(self.recentTokens.count - self.longestBadWord + 1)
            }
        }
        self.generated += 1
        if self.penalized { self.outputCounts[token, default: 0] += 1 }
    }

    /// Steps 2 and 3: the processors that can change the argmax, in vLLM's order.
    package func process(_ l: inout [Float]) {
        let vocab = l.count
        // vLLM V1 applies bad words first (`vllm/v1/sample/ops/bad_words.py`).
        for word in self.params.badWordTokenIDs {
            guard let last = word.last, Int(last) < vocab else { continue }
            let prefix = word.dropLast()
            if prefix.isEmpty || self.recentTokens.suffix(prefix.count).elementsEqual(prefix) { l[Int(last)] = -.infinity }
        }
        if self.generated < self.params.minTokens {
            for id in self.minTokensStopIDs where Int(id) < vocab { l[Int(id)] = -.infinity }
        }
        for (id, bias) in self.params.logitBias where Int(id) < vocab { l[Int(id)] += bias }
        let r = self.params.repetitionPenalty
        if r != 1 {
            func penalize(_ id: UInt32) {
                let i = Int(id)
                guard i < vocab else { return }
                l[i] = l[i] > 0 ? l[i] / r : l[i] * r
            }
            for id in self.promptTokens { penalize(id) }
            for id in self.outputCounts.keys where !self.promptTokens.contains(id) { penalize(id) }
        }
        if self.params.frequencyPenalty != 0 || self.params.presencePenalty != 0 {
            for (id, count) in self.outputCounts where Int(id) < vocab {
                l[Int(id)] -= self.params.frequencyPenalty * Float(count) + self.params.presencePenalty
            }
        }
    }

    /// Step 4 at temperature > 0: filters, then draws from what is left.
    private mutating func draw(_ l: inout [Float]) -> UInt32 {
        guard let (m, total) = self.filter(&l) else { return 0 }
        let u = self.rng.nextUnit() * total
        var acc = 0.0
        var last = 0
        for i in l.indices where l[i] > -.infinity {
            acc += exp(Double(l[i]) - m)
            last = i
            if u < acc { return UInt32(i) }
        }
        return UInt32(last)
    }

    /// Temperature, min-p, top-k and top-p: `l` becomes the scaled logits, −∞ where
    /// filtered out. Returns the largest scaled logit and Σ exp(l − largest) over the
    /// tokens kept (nil when every logit is −∞).
    package mutating func filter(_ l: inout [Float]) -> (maximum: Double, total: Double)? {
        let invT = 1 / self.params.temperature
        var maximum = -Float.infinity
        for i in l.indices {
            l[i] *= invT
            if l[i] > maximum { maximum = l[i] }
        }
        guard maximum > -.infinity else { return nil }
        // min_p: p_i < min_p · p_max  ⇔  l_i < max + ln(min_p).
        if self.params.minP > 0 {
            let floor = maximum + log(self.params.minP)
            for i in l.indices where l[i] < floor { l[i] = -.infinity }
        }
        // top-k: keep every logit ≥ the k-th largest (vLLM keeps ties at the threshold).
        let k = self.params.topK
        if k > 0 && k < l.count {
            self.scratch.removeAll(keepingCapacity: true)
            for value in l where value > -.infinity { self.scratch.append(value) }
            if self.scratch.count > k {
                let threshold = Self.kthLargest(&self.scratch, k)
                for i in l.indices where l[i] < threshold { l[i] = -.infinity }
            }
        }
        let m = Double(maximum)
        var total = 0.0
        for value in l where value > -.infinity { total += exp(Double(value) - m) }
        let p = Double(self.params.topP)
        if p > 0 && p < 1 {
            total = Self.nucleus(&l, maximum: m, total: total, p: p)
        }
        return (m, total)
    }

    /// The k-th largest of `values` (1-based), by quickselect; reorders `values`.
    static func kthLargest(_ values: inout [Float], _ k: Int) -> Float {
        var lo = 0
        var hi = values.count - 1
        let target = k - 1
        while lo < hi {
            let mid = lo + (hi - lo) / 2
            let pivot = max(min(values[lo], values[mid]), min(max(values[lo], values[mid]), values[hi]))
            var i = lo
            var j = hi
            while i <= j {
                while values[i] > pivot { i += 1 }
                while values[j] < pivot { j -= 1 }
                if i <= j {
                    values.swapAt(i, j)
                    i += 1
                    j -= 1
                }
            }
            if target <= j {
                hi = j
            } else if target >= i {
                lo = i
            } else {
                return values[target]
            }
        }
        return values[lo]
    }

    /// Top-p over the finite entries of `l` (scaled logits, `maximum` their largest,
    /// `total` = Σ exp(l − maximum)): keeps a token when the mass of the tokens more likely
    /// than it is below `p` · total (vLLM: the ascending cumulative sum exceeds 1 − p, the
    /// most likely token always kept). Returns the kept mass.
    ///
    /// Tokens are bucketed by `maximum − l` (width 1/8, 256 buckets, one for the rest); only
    /// the bucket where the cumulative mass reaches p is sorted.
    static func nucleus(_ l: inout [Float], maximum m: Double, total: Double, p: Double) -> Double {
        let buckets = 257
        let width = 8.0
        var mass = [Double](repeating: 0, count: buckets)
        func bucket(_ value: Float) -> Int { min(buckets - 1, Int((m - Double(value)) * width)) }
        for value in l where value > -.infinity { mass[bucket(value)] += exp(Double(value) - m) }
        let target = p * total
        var before = 0.0
        var cut = buckets - 1
        for b in 0..<buckets {
            if before + mass[b] >= target {
                cut = b
                break
            }
            before += mass[b]
        }
        // Order within the crossing bucket: larger logit first, then lower id.
        var crossing: [Int] = []
        for i in l.indices where l[i] > -.infinity && bucket(l[i]) == cut { crossing.append(i) }
        crossing.sort { l[$0] > l[$1] || (l[$0] == l[$1] && $0 < $1) }
        var running = before
        var kept = before
        for i in crossing {
            if running < target {
                let e = exp(Double(l[i]) - m)
                running += e
                kept += e
            } else {
                l[i] = -.infinity
            }
        }
        for i in l.indices where l[i] > -.infinity && bucket(l[i]) > cut { l[i] = -.infinity }
        return kept
    }
}
