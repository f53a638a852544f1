import Foundation
import LorikeetTestSupport
import Synchronization
import Testing

@testable import LorikeetEngine

/// The prefix cache: a prompt that starts with tokens another sequence computed (finished
/// and kept, or running) copies their keys and values, and answers exactly as without it.
@Suite("Prefix cache", .ownThreads)
struct PrefixCacheTests {
    /// A 40-token system prompt, then a question: what two requests of one deployment share.
    static let system = Array("You are a terse assistant. Answer in one".utf8).map(UInt32.init)

    static func prompt(_ question: String) -> [UInt32] { [256] + Self.system + Array(question.utf8).map(UInt32.init) }

    static func request(_ id: String, _ prompt: [UInt32], adapter: UInt64? = nil, seed: UInt64? = nil) -> GenerationRequest {
        GenerationRequest(
            id: id, prompt: .tokens(prompt), adapterID: adapter,
            params: SamplingParams(maxTokens: 12, temperature: seed == nil ? 0 : 1, seed: seed, ignoreEOS: true))
    }

    @Test("a prompt starting with a finished request's tokens copies them and gives the same tokens as without the cache")
    func reuseAfterFinish() async throws {
        let cached = try Fixture.engine()
        let plain = try Fixture.engine(prefixCacheMiB: 0)
        let first = Self.prompt(" word: why?")
        let second = Self.prompt(" line: how?")
        let common = PrefixCache.commonPrefix(first, second, limit: .max)
        _ = await cached.complete(Self.request("first", first))
        #expect(cached.cachedPromptTokens == 0, "nothing kept before the first request finished")
        for (i, seed) in [nil, UInt64(7)].enumerated() {
            let expected = await plain.complete(Self.request("second-\(i)", second, seed: seed))
            let got = await cached.complete(Self.request("second-\(i)", second, seed: seed))
            #expect(got.tokens == expected.tokens, "seed \(String(describing: seed))")
            #expect(got.usage?.promptTokens == expected.usage?.promptTokens)
            #expect(got.usage?.completionTokens == expected.usage?.completionTokens)
            #expect(got.usage?.cachedPromptTokens == (i == 0 ? common : second.count - 1))
            #expect(expected.usage?.cachedPromptTokens == 0)
        }
        // The first reuse copies the common part; the repeat finds the whole second prompt
        // (kept by the first run of it) but the last position, which it must compute.
        #expect(cached.cachedPromptTokens == common + (second.count - 1), "copied \(cached.cachedPromptTokens)")
        #expect(plain.cachedPromptTokens == 0)
    }

    @Test("a follow-up turn reuses the previous answer's positions too (prompt + generated tokens are kept)")
    func followUpTurn() async throws {
        let cached = try Fixture.engine()
        let plain = try Fixture.engine(prefixCacheMiB: 0)
        let first = Self.prompt(" word: why?")
        let answer = await cached.complete(Self.request("turn-1", first)).tokens
        #expect(answer.count == 12)
        let next = first + answer + Array(" and then?".utf8).map(UInt32.init)
        let got = await cached.complete(Self.request("turn-2", next))
        let expected = await plain.complete(Self.request("turn-2", next))
        #expect(got.tokens == expected.tokens)
        // Every position the first sequence fed: its prompt and all but its last token.
        #expect(cached.cachedPromptTokens == first.count + answer.count - 1)
    }

    @Test("positions computed with one adapter are never reused by the base model, another adapter, or replaced weights")
    func adapterIsolation() async throws {
        let cached = try Fixture.engine()
        let plain = try Fixture.engine(prefixCacheMiB: 0)
        for core in [cached, plain] {
            _ = try core.adapters.add(name: "plain", intID: 1, path: try Fixture.adapter("plain"), epoch: 1)
            _ = try core.adapters.add(name: "rslora", intID: 2, path: try Fixture.adapter("rslora"), epoch: 1)
        }
        let prompt = Self.prompt(" word: why?")
        _ = await cached.complete(Self.request("a1", prompt, adapter: 1))
        for (id, adapter) in [("base", nil), ("other", UInt64(2))] as [(String, UInt64?)] {
            let got = await cached.complete(Self.request(id, prompt, adapter: adapter))
            let expected = await plain.complete(Self.request(id, prompt, adapter: adapter))
            #expect(got.tokens == expected.tokens, "\(id)")
        }
        #expect(cached.cachedPromptTokens == 0, "no reuse across adapters")
        // The same id with new weights (replace): the old weights' positions are not reused.
        for core in [cached, plain] {
            _ = try core.adapters.add(name: "plain", intID: 1, path: try Fixture.adapter("rank32"), replace: true, epoch: 2)
        }
        let got = await cached.complete(Self.request("replaced", prompt, adapter: 1))
        let expected = await plain.complete(Self.request("replaced", prompt, adapter: 1))
        #expect(got.tokens == expected.tokens)
        #expect(cached.cachedPromptTokens == 0, "no reuse of replaced weights")
        // The same adapter again does reuse.
        _ = await cached.complete(Self.request("again", prompt, adapter: 1))
        #expect(cached.cachedPromptTokens == prompt.count - 1)
    }

    @Test("cache_salt: positions are shared only between requests with the same salt, finished or running")
    func cacheSalt() async throws {
        let cached = try Fixture.engine()
        let prompt = Self.prompt(" word: why?")
        func request(_ id: String, salt: String?) -> GenerationRequest {
            var r = Self.request(id, prompt)
            r.params.cacheSalt = salt
            return r
        }
        let reference = await cached.complete(request("a", salt: "tenant-a"))
        for (id, salt) in [("b", "tenant-b"), ("none", nil)] as [(String, String?)] {
            #expect(await cached.complete(request(id, salt: salt)).tokens == reference.tokens)
        }
        #expect(cached.cachedPromptTokens == 0, "another salt, or none, reuses nothing")
        #expect(await cached.complete(request("a-again", salt: "tenant-a")).tokens == reference.tokens)
        #expect(cached.cachedPromptTokens == prompt.count - 1, "the same salt does")
        // Running together with identical prompts: only the same salt shares.
        let streams = [("x1", "x"), ("y1", "y"), ("x2", "x")].map { cached.generate(request($0.0, salt: $0.1)) }
        for stream in streams {
            var tokens: [UInt32] = []
            for await event in stream { tokens += event.tokens }
            #expect(tokens == reference.tokens)
        }
        #expect(cached.sharedPromptTokens == prompt.count - 1, "x2 copies x1's prompt; y1 computes its own")
    }

    @Test("a request arriving while another with the same system prompt runs copies what that one has computed")
    func sharedWhileRunning() async throws {
        let cached = try Fixture.engine()
        let plain = try Fixture.engine(prefixCacheMiB: 0)
        let long = [256] + Array(String(repeating: "Rules: be brief, be kind. ", count: 6).utf8).map(UInt32.init)
        let prompts = ["why?", "how?", "when?"].map { long + Array($0.utf8).map(UInt32.init) }
        // The first request holds the scheduler thread at its first token (its prompt is
        // computed, it is still running) until the other two are queued.
        let held = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let firstDone = DispatchSemaphore(value: 0)
        let firstTokens = Mutex<[UInt32]>([])
        try cached.submit(Self.request("together-0", prompts[0])) { event in
            let isFirst = firstTokens.withLock { tokens in
                defer { tokens += event.tokens }
                return tokens.isEmpty
            }
            if isFirst {
                held.signal()
                release.wait()
            }
            if event.finishReason != nil { firstDone.signal() }
        }
        try await offPool { held.wait() }
        let streams = prompts.dropFirst().enumerated().map { cached.generate(Self.request("together-\($0.offset + 1)", $0.element)) }
        release.signal()
        var together = [[UInt32]]()
        try await offPool { firstDone.wait() }
        together.append(firstTokens.withLock { $0 })
        for stream in streams {
            var tokens: [UInt32] = []
            for await event in stream { tokens += event.tokens }
            together.append(tokens)
        }
        for (i, prompt) in prompts.enumerated() {
            let expected = await plain.complete(Self.request("alone-\(i)", prompt))
            #expect(together[i] == expected.tokens, "prompt \(i)")
        }
        // Each copies its longest common start with a running one ("when?" shares "wh" with "why?").
        let expected = [1, 2].map { i in (0..<i).map { PrefixCache.commonPrefix(prompts[$0], prompts[i], limit: .max) }.max()! }
        #expect(expected[0] == long.count && expected[1] == long.count + 2)
        #expect(cached.sharedPromptTokens == expected.reduce(0, +), "shared \(cached.sharedPromptTokens), expected \(expected)")
        #expect(cached.cachedPromptTokens == 0)
    }

    @Test("the cache keeps at most its capacity, least recently used first, and one entry per conversation")
    func capacityAndEviction() throws {
        let core = try Fixture.engine(prefixCacheMiB: 0)
        let kept = PrefixCache(capacity: 100)
        func cache(_ tokens: [UInt32]) -> KVCache {
            let c = core.model.makeCache()
            c.reserve(tokens.count)
            c.advance(to: tokens.count)
            return c
        }
        let a = Array(repeating: UInt32(1), count: 40)
        let b = Array(repeating: UInt32(2), count: 40)
        kept.insert(tokens: a, key: PrefixCache.Key(), cache: cache(a))
        kept.insert(tokens: b, key: PrefixCache.Key(), cache: cache(b))
        #expect(kept.heldTokens == 80 && kept.count == 2)
        // `a` used: `b` is the least recently used and goes when `c` needs room.
        #expect(kept.longestPrefix(of: a + [9], key: PrefixCache.Key(), limit: 41)?.count == 40)
        let c = Array(repeating: UInt32(3), count: 30)
        kept.insert(tokens: c, key: PrefixCache.Key(), cache: cache(c))
        #expect(kept.count == 2 && kept.heldTokens == 70)
        #expect(kept.longestPrefix(of: b, key: PrefixCache.Key(), limit: 40) == nil)
        // A longer turn of `a`'s conversation replaces it; a shorter one is already held.
        let a2 = a + Array(repeating: UInt32(4), count: 20)
        kept.insert(tokens: a2, key: PrefixCache.Key(), cache: cache(a2))
        #expect(kept.count == 2 && kept.heldTokens == 90)
        kept.insert(tokens: Array(a.prefix(20)), key: PrefixCache.Key(), cache: cache(Array(a.prefix(20))))
        #expect(kept.count == 2 && kept.heldTokens == 90)
        // Too short to keep, too big to fit, a match below the minimum: nothing.
        kept.insert(tokens: Array(repeating: 5, count: PrefixCache.minimumTokens - 1), key: PrefixCache.Key(), cache: cache([5]))
        kept.insert(tokens: Array(repeating: 6, count: 101), key: PrefixCache.Key(), cache: cache(Array(repeating: 6, count: 101)))
        #expect(kept.count == 2)
        #expect(kept.longestPrefix(of: Array(a.prefix(PrefixCache.minimumTokens - 1)) + [7], key: PrefixCache.Key(), limit: 100) == nil)
        #expect(kept.longestPrefix(of: a2, key: PrefixCache.Key(adapter: 1, generation: 1), limit: 100) == nil)
        // The limit leaves the last prompt position to compute.
        #expect(kept.longestPrefix(of: a2, key: PrefixCache.Key(), limit: a2.count - 1)?.count == a2.count - 1)
    }
}
