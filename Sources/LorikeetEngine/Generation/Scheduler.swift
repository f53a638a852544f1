import Foundation
import LorikeetGGUF
import Synchronization

/// Runs all generation on one dedicated thread (never the Swift concurrency pool).
///
/// Each turn it takes every running sequence one step further in a single batched
/// forward pass: one token for decoding sequences, a bounded chunk of prompt tokens for
/// sequences still reading their prompt. A short request therefore starts and finishes
/// while a long one is running instead of queuing behind it. The chunk is small while some
/// sequence decodes (`prefillBudgetWhileDecoding`: its next token waits for the whole step)
/// and large when none does (`prefillBudget`: prompts that arrive together are read
/// together, so their streams start together), handed to the prompts with the fewest tokens
/// left first (`budgetOrder`). Requests beyond
/// `maxBatchSize`, or whose adapter has no free active slot, wait in FIFO order.
///
/// Events are delivered on the scheduler thread; callbacks must return quickly (hand the
/// event to a queue or a socket writer).
package final class Scheduler: Sendable {
    /// Callback for a request's events.
    package typealias EventHandler = @Sendable (GenerationEvent) -> Void

    private struct Pending: Sendable {
        var id: String
        var prompt: [UInt32]
        var adapterID: UInt64?
        var adapter: (weights: LoRAWeights, generation: UInt64)?
        var params: SamplingParams
        var onEvent: EventHandler
    }

    private struct State {
        var waiting: [Pending] = []
        var ids: Set<String> = []
        var aborts: Set<String> = []
        var shutdown = false
        /// Prompt positions taken from another sequence's cache instead of computed.
        var sharedPromptTokens = 0
        /// Prompt positions taken from the prefix cache instead of computed.
        var cachedPromptTokens = 0
    }

    private let model: LlamaModel
    private let tokenizer: any EngineTokenizer
    private let adapters: AdapterStore
    private let maxBatchSize: Int
    private let prefillBudget: Int
    private let prefillBudgetWhileDecoding: Int
    private let prefixCacheBytes: Int
    private let state = Mutex(State())
    private let wakeup = DispatchSemaphore(value: 0)
    private let exited = DispatchSemaphore(value: 0)

    /// Starts the scheduler thread. A step reads at most `prefillBudget` prompt tokens, or
    /// `prefillBudgetWhileDecoding` while some sequence decodes (and at least one per
    /// sequence reading its prompt). `prefixCacheBytes` bounds the finished sequences' caches
    /// kept for prompts that start the same way (`PrefixCache`; 0 keeps none).
    package init(
        model: LlamaModel, tokenizer: any EngineTokenizer, adapters: AdapterStore, maxBatchSize: Int = 32,
        prefillBudget: Int = 256, prefillBudgetWhileDecoding: Int = 16, prefixCacheBytes: Int = 0
    ) {
        self.model = model
        self.tokenizer = tokenizer
        self.adapters = adapters
        self.maxBatchSize = max(1, maxBatchSize)
        self.prefillBudget = max(1, prefillBudget)
        self.prefillBudgetWhileDecoding = max(1, prefillBudgetWhileDecoding)
        self.prefixCacheBytes = max(0, prefixCacheBytes)
        let thread = Thread { [self] in self.run() }
        thread.name = "lorikeet-engine-scheduler"
        thread.stackSize = 8 << 20
        thread.start()
    }

    /// Requests waiting or running.
    package var requestCount: Int { self.state.withLock { $0.ids.count } }

    /// Prompt positions copied from a running sequence with the same prompt and adapter
    /// (the `n` choices of a request, or a repeated prompt) instead of computed, since start.
    package var sharedPromptTokens: Int { self.state.withLock { $0.sharedPromptTokens } }

    /// Prompt positions copied from the prefix cache (a finished sequence's cache whose tokens
    /// start the prompt, same adapter) instead of computed, since start.
    package var cachedPromptTokens: Int { self.state.withLock { $0.cachedPromptTokens } }

    /// Queues a validated request. Throws ALREADY_EXISTS for a duplicate id and
    /// UNAVAILABLE after shutdown.
    package func submit(
        id: String, prompt: [UInt32], adapterID: UInt64?, adapter: (weights: LoRAWeights, generation: UInt64)?,
        params: SamplingParams, onEvent: @escaping EventHandler
    ) throws(EngineError) {
        let pending = Pending(
            id: id, prompt: prompt, adapterID: adapterID, adapter: adapter, params: params, onEvent: onEvent)
        try self.state.withLock { state throws(EngineError) in
            guard !state.shutdown else { throw EngineError(.unavailable, "the engine is shutting down") }
            guard state.ids.insert(id).inserted else {
                throw EngineError(.alreadyExists, "a request with id '\(id)' is already running")
            }
            state.waiting.append(pending)
        }
        self.wakeup.signal()
    }

    /// Aborts a waiting or running request; its last event has finish reason `abort`.
    /// Returns false when no such request is in flight.
    package func abort(_ id: String) -> Bool {
        let (found, removed) = self.state.withLock { state -> (Bool, Pending?) in
            guard state.ids.contains(id) else { return (false, nil) }
            if let i = state.waiting.firstIndex(where: { $0.id == id }) {
                state.ids.remove(id)
                return (true, state.waiting.remove(at: i))
            }
            state.aborts.insert(id)
            return (true, nil)
        }
        if let removed {
            removed.onEvent(
                GenerationEvent(
                    requestID: id, finishReason: .abort, usage: Usage(promptTokens: removed.prompt.count, completionTokens: 0)))
        } else if found {
            self.wakeup.signal()
        }
        return found
    }

    /// Aborts everything and stops the thread; waits for it to exit.
    package func shutdown() {
        let first = self.state.withLock { state -> Bool in
            defer { state.shutdown = true }
            return !state.shutdown
        }
        guard first else { return }
        self.wakeup.signal()
        self.exited.wait()
    }

    // MARK: The scheduler thread

    /// A sequence being generated; touched only by the scheduler thread.
    private final class Sequence {
        let id: String
        let prompt: [UInt32]
        let params: SamplingParams
        let onEvent: EventHandler
        let adapterID: UInt64?
        let adapter: LoRAWeights?
        /// Adapter id, load generation and cache salt: who may share this sequence's positions.
        let cacheKey: PrefixCache.Key
        let cache: KVCache
        let maxNew: Int
        var sampler: Sampler
        var detokenizer = UTF8StreamDecoder()
        var stopper: StopStringMatcher
        /// Tokens fed to the model so far (prompt, then generated).
        var fed = 0
        /// Prompt positions copied from another cache instead of computed.
        var copied = 0
        var generated: [UInt32] = []
        var finished = false
        /// Prompt log probabilities gathered during prefill (see
        /// `GenerationEvent.promptLogprobs`); sent with the first token's event.
        var promptLogprobs: [TokenLogprobs]?

        init(
            _ p: Pending, adapter: (weights: LoRAWeights, generation: UInt64)?, cache: KVCache, contextLength: Int,
            eosTokenIDs: [UInt32],
            vocabulary: ConstraintVocabulary?
        ) {
            self.id = p.id
            self.prompt = p.prompt
            self.params = p.params
            self.onEvent = p.onEvent
            self.adapterID = p.adapterID
            self.adapter = adapter?.weights
            // The generation of the weights it runs with (granted at admission), not the
            // one seen at submission: a replace in between changes the weights.
            self.cacheKey = PrefixCache.Key(adapter: p.adapterID, generation: adapter?.generation ?? 0, salt: p.params.cacheSalt)
            self.cache = cache
            self.maxNew = min(p.params.maxTokens ?? Int.max, contextLength - p.prompt.count)
            self.sampler = Sampler(p.params, prompt: p.prompt, eosTokenIDs: eosTokenIDs, vocabulary: vocabulary)
            self.stopper = StopStringMatcher(p.params.stop, includeStop: p.params.includeStopStrInOutput)
            if p.params.promptLogprobs != nil {
                self.promptLogprobs = [TokenLogprobs(chosen: LogprobEntry(tokenID: p.prompt[0], logprob: 0), top: [])]
            }
        }

        var usage: Usage {
            Usage(promptTokens: self.prompt.count, completionTokens: self.generated.count, cachedPromptTokens: self.copied)
        }

        /// Token `position` of the sequence (prompt, then generated).
        func token(at position: Int) -> UInt32 {
            position < self.prompt.count ? self.prompt[position] : self.generated[position - self.prompt.count]
        }

        /// The tokens whose keys and values the cache holds.
        var cachedTokens: [UInt32] { (0..<self.cache.length).map(self.token(at:)) }
    }

    private func run() {
        var running: [Sequence] = []
        let workspace = ForwardWorkspace()
        let kept = PrefixCache(capacity: self.prefixCacheBytes)
        var finishedEvents: [(EventHandler, GenerationEvent)] = []
        // Built the first time a request asks for structured output.
        var vocabulary: ConstraintVocabulary?
        while true {
            // 1. Admit, collect aborts, or stop.
            let (admitted, failed, aborts, shutdown) = self.state.withLock { state in
                var admitted: [(Pending, (weights: LoRAWeights, generation: UInt64)?)] = []
                var failed: [(Pending, EngineError)] = []
                var stillWaiting: [Pending] = []
                for p in state.waiting {
                    guard !state.shutdown, running.count + admitted.count < self.maxBatchSize else {
                        stillWaiting.append(p)
                        continue
                    }
                    guard let adapterID = p.adapterID, let held = p.adapter else {
                        admitted.append((p, nil))
                        continue
                    }
                    switch self.adapters.acquireSlot(adapterID, held: held.weights, generation: held.generation) {
                    case .granted(let w, let generation): admitted.append((p, (w, generation)))
                    case .wait: stillWaiting.append(p)
                    case .failed(let e):
                        failed.append((p, e))
                        state.ids.remove(p.id)
                    }
                }
                state.waiting = state.shutdown ? [] : stillWaiting
                let aborted = state.shutdown ? state.ids : state.aborts
                if state.shutdown {
                    for p in stillWaiting { failed.append((p, EngineError(.unavailable, "the engine is shutting down"))) }
                    state.ids.subtract(stillWaiting.map(\.id))
                }
                state.aborts = []
                return (admitted, failed, aborted, state.shutdown)
            }
            for (p, e) in failed {
                p.onEvent(
                    GenerationEvent(
                        requestID: p.id, finishReason: e.code == .unavailable ? .abort : .error,
                        usage: Usage(promptTokens: p.prompt.count, completionTokens: 0), error: e))
            }
            for (p, w) in admitted {
                if p.params.grammar != nil && vocabulary == nil { vocabulary = ConstraintVocabulary(tokenizer: self.tokenizer) }
                running.append(
                    Sequence(
                        p, adapter: w, cache: self.model.makeCache(), contextLength: self.model.config.maxPositionEmbeddings,
                        eosTokenIDs: self.tokenizer.eosTokenIDs, vocabulary: vocabulary))
            }
            for s in running where aborts.contains(s.id) {
                s.finished = true
                finishedEvents.append((s.onEvent, GenerationEvent(requestID: s.id, finishReason: .abort, usage: s.usage)))
            }
            self.retire(&running, &finishedEvents, keep: kept)
            if shutdown && running.isEmpty {
                self.exited.signal()
                return
            }
            if running.isEmpty {
                self.wakeup.wait()
                continue
            }

            // 2. One batched step: a prompt chunk or one token per sequence.
            // `wanting`: per sequence, the prompt positions whose logits give prompt log
            // probabilities (their next prompt token), and whether its last row samples.
            var rows: [ForwardRow] = []
            var wanting: [(sequence: Sequence, promptPositions: Range<Int>, samples: Bool)] = []
            var budget = running.contains { $0.fed >= $0.prompt.count } ? self.prefillBudgetWhileDecoding : self.prefillBudget
            var shared = 0
            var cached = 0
            for s in Self.budgetOrder(running) {
                if s.fed == 0, s.promptLogprobs == nil, let source = Self.prefixSource(for: s, in: running) {
                    // The same prompt is (being) computed by another sequence: wait for it,
                    // then take its cache up to the last prompt position (whose logits this
                    // sequence computes itself, one row).
                    // Its cache, not its `fed`: rows built this step are not computed yet.
                    guard source.cache.length >= s.prompt.count - 1 else { continue }
                    s.cache.copyPrefix(of: source.cache, count: s.prompt.count - 1)
                    s.fed = s.prompt.count - 1
                    s.copied = s.fed
                    shared += s.fed
                }
                if kept.capacity > 0, s.fed < s.prompt.count - 1, s.promptLogprobs == nil {
                    let (count, fromKept) = Self.reusePrefix(for: s, running: running, kept: kept)
                    if fromKept { cached += count } else { shared += count }
                }
                if s.fed < s.prompt.count {
                    // Every row of a sequence that wants prompt log probabilities computes the
                    // vocabulary's logits: at most 64 such rows per step bound that memory.
                    let limit = s.promptLogprobs == nil ? budget : min(budget, 64)
                    let take = min(s.prompt.count - s.fed, max(1, limit))
                    budget -= take
                    let all = s.promptLogprobs != nil
                    for j in 0..<take {
                        let pos = s.fed + j
                        let last = pos == s.prompt.count - 1
                        rows.append(
                            ForwardRow(
                                cache: s.cache, token: s.prompt[pos], position: pos, adapter: s.adapter, wantLogits: last || all))
                    }
                    let end = min(s.fed + take, s.prompt.count - 1)
                    let positions = all ? s.fed..<max(s.fed, end) : 0..<0
                    s.fed += take
                    let samples = s.fed == s.prompt.count
                    if samples || !positions.isEmpty { wanting.append((s, positions, samples)) }
                } else {
                    rows.append(
                        ForwardRow(cache: s.cache, token: s.generated.last!, position: s.fed, adapter: s.adapter, wantLogits: true))
                    s.fed += 1
                    wanting.append((s, 0..<0, true))
                }
            }
            if shared > 0 || cached > 0 {
                self.state.withLock {
                    $0.sharedPromptTokens += shared
                    $0.cachedPromptTokens += cached
                }
            }
            guard !rows.isEmpty else { continue }
            let logits = self.model.forward(rows, workspace: workspace)

            // 3. Sample and stream.
            var events: [(EventHandler, GenerationEvent)] = []
            var next = 0
            for (s, positions, samples) in wanting {
                if let topN = s.params.promptLogprobs {
                    for pos in positions {
                        let token = s.prompt[pos + 1]
                        s.promptLogprobs?.append(TokenLogprobs.of(logits[next], token: token, topN: topN))
                        next += 1
                    }
                }
                guard samples else { continue }
                let sampled = s.sampler.next(logits[next])
                next += 1
                events.append((s.onEvent, self.accept(sampled, s)))
            }
            for (handler, event) in events where event.finishReason == nil { handler(event) }
            finishedEvents += events.filter { $0.1.finishReason != nil }
            self.retire(&running, &finishedEvents, keep: kept)
        }
    }

    /// The order in which a step's prompt budget is handed out: decoding sequences (one row
    /// each, no budget), then the sequences reading their prompt, fewest prompt tokens left
    /// first (ties in arrival order). A short request that arrives while a long prompt is
    /// read gets its whole prompt into the next step instead of one token per step behind
    /// it (a 30-token chat waited 16.5 s behind a 3,000-token prompt); the long prompt still
    /// reads at least one token every step and the rest of the budget.
    private static func budgetOrder(_ running: [Sequence]) -> [Sequence] {
        // Most steps have at most one prompt being read: nothing to order (no allocation).
        guard running.count(where: { $0.fed < $0.prompt.count }) > 1 else { return running }
        return running.enumerated().sorted { a, b in
            let left = a.element.fed < a.element.prompt.count ? a.element.prompt.count - a.element.fed : 0
            let right = b.element.fed < b.element.prompt.count ? b.element.prompt.count - b.element.fed : 0
            return left != right ? left < right : a.offset < b.offset
        }.map(\.element)
    }

    /// A running sequence whose cache holds (or will hold) `s`'s prompt: the same prompt
    /// tokens and adapter, not finished, already computing it; or, when all such sequences
    /// were just admitted, the first of them (it computes, the others wait). Prompts of
    /// one token have nothing to share.
    private static func prefixSource(for s: Sequence, in running: [Sequence]) -> Sequence? {
        guard s.prompt.count > 1 else { return nil }
        let same = running.filter {
            $0 !== s && !$0.finished && $0.cacheKey == s.cacheKey && $0.adapter === s.adapter && $0.prompt == s.prompt
        }
        if let computing = same.first(where: { $0.fed > 0 }) { return computing }
        guard let leader = same.first, let leaderIndex = running.firstIndex(where: { $0 === leader }),
            let ownIndex = running.firstIndex(where: { $0 === s }), leaderIndex < ownIndex
        else { return nil }
        return leader
    }

    /// Copies into `s`'s cache the longest start of its prompt (all but the last position,
    /// whose logits it needs) that is already computed, in whole blocks of
    /// `PrefixCache.blockSize`: in the prefix cache (looked up once, before the sequence
    /// computes anything), or in a running sequence's cache (a shared system prompt of
    /// requests running together; checked every step while it reads its prompt, so it
    /// catches up with one computing ahead of it), same key. Returns the positions gained
    /// and whether they came from the prefix cache.
    private static func reusePrefix(for s: Sequence, running: [Sequence], kept: PrefixCache) -> (count: Int, fromKept: Bool) {
        let limit = s.prompt.count - 1
        var best: (source: KVCache, count: Int)?
        if s.fed == 0 { best = kept.longestPrefix(of: s.prompt, key: s.cacheKey, limit: limit) }
        var fromKept = best != nil
        for other in running where other !== s && other.cacheKey == s.cacheKey && other.adapter === s.adapter {
            let floor = max(best?.count ?? 0, s.fed, PrefixCache.blockSize - 1)
            let n = min(other.cache.length, limit)
            guard n > floor else { continue }
            var count = 0
            while count < n && other.token(at: count) == s.prompt[count] { count += 1 }
            count = PrefixCache.wholeBlocks(count)
            if count > floor {
                best = (other.cache, count)
                fromKept = false
            }
        }
        guard let best, best.count > s.fed else { return (0, false) }
        s.cache.copyPrefix(of: best.source, from: s.fed, count: best.count)
        let gained = best.count - s.fed
        s.fed = best.count
        s.copied += gained
        return (gained, fromKept)
    }

    /// Removes finished sequences, frees their adapter slots and ids, keeps their caches for
    /// prompts that start the same way, then sends their final events (after the id is
    /// free, so a client may reuse it at once).
    private func retire(_ running: inout [Sequence], _ events: inout [(EventHandler, GenerationEvent)], keep kept: PrefixCache) {
        let done = running.filter(\.finished)
        guard !done.isEmpty || !events.isEmpty else { return }
        running.removeAll(where: \.finished)
        for s in done {
            if let id = s.adapterID { self.adapters.releaseSlot(id) }
            if kept.capacity > 0 { kept.insert(tokens: s.cachedTokens, key: s.cacheKey, cache: s.cache) }
        }
        self.state.withLock { state in state.ids.subtract(done.map(\.id)) }
        for (handler, event) in events { handler(event) }
        events = []
    }

    /// Records a sampled token and returns the event that reports it (the final one when
    /// it ends the sequence).
    private func accept(_ sampled: SampledToken, _ s: Sequence) -> GenerationEvent {
        var event = self.event(for: sampled.token, s)
        if let logprobs = sampled.logprobs { event.logprobs = [logprobs] }
        if let prompt = s.promptLogprobs {
            event.promptLogprobs = prompt
            s.promptLogprobs = nil
        }
        return event
    }

    private func event(for token: UInt32, _ s: Sequence) -> GenerationEvent {
        s.generated.append(token)
        if s.sampler.constraintDeadEnd {
            s.finished = true
            return GenerationEvent(
                requestID: s.id, finishReason: .error, usage: s.usage,
                error: EngineError(
                    .internal,
                    "structured output: no token can continue the document here; the output so far is not valid (please report the schema)"
                ))
        }
        let isEOS = !s.params.ignoreEOS && self.tokenizer.eosTokenIDs.contains(token)
        if isEOS || s.params.stopTokenIDs.contains(token) {
            s.finished = true
            // vLLM leaves the stop token out of the text unless include_stop_str_in_output.
            var tail = s.detokenizer.finish()
            if !s.params.skipSpecialTokens && s.params.includeStopStrInOutput {
                tail += String(decoding: self.tokenizer.specialTokenBytes(token), as: UTF8.self)
            }
            let (text, _) = s.stopper.feed(tail)
            var event = GenerationEvent(
                requestID: s.id, tokens: [token], text: text + s.stopper.flush(), finishReason: .stop, usage: s.usage)
            // vLLM: EOS has no stop reason; a stop_token_ids token is its own.
            if !isEOS { event.stopReason = .token(token) }
            return event
        }
        var bytes = self.tokenizer.tokenBytes(token)
        if bytes.isEmpty && !s.params.skipSpecialTokens { bytes = self.tokenizer.specialTokenBytes(token) }
        let (emit, stopped) = s.stopper.feed(s.detokenizer.append(bytes))
        if stopped || s.sampler.constraintFinished {
            // Structured output: the document is complete and nothing may follow it.
            if !stopped {
                s.finished = true
                let (tail, _) = s.stopper.feed(s.detokenizer.finish())
                return GenerationEvent(
                    requestID: s.id, tokens: [token], text: emit + tail + s.stopper.flush(), finishReason: .stop, usage: s.usage)
            }
            s.finished = true
            var event = GenerationEvent(requestID: s.id, tokens: [token], text: emit, finishReason: .stop, usage: s.usage)
            event.stopReason = s.stopper.matched.map { .string($0) }
            return event
        }
        if s.generated.count >= s.maxNew {
            s.finished = true
            let (tail, stoppedInTail) = s.stopper.feed(s.detokenizer.finish())
            let text = emit + tail + (stoppedInTail ? "" : s.stopper.flush())
            var event = GenerationEvent(
                requestID: s.id, tokens: [token], text: text, finishReason: stoppedInTail ? .stop : .length, usage: s.usage)
            if stoppedInTail { event.stopReason = s.stopper.matched.map { .string($0) } }
            return event
        }
        return GenerationEvent(requestID: s.id, tokens: [token], text: emit)
    }
}
