import Foundation
import LorikeetGGUF
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

    /// An engine with the prefix cache and one without, each holding `adapters` (fixture
    /// name, id) loaded at epoch 1.
    static func engines(adapters: [(name: String, id: UInt64)]) throws -> (cached: EngineCore, plain: EngineCore) {
        let cached = try Fixture.engine()
        let plain = try Fixture.engine(prefixCacheMiB: 0)
        for core in [cached, plain] {
            for adapter in adapters {
                _ = try core.adapters.add(name: adapter.name, intID: adapter.id, path: try Fixture.adapter(adapter.name), epoch: 1)
            }
        }
        return (cached, plain)
    }

    @Test("a prompt starting with a finished request's tokens copies them and gives the same tokens as without the cache")
    func reuseAfterFinish() async throws {
        let cached = try Fixture.engine()
        let plain = try Fixture.engine(prefixCacheMiB: 0)
        let first = Self.prompt(" word: why?")
        let second = Self.prompt(" line: how?")
        // Whole blocks of 16 positions are copied, never a part of one.
        let common = PrefixCache.wholeBlocks(PrefixCache.commonPrefix(first, second, limit: .max))
        let whole = PrefixCache.wholeBlocks(second.count - 1)
        #expect(common == 32 && whole == 48)
        _ = await cached.complete(Self.request("first", first))
        #expect(cached.cachedPromptTokens == 0, "nothing kept before the first request finished")
        for (i, seed) in [nil, UInt64(7)].enumerated() {
            let expected = await plain.complete(Self.request("second-\(i)", second, seed: seed))
            let got = await cached.complete(Self.request("second-\(i)", second, seed: seed))
            #expect(got.tokens == expected.tokens, "seed \(String(describing: seed))")
            #expect(got.usage?.promptTokens == expected.usage?.promptTokens)
            #expect(got.usage?.completionTokens == expected.usage?.completionTokens)
            #expect(got.usage?.cachedPromptTokens == (i == 0 ? common : whole))
            #expect(expected.usage?.cachedPromptTokens == 0)
        }
        // The first reuse copies the common part; the repeat finds the whole second prompt
        // (kept by the first run of it) but the last position, which it must compute.
        #expect(cached.cachedPromptTokens == common + whole, "copied \(cached.cachedPromptTokens)")
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
        #expect(cached.cachedPromptTokens == PrefixCache.wholeBlocks(first.count + answer.count - 1))
    }

    @Test("positions computed with one adapter are never reused by the base model, another adapter, or replaced weights")
    func adapterIsolation() async throws {
        let (cached, plain) = try Self.engines(adapters: [("plain", 1), ("rslora", 2)])
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
        #expect(cached.cachedPromptTokens == PrefixCache.wholeBlocks(prompt.count - 1))
    }

    @Test("a request queued across a replace of its adapter runs with the new weights and reuses none of the old weights' positions")
    func replacedWhileQueued() async throws {
        let (cached, plain) = try Self.engines(adapters: [("plain", 1)])
        let prompt = Self.prompt(" word: why?")
        _ = await cached.complete(Self.request("old-weights", prompt, adapter: 1))
        // Hold the scheduler thread (a base request's first event) while the next request is
        // submitted with the old weights and the adapter is replaced; it is admitted after.
        let held = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let holding = Mutex(true)
        try cached.submit(Self.request("holder", [256, 65, 66])) { _ in
            let first = holding.withLock { holding in
                defer { holding = false }
                return holding
            }
            if first {
                held.signal()
                release.wait()
            }
        }
        try await offPool { held.wait() }
        let queued = cached.generate(Self.request("queued", prompt, adapter: 1))
        for core in [cached, plain] {
            _ = try core.adapters.add(name: "plain", intID: 1, path: try Fixture.adapter("rank32"), replace: true, epoch: 2)
        }
        release.signal()
        var tokens: [UInt32] = []
        for await event in queued { tokens += event.tokens }
        let expected = await plain.complete(Self.request("new-weights", prompt, adapter: 1))
        #expect(tokens == expected.tokens)
        #expect(cached.cachedPromptTokens == 0, "the old weights' positions were not copied")
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
        #expect(cached.cachedPromptTokens == PrefixCache.wholeBlocks(prompt.count - 1), "the same salt does")
        // Running together with identical prompts: only the same salt shares.
        let streams = try await cached.admittedTogether {
            [("x1", "x"), ("y1", "y"), ("x2", "x")].map { cached.generate(request($0.0, salt: $0.1)) }
        }
        for stream in streams {
            var tokens: [UInt32] = []
            for await event in stream { tokens += event.tokens }
            #expect(tokens == reference.tokens)
        }
        #expect(cached.sharedPromptTokens == prompt.count - 1, "x2 copies x1's prompt; y1 computes its own")
    }

    @Test(
        "a request arriving while another with the same system prompt runs copies what that one has computed; with the cache off it computes its own"
    )
    func sharedWhileRunning() async throws {
        let long = [256] + Array(String(repeating: "Rules: be brief, be kind. ", count: 6).utf8).map(UInt32.init)
        let prompts = ["why?", "how?", "when?"].map { long + Array($0.utf8).map(UInt32.init) }
        /// The first request holds the scheduler thread at its first token (its prompt is
        /// computed, it is still running) until the other two are queued.
        func together(_ core: EngineCore) async throws -> [[UInt32]] {
            let held = DispatchSemaphore(value: 0)
            let release = DispatchSemaphore(value: 0)
            let firstDone = DispatchSemaphore(value: 0)
            let firstTokens = Mutex<[UInt32]>([])
            try core.submit(Self.request("together-0", prompts[0])) { event in
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
            let streams = prompts.dropFirst().enumerated().map { core.generate(Self.request("together-\($0.offset + 1)", $0.element)) }
            release.signal()
            var outputs = [[UInt32]]()
            try await offPool { firstDone.wait() }
            outputs.append(firstTokens.withLock { $0 })
            for stream in streams {
                var tokens: [UInt32] = []
                for await event in stream { tokens += event.tokens }
                outputs.append(tokens)
            }
            return outputs
        }
        let cached = try Fixture.engine()
        let plain = try Fixture.engine(prefixCacheMiB: 0)
        let withCache = try await together(cached)
        let without = try await together(plain)
        for i in prompts.indices {
            let alone = await plain.complete(Self.request("alone-\(i)", prompts[i]))
            #expect(withCache[i] == alone.tokens && without[i] == alone.tokens, "prompt \(i)")
        }
        // Each copies the whole blocks of its longest common start with a running one
        // ("when?" shares "wh" with "why?", still within the same block).
        let expected = [1, 2].map { i in
            PrefixCache.wholeBlocks((0..<i).map { PrefixCache.commonPrefix(prompts[$0], prompts[i], limit: .max) }.max()!)
        }
        #expect(expected == [144, 144])
        #expect(cached.sharedPromptTokens == expected.reduce(0, +), "shared \(cached.sharedPromptTokens), expected \(expected)")
        #expect(cached.cachedPromptTokens == 0)
        #expect(plain.sharedPromptTokens == 0 && plain.cachedPromptTokens == 0, "--prefix-cache-mib 0 shares nothing")
    }

    @Test("the cache keeps at most its capacity in bytes, least recently used first, one entry per conversation, whole blocks")
    func capacityAndEviction() throws {
        let core = try Fixture.engine(prefixCacheMiB: 0)
        func cache(_ count: Int) -> KVCache {
            let c = core.model.makeCache()
            c.reserve(count)
            c.advance(to: count)
            return c
        }
        // Whole pages per layer buffer: the fixture's 30 positions take one page per
        // buffer, its 40 and 60 positions two.
        let (small, large) = (cache(30).residentBytes, cache(60).residentBytes)
        try #require(small > 0 && cache(40).residentBytes == large && small < large)
        let kept = PrefixCache(capacity: 2 * large)
        let key = PrefixCache.Key()
        let a = Array(repeating: UInt32(1), count: 40)
        let b = Array(repeating: UInt32(2), count: 40)
        kept.insert(tokens: a, key: key, cache: cache(a.count))
        kept.insert(tokens: b, key: key, cache: cache(b.count))
        #expect(kept.heldBytes == 2 * large && kept.count == 2)
        // `a` used: `b` is the least recently used and goes when `c` needs room.
        #expect(kept.longestPrefix(of: a + [9], key: key, limit: 41)?.count == 32, "whole blocks of 40 common positions")
        let c = Array(repeating: UInt32(3), count: 30)
        kept.insert(tokens: c, key: key, cache: cache(c.count))
        #expect(kept.count == 2 && kept.heldBytes == large + small)
        #expect(kept.longestPrefix(of: b, key: key, limit: 40) == nil)
        // A longer turn of `a`'s conversation replaces it; a shorter one is already held.
        let a2 = a + Array(repeating: UInt32(4), count: 20)
        kept.insert(tokens: a2, key: key, cache: cache(a2.count))
        #expect(kept.count == 2 && kept.heldBytes == large + small)
        kept.insert(tokens: Array(a.prefix(20)), key: key, cache: cache(20))
        #expect(kept.count == 2)
        #expect(kept.longestPrefix(of: a2, key: key, limit: a2.count - 1)?.count == 48, "the last position is left to compute")
        // Shorter than a block: not kept; a match below one block, or under another key: none.
        kept.insert(tokens: Array(repeating: 5, count: PrefixCache.blockSize - 1), key: key, cache: cache(PrefixCache.blockSize - 1))
        #expect(kept.count == 2)
        #expect(kept.longestPrefix(of: Array(a.prefix(PrefixCache.blockSize - 1)) + [7], key: key, limit: 100) == nil)
        #expect(kept.longestPrefix(of: a2, key: PrefixCache.Key(adapter: 1, generation: 1), limit: 100) == nil)
        #expect(kept.longestPrefix(of: a2, key: PrefixCache.Key(salt: "t"), limit: 100) == nil)
        // Bigger than the whole capacity: not kept.
        let tiny = PrefixCache(capacity: large - 1)
        tiny.insert(tokens: a, key: key, cache: cache(a.count))
        #expect(tiny.count == 0 && tiny.heldBytes == 0)
    }

    @Test("a kept cache gives back its reservation past its positions, and keeps what it holds")
    func releaseKeepsPositions() throws {
        let core = try Fixture.engine(prefixCacheMiB: 0)
        let source = core.model.makeCache()
        _ = core.model.forward(
            (0..<20).map { ForwardRow(cache: source, token: UInt32(65 + $0), position: $0, adapter: nil, wantLogits: false) },
            workspace: ForwardWorkspace())
        let copy = core.model.makeCache()
        copy.copyPrefix(of: source, count: 20)
        source.release(beyond: 20)
        #expect(source.length == 20)
        let again = core.model.makeCache()
        again.copyPrefix(of: source, count: 20)
        for layer in 0..<core.model.config.numLayers {
            for position in [0, 19] {
                let kvDim = core.model.config.kvDim
                #expect(
                    Array(UnsafeBufferPointer(start: again.key(layer, position), count: kvDim))
                        == Array(UnsafeBufferPointer(start: copy.key(layer, position), count: kvDim)))
                #expect(
                    Array(UnsafeBufferPointer(start: again.value(layer, position), count: kvDim))
                        == Array(UnsafeBufferPointer(start: copy.value(layer, position), count: kvDim)))
            }
        }
    }
}
