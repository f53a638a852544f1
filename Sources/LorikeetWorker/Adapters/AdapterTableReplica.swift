package import LorikeetProto
import Synchronization

/// The worker's replica of the committed adapter table (`lorikeet.v1.AdapterTable`),
/// plus the served base-model names it resolves `model` against.
///
/// Thread-safe: every read takes one consistent snapshot under a `Mutex`, so a request
/// resolves against exactly one table version even while a change is being applied.
package final class AdapterTableReplica: Sendable {
    private struct State {
        var table: AdapterTable
        var byName: [String: Int]
        var baseModels: [String]
        /// Bumped on every change of what `listing()` returns.
        var generation: UInt64 = 0

        mutating func reindex() {
            self.generation &+= 1
            self.byName = [:]
            for (index, adapter) in self.table.adapters.enumerated() { self.byName[adapter.name] = index }
        }
    }

    private let state: Mutex<State>
    /// Fleet mode: whether adapters may be served now (never fences outside fleet mode).
    package let fence = FleetFence()

    /// A replica holding `table`, serving `baseModels` (the first is the default base).
    package init(baseModels: [String] = [], table: AdapterTable = AdapterTable()) {
        var state = State(table: table, byName: [:], baseModels: baseModels)
        state.reindex()
        self.state = Mutex(state)
    }

    /// The version of the table held.
    package var version: UInt64 { self.state.withLock { $0.table.version } }

    /// The table held.
    package func snapshot() -> AdapterTable { self.state.withLock { $0.table } }

    /// The served base-model names (`--served-model-name`, or the engine's model name).
    package var baseModels: [String] { self.state.withLock { $0.baseModels } }

    /// Sets the served base-model names (once the engine's model name is known).
    package func setBaseModels(_ names: [String]) {
        self.state.withLock { state in
            state.baseModels = names
            state.generation &+= 1
        }
    }

    /// Resolves a request's `model` against one snapshot: a base-model name gives
    /// `(name, nil)`; an adapter name gives `(its base model, the adapter)`; else nil.
    package func resolve(model: String) -> (base: String, adapter: AdapterRecord?)? {
        self.state.withLock { state in
            if state.baseModels.contains(model) { return (model, nil) }
            guard let index = state.byName[model] else { return nil }
            let adapter = state.table.adapters[index]
            let base = adapter.baseModel.isEmpty ? (state.baseModels.first ?? "") : adapter.baseModel
            return (base, adapter)
        }
    }

    /// Base models and adapters of one snapshot, for `GET /v1/models`.
    /// `generation` changes whenever the base models or the table do (a cache key).
    package func listing() -> (baseModels: [String], adapters: [AdapterRecord], generation: UInt64) {
        self.state.withLock { ($0.baseModels, $0.table.adapters, $0.generation) }
    }

    /// Replaces the table with a snapshot (control channel `TableSnapshot`, or a restore).
    package func apply(snapshot table: AdapterTable) {
        self.state.withLock { state in
            state.table = table
            state.reindex()
        }
    }

    /// Applies a committed change. A change at or below the held version was already
    /// applied and is ignored (idempotent replays); a gap (version > held + 1) throws
    /// FAILED_PRECONDITION: the replica needs a snapshot.
    package func apply(change: TableChange) throws(Status) {
        let gap: UInt64? = self.state.withLock { state in
            if change.version <= state.table.version { return nil }
            guard change.version == state.table.version + 1 else { return state.table.version }
            state.table = state.table.applying(change)
            state.reindex()
            return nil
        }
        if let held = gap {
            throw Status(
                code: .failedPrecondition,
                message: "table change \(change.version) does not follow the replica's version \(held); a snapshot is needed"
            )
        }
    }
}
