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

/// Sampling parameters (the engine channel's `SamplingParams`, OpenAI's request fields).
package struct SamplingParams: Sendable, Equatable {
    /// Completion tokens to generate at most.
    package var maxTokens: Int
    /// 0 = greedy.
    package var temperature: Float
    /// Nucleus sampling; 0 or ≥ 1 = off.
    package var topP: Float
    /// 0 = off.
    package var topK: Int
    /// Same seed, same tokens. Nil = random.
    package var seed: UInt64?
    /// Stop strings (not included in the output text).
    package var stop: [String]
    /// Extra ids that end generation (the token is counted but not rendered).
    package var stopTokenIDs: [UInt32]
    /// Keep going past EOS.
    package var ignoreEOS: Bool

    /// Creates parameters; defaults are greedy, 16 tokens.
    package init(
        maxTokens: Int = 16, temperature: Float = 0, topP: Float = 1, topK: Int = 0, seed: UInt64? = nil,
        stop: [String] = [], stopTokenIDs: [UInt32] = [], ignoreEOS: Bool = false
    ) {
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.topP = topP
        self.topK = topK
        self.seed = seed
        self.stop = stop
        self.stopTokenIDs = stopTokenIDs
        self.ignoreEOS = ignoreEOS
    }
}

/// Chooses the next token from logits: argmax when temperature is 0, else temperature,
/// top-k, then top-p (nucleus) filtering and a draw from the request's own generator.
package struct Sampler: Sendable {
    private let params: SamplingParams
    private var rng: Xoshiro256

    /// Creates a sampler; without a seed the generator is seeded randomly.
    package init(_ params: SamplingParams) {
        self.params = params
        var system = SystemRandomNumberGenerator()
        self.rng = Xoshiro256(seed: params.seed ?? system.next())
    }

    /// The next token id.
    package mutating func sample(_ logits: [Float]) -> UInt32 {
        precondition(!logits.isEmpty)
        if self.params.temperature <= 0 {
            var best = 0
            for i in 1..<logits.count where logits[i] > logits[best] { best = i }
            return UInt32(best)
        }
        // Candidates sorted by logit (ties by id, so the order is deterministic).
        var order = Array(0..<logits.count)
        order.sort { logits[$0] > logits[$1] || (logits[$0] == logits[$1] && $0 < $1) }
        if self.params.topK > 0 && self.params.topK < order.count { order.removeLast(order.count - self.params.topK) }
        let invT = Double(1 / self.params.temperature)
        let top = Double(logits[order[0]])
        var probs = order.map { exp((Double(logits[$0]) - top) * invT) }
        var total = probs.reduce(0, +)
        if self.params.topP > 0 && self.params.topP < 1 {
            var cumulative = 0.0
            var keep = probs.count
            for (i, p) in probs.enumerated() {
                cumulative += p / total
                if cumulative >= Double(self.params.topP) {
                    keep = i + 1
                    break
                }
            }
            probs.removeLast(probs.count - keep)
            order.removeLast(order.count - keep)
            total = probs.reduce(0, +)
        }
        let u = self.rng.nextUnit() * total
        var acc = 0.0
        for (i, p) in probs.enumerated() {
            acc += p
            if u < acc { return UInt32(order[i]) }
        }
        return UInt32(order[order.count - 1])
    }
}
