import Foundation
package import LorikeetGGUF
import Synchronization

/// The engine's adapter table: which PEFT adapters are registered under which
/// `lora_int_id`, which are cached in memory and which hold one of the `max_loras`
/// active slots.
///
/// Mirrors vLLM's LRU adapter managers:
/// - **registered**: every adapter the leader added (until removed), by int id;
/// - **cached** (`max_cpu_loras`): weights in memory; when full, the least recently used
///   adapter that is neither pinned nor running is evicted, and reloaded from its path
///   when a request needs it again;
/// - **active** (`max_loras`): adapters that running requests may use at once; a request
///   whose adapter cannot get a slot waits until one is idle;
/// - **pinned**: always cached and active, never evicted.
///
/// Mutations carry the leader's epoch: one older than the newest epoch seen is refused
/// with FAILED_PRECONDITION, so a deposed leader cannot change the table. Mutations run
/// one at a time; file I/O happens outside the state lock, so generation never waits on it.
package final class AdapterStore: Sendable {
    /// Capacity limits (vLLM's `--max-loras`, `--max-cpu-loras`, `--max-lora-rank`).
    package struct Options: Sendable, Equatable {
        /// Adapters usable by running requests at once; 0 turns LoRA off (vLLM without
        /// `--enable-lora`): every load is refused.
        package var maxLoras: Int
        /// Adapters kept in memory.
        package var maxCpuLoras: Int
        /// Largest accepted rank.
        package var maxLoraRank: Int
        /// Canonical directories adapters may be loaded from (`AdapterPathPrefixes`): every
        /// adapter directory is opened by a walk from one of them. Empty: the walk starts
        /// at `/` (no symlinked component, no `..`), the behaviour before the engine read
        /// the prefixes. That is safe because only the leader sends paths, and the worker
        /// refuses every runtime local path when no prefix is configured; paths it sends
        /// then are the operator's `--lora-modules`.
        package var allowedPathPrefixes: [String]

        /// Creates options; `maxCpuLoras` is raised to at least `maxLoras` (as vLLM does).
        package init(maxLoras: Int = 4, maxCpuLoras: Int? = nil, maxLoraRank: Int = 16, allowedPathPrefixes: [String] = []) {
            self.maxLoras = max(0, maxLoras)
            self.maxCpuLoras = self.maxLoras == 0 ? 0 : max(self.maxLoras, maxCpuLoras ?? self.maxLoras)
            self.maxLoraRank = max(1, maxLoraRank)
            self.allowedPathPrefixes = allowedPathPrefixes
        }
    }

    /// One registered adapter as reported by `list()` (the engine channel's `EngineAdapter`).
    package struct Info: Sendable, Equatable {
        /// Adapter name as given by the leader.
        package var name: String
        /// `lora_int_id`.
        package var intID: UInt64
        /// Canonical directory.
        package var path: String
        /// Pinned adapters are never evicted.
        package var pinned: Bool
        /// Holds one of the `max_loras` slots.
        package var active: Bool
        /// Weights are in memory (else reloaded on the next request).
        package var cached: Bool
        /// LoRA rank.
        package var rank: Int
        /// Running requests using it.
        package var running: Int
    }

    /// What `add` did.
    package enum AddOutcome: Sendable, Equatable {
        /// A new adapter was registered.
        case added
        /// The weights under an existing id were replaced (`replace`).
        case replaced
        /// The same name, id and path were already loaded; nothing changed.
        case alreadyLoaded
    }

    /// Result of asking for an active slot when a request is admitted.
    package enum SlotResult: Sendable {
        /// Run with these weights (of this load generation: the adapter may have been
        /// replaced since the request was submitted); call `releaseSlot` when it ends.
        case granted(LoRAWeights, generation: UInt64)
        /// Every slot is busy with running requests; try again after one finishes.
        case wait
        /// The request cannot run with this adapter.
        case failed(EngineError)
    }

    private struct Entry {
        var name: String
        var path: String
        var pinned: Bool
        var rank: Int
        var weights: LoRAWeights?
        var active = false
        var running = 0
        var lastUsed: UInt64 = 0
        var generation: UInt64 = 0
    }

    private struct State {
        var entries: [UInt64: Entry] = [:]
        var maxEpoch: UInt64 = 0
        var tick: UInt64 = 0
        var generation: UInt64 = 0

        mutating func nextTick() -> UInt64 {
            self.tick += 1
            return self.tick
        }
    }

    /// The limits in force.
    package let options: Options
    private let model: LlamaConfig
    private let state = Mutex(State())
    /// Serializes mutations (held across file I/O; never taken by the scheduler).
    private let mutationLock = Mutex(())

    /// Creates an empty store for adapters of `model`.
    package init(model: LlamaConfig, options: Options) {
        self.model = model
        self.options = options
    }

    /// The newest leader epoch seen.
    package var maxEpoch: UInt64 { self.state.withLock { $0.maxEpoch } }

    /// All registered adapters, by int id.
    package func list() -> [Info] {
        self.state.withLock { state in
            state.entries.sorted { $0.key < $1.key }.map { id, e in
                Info(
                    name: e.name, intID: id, path: e.path, pinned: e.pinned, active: e.active,
                    cached: e.weights != nil, rank: e.rank, running: e.running)
            }
        }
    }

    // MARK: Mutations

    /// Registers (or with `replace`, reloads) the adapter at `path` under `intID`.
    ///
    /// The refusal of every load by an engine started with `maxLoras` 0, worded as vLLM's
    /// Rust frontend words its `LoraDisabledError`.
    package static let loraDisabledMessage = "engine was not started with LoRA enabled"

    /// Throws FAILED_PRECONDITION for LoRA off (`maxLoras` 0) or a stale epoch, ALREADY_EXISTS for an id or name in
    /// use, INVALID_ARGUMENT/NOT_FOUND when the files are refused, RESOURCE_EXHAUSTED when
    /// no cache slot (or, for `pinned`, no active slot) can be freed. On failure nothing
    /// changes.
    package func add(
        name: String, intID: UInt64, path: String, pinned: Bool = false, replace: Bool = false, epoch: UInt64
    ) throws(EngineError) -> AddOutcome {
        try self.mutationLock.withLock { _ throws(EngineError) -> AddOutcome in
            guard self.options.maxLoras > 0 else { throw EngineError(.failedPrecondition, Self.loraDisabledMessage) }
            try self.checkEpoch(epoch, operation: "add adapter '\(name)'")
            guard intID > 0 else { throw EngineError(.invalidArgument, "lora_int_id must be at least 1") }
            guard !name.isEmpty else { throw EngineError(.invalidArgument, "adapter name must not be empty") }
            let existing: Entry? = try self.state.withLock { state throws(EngineError) -> Entry? in
                if let (otherID, _) = state.entries.first(where: { $0.value.name == name && $0.key != intID }) {
                    throw EngineError(.alreadyExists, "LoRA adapter '\(name)' is already loaded with lora_int_id \(otherID).")
                }
                return state.entries[intID]
            }
            if let existing, !replace {
                if existing.name == name && existing.path == Self.normalized(path) {
                    if pinned && !existing.pinned { try self.setPinned(intID, true) }
                    return .alreadyLoaded
                }
                throw EngineError(
                    .alreadyExists,
                    "lora_int_id \(intID) is already loaded as adapter '\(existing.name)' from \(existing.path); use replace to load new weights."
                )
            }
            let loaded = try self.loadFiles(path)
            return try self.state.withLock { state throws(EngineError) -> AddOutcome in
                try Self.checkEpoch(&state, epoch, operation: "add adapter '\(name)'")
                let tick = state.nextTick()
                state.generation += 1
                var entry = Entry(
                    name: name, path: loaded.path, pinned: false, rank: loaded.config.rank, weights: loaded.weights,
                    lastUsed: tick, generation: state.generation)
                if let existing {
                    entry.active = existing.active
                    entry.running = existing.running
                    entry.pinned = existing.pinned
                }
                // Check and plan everything first, so a refusal leaves the table as it was.
                var scratch = state
                if existing?.weights == nil {
                    try Self.makeCacheRoom(&scratch, for: intID, options: self.options, what: "load adapter '\(name)'")
                }
                scratch.entries[intID] = entry
                if pinned {
                    try Self.pin(&scratch, intID, options: self.options)
                }
                state = scratch
                return existing == nil ? .added : .replaced
            }
        }
    }

    /// Unregisters `intID`. Running requests finish with the weights they started with.
    package func remove(intID: UInt64, epoch: UInt64) throws(EngineError) {
        try self.mutationLock.withLock { _ throws(EngineError) in
            try self.state.withLock { state throws(EngineError) in
                try Self.checkEpoch(&state, epoch, operation: "remove lora_int_id \(intID)")
                guard state.entries.removeValue(forKey: intID) != nil else {
                    throw EngineError(.notFound, "LoRA adapter with lora_int_id \(intID) is not loaded.")
                }
            }
        }
    }

    /// Pins or unpins `intID`. Pinning reloads evicted weights and takes an active slot.
    package func pin(intID: UInt64, pinned: Bool, epoch: UInt64) throws(EngineError) {
        try self.mutationLock.withLock { _ throws(EngineError) in
            try self.checkEpoch(epoch, operation: "pin lora_int_id \(intID)")
            try self.setPinned(intID, pinned, epoch: epoch)
        }
    }

    /// Must hold the mutation lock.
    private func setPinned(_ intID: UInt64, _ pinned: Bool, epoch: UInt64? = nil) throws(EngineError) {
        let reload: String? = try self.state.withLock { state throws(EngineError) -> String? in
            guard let e = state.entries[intID] else {
                throw EngineError(.notFound, "LoRA adapter with lora_int_id \(intID) is not loaded.")
            }
            return pinned && e.weights == nil ? e.path : nil
        }
        let loaded = try reload.map { (path: String) throws(EngineError) -> LoadedAdapter in try self.loadFiles(path) }
        try self.state.withLock { state throws(EngineError) in
            if let epoch { try Self.checkEpoch(&state, epoch, operation: "pin lora_int_id \(intID)") }
            guard state.entries[intID] != nil else {
                throw EngineError(.notFound, "LoRA adapter with lora_int_id \(intID) is not loaded.")
            }
            guard pinned else {
                state.entries[intID]!.pinned = false
                return
            }
            var scratch = state
            if scratch.entries[intID]!.weights == nil, let loaded {
                try Self.makeCacheRoom(&scratch, for: intID, options: self.options, what: "pin lora_int_id \(intID)")
                scratch.entries[intID]!.weights = loaded.weights
            }
            try Self.pin(&scratch, intID, options: self.options)
            state = scratch
        }
    }

    // MARK: Requests

    /// The weights a request on `intID` will run with, reloading them from the adapter's
    /// path if they were evicted. May do file I/O: call it on the submitting thread, not
    /// the scheduler's. Returns the weights and the entry generation for `acquireSlot`.
    package func weightsForRequest(_ intID: UInt64) throws(EngineError) -> (weights: LoRAWeights, generation: UInt64) {
        let lookup = try self.state.withLock { state throws(EngineError) -> (LoRAWeights?, String, UInt64) in
            guard let e = state.entries[intID] else {
                throw EngineError(.notFound, "LoRA adapter with lora_int_id \(intID) is not loaded.")
            }
            state.entries[intID]!.lastUsed = state.nextTick()
            return (e.weights, e.path, e.generation)
        }
        if let weights = lookup.0 { return (weights, lookup.2) }
        let loaded = try self.loadFiles(lookup.1)
        return try self.state.withLock { state throws(EngineError) -> (LoRAWeights, UInt64) in
            guard let e = state.entries[intID] else {
                throw EngineError(.notFound, "LoRA adapter with lora_int_id \(intID) is not loaded.")
            }
            if let weights = e.weights { return (weights, e.generation) }  // Someone else reloaded it.
            guard e.generation == lookup.2 else { return (loaded.weights, lookup.2) }
            try Self.makeCacheRoom(&state, for: intID, options: self.options, what: "reload adapter '\(e.name)'")
            state.entries[intID]!.weights = loaded.weights
            return (loaded.weights, e.generation)
        }
    }

    /// Takes an active slot for a request being admitted (called by the scheduler; no I/O).
    /// `held` are the weights from `weightsForRequest`.
    package func acquireSlot(_ intID: UInt64, held: LoRAWeights, generation: UInt64) -> SlotResult {
        self.state.withLock { state in
            guard let e = state.entries[intID] else {
                return .failed(EngineError(.notFound, "LoRA adapter with lora_int_id \(intID) is not loaded."))
            }
            if !e.active {
                switch Self.freeActiveSlot(&state, for: intID, options: self.options) {
                case .ok: break
                case .busy: return .wait
                case .allPinned:
                    return .failed(
                        EngineError(
                            .resourceExhausted,
                            "All \(self.options.maxLoras) LoRA slots (max_loras) are pinned by other adapters; cannot run adapter '\(e.name)'."
                        ))
                }
            }
            if e.weights == nil {
                guard (try? Self.makeCacheRoom(&state, for: intID, options: self.options, what: "")) != nil else {
                    return .wait
                }
                state.entries[intID]!.weights = e.generation == generation ? held : nil
                if state.entries[intID]!.weights == nil { return .wait }
            }
            state.entries[intID]!.active = true
            state.entries[intID]!.running += 1
            state.entries[intID]!.lastUsed = state.nextTick()
            return .granted(state.entries[intID]!.weights!, generation: state.entries[intID]!.generation)
        }
    }

    /// Releases the slot taken by `acquireSlot` (the adapter stays active until evicted).
    package func releaseSlot(_ intID: UInt64) {
        self.state.withLock { state in
            guard state.entries[intID] != nil else { return }
            state.entries[intID]!.running = max(0, state.entries[intID]!.running - 1)
            state.entries[intID]!.lastUsed = state.nextTick()
        }
    }

    /// Whether a request on `intID` would read the adapter's files first (it is
    /// registered but its weights were evicted): the engine server then submits it off
    /// the connection's reader thread.
    package func needsReload(_ intID: UInt64) -> Bool {
        self.state.withLock { state in
            guard let e = state.entries[intID] else { return false }
            return e.weights == nil
        }
    }

    // MARK: Helpers

    /// `path` without trailing slashes (how loaded paths are stored).
    private static func normalized(_ path: String) -> String {
        var p = Substring(path)
        while p.count > 1 && p.hasSuffix("/") { p.removeLast() }
        return String(p)
    }

    private func loadFiles(_ path: String) throws(EngineError) -> LoadedAdapter {
        do {
            return try AdapterLoader.load(
                path: path, model: self.model, maxLoraRank: self.options.maxLoraRank,
                allowedPrefixes: self.options.allowedPathPrefixes)
        } catch {
            throw error.engineError
        }
    }

    private func checkEpoch(_ epoch: UInt64, operation: String) throws(EngineError) {
        try self.state.withLock { state throws(EngineError) in try Self.checkEpoch(&state, epoch, operation: operation) }
    }

    private static func checkEpoch(_ state: inout State, _ epoch: UInt64, operation: String) throws(EngineError) {
        guard epoch >= state.maxEpoch else {
            throw EngineError(
                .failedPrecondition,
                "stale leader epoch \(epoch): epoch \(state.maxEpoch) has already been seen; refusing to \(operation)")
        }
        state.maxEpoch = epoch
    }

    /// Ensures there is room to cache one more adapter (besides `intID`), evicting the
    /// least recently used idle, unpinned adapter.
    private static func makeCacheRoom(_ state: inout State, for intID: UInt64, options: Options, what: String) throws(EngineError) {
        while state.entries.filter({ $0.key != intID && $0.value.weights != nil }).count >= options.maxCpuLoras {
            let victim = state.entries
                .filter { $0.key != intID && $0.value.weights != nil && !$0.value.pinned && $0.value.running == 0 }
                .min { $0.value.lastUsed < $1.value.lastUsed }
            guard let (id, _) = victim else {
                throw EngineError(
                    .resourceExhausted,
                    "Cannot \(what): all \(options.maxCpuLoras) cached LoRA slots (max_cpu_loras) hold adapters that are pinned or in use by running requests."
                )
            }
            state.entries[id]!.weights = nil
            state.entries[id]!.active = false
        }
    }

    private enum SlotFree { case ok, busy, allPinned }

    private static func freeActiveSlot(_ state: inout State, for intID: UInt64, options: Options) -> SlotFree {
        let active = state.entries.filter { $0.key != intID && $0.value.active }
        if active.count < options.maxLoras { return .ok }
        if let (id, _) = active.filter({ !$0.value.pinned && $0.value.running == 0 }).min(by: { $0.value.lastUsed < $1.value.lastUsed }) {
            state.entries[id]!.active = false
            return .ok
        }
        return active.filter { $0.value.pinned }.count >= options.maxLoras ? .allPinned : .busy
    }

    /// Pins `intID` (already cached): needs a free or idle active slot.
    private static func pin(_ state: inout State, _ intID: UInt64, options: Options) throws(EngineError) {
        guard let e = state.entries[intID] else { return }
        if e.pinned { return }
        let pinnedOthers = state.entries.filter { $0.key != intID && $0.value.pinned }.count
        guard pinnedOthers < options.maxLoras else {
            throw EngineError(
                .resourceExhausted,
                "Cannot pin adapter '\(e.name)': all \(options.maxLoras) LoRA slots (max_loras) are already pinned.")
        }
        if !e.active {
            switch self.freeActiveSlot(&state, for: intID, options: options) {
            case .ok: break
            case .busy, .allPinned:
                throw EngineError(
                    .resourceExhausted,
                    "Cannot pin adapter '\(e.name)': every LoRA slot (max_loras=\(options.maxLoras)) is in use by running requests; retry when they finish."
                )
            }
        }
        state.entries[intID]!.pinned = true
        state.entries[intID]!.active = true
    }
}
