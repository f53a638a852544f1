package import Logging
package import LorikeetProto
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Loads and unloads adapters (vLLM `POST /v1/load_lora_adapter` / `unload_lora_adapter`).
///
/// The leader implements it with `LeaderMutationService`; a follower implements it by
/// routing the request to the leader over the control channel. Errors are carried in
/// `reply.status` (gRPC code + message + param), never thrown.
package protocol AdapterMutator: Sendable {
    func load(_ request: LoadAdapterRequest) async -> AdapterMutationReply
    func unload(_ request: UnloadAdapterRequest) async -> AdapterMutationReply
}

/// Makes a table change durable and visible, after the engine accepted it.
///
/// Standalone: `LocalTableCommitter`. Under the supervisor: a committer that sends a
/// `CommitRequest` and returns once the supervisor persisted the change and every ready
/// worker acked it.
package protocol TableCommitter: Sendable {
    /// Commits `change` (proposed on top of `baseVersion` by the leader of `epoch`);
    /// returns the committed table version.
    func commit(_ change: TableChange, baseVersion: UInt64, epoch: UInt64) async throws(Status) -> UInt64

    /// Fleet mode: returns once every live node of the fleet applied at least what this
    /// node's table holds, so a refusal read from that table ("cannot be found", "already
    /// loaded") holds on every node when it is answered. Elsewhere there is nothing to wait for.
    func confirmFleetApplied(epoch: UInt64) async throws(Status)
}

extension TableCommitter {
    package func confirmFleetApplied(epoch: UInt64) async throws(Status) {}
}

/// A FIFO async lock: one holder at a time, waiters resumed in order.
package final class AsyncSerializer: Sendable {
    private struct State {
        var locked = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())

    package init() {}

    package func run<Result: Sendable>(_ body: () async -> Result) async -> Result {
        await self.acquire()
        defer { self.release() }
        return await body()
    }

    private func acquire() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let acquired = self.state.withLock { state -> Bool in
                if state.locked {
                    state.waiters.append(continuation)
                    return false
                }
                state.locked = true
                return true
            }
            if acquired { continuation.resume() }
        }
    }

    private func release() {
        let next = self.state.withLock { state -> CheckedContinuation<Void, Never>? in
            if state.waiters.isEmpty {
                state.locked = false
                return nil
            }
            return state.waiters.removeFirst()
        }
        next?.resume()
    }
}

/// The leader's mutation logic (vLLM's `LoRAManager` rules, made exact).
///
/// One mutation at a time. For a load: path policy, conflicts against the replica (a
/// base-model name is refused; a loaded name is refused unless `load_inplace`, which
/// keeps the id), `lora_int_id` from `table.nextIntID` (never reused), the engine's
/// AddLora with the leader epoch, then the commit. For an unload: unknown name ->
/// NOT_FOUND, mismatched `lora_int_id` -> INVALID_ARGUMENT, the engine's RemoveLora, then
/// the commit. When the commit fails after the engine accepted, the engine is rolled back
/// so the table and the engine never diverge.
package final class LeaderMutationService: AdapterMutator {
    /// How the engine hosts adapters (one engine, or replicas reconciled one by one).
    private let hosting: AdapterHosting
    private let engine: any AdapterHost
    private let replica: AdapterTableReplica
    private let committer: any TableCommitter
    private let pathPolicy: PathPolicy
    private let logger: Logger
    private let serializer = AsyncSerializer()
    private let currentEpoch: Atomic<UInt64>
    /// Only touched inside `serializer`.
    private let backoff: Mutex<ReconcileBackoff>
    private let now: @Sendable () -> ContinuousClock.Instant
    /// Adapters the committed table may hold (`--max-adapters`).
    private let maxAdapters: Int

    package init(
        adapters hosting: AdapterHosting, replica: AdapterTableReplica, committer: any TableCommitter, pathPolicy: PathPolicy,
        epoch: UInt64, logger: Logger, reconcileBackoff: ReconcileBackoff = ReconcileBackoff(),
        maxAdapters: Int = Limits.defaultMaxAdapters,
        now: @escaping @Sendable () -> ContinuousClock.Instant = { .now }
    ) {
        self.maxAdapters = maxAdapters
        self.hosting = hosting
        self.engine = hosting.host
        self.replica = replica
        self.committer = committer
        self.pathPolicy = pathPolicy
        self.logger = logger
        self.currentEpoch = Atomic(epoch)
        self.backoff = Mutex(reconcileBackoff)
        self.now = now
    }

    /// The fencing epoch sent with every engine mutation.
    package var epoch: UInt64 { self.currentEpoch.load(ordering: .acquiring) }

    /// Sets the fencing epoch (a new `RoleAssignment`).
    package func setEpoch(_ epoch: UInt64) { self.currentEpoch.store(epoch, ordering: .releasing) }

    /// vLLM's message for a name already loaded without `load_inplace`.
    package static func alreadyLoadedMessage(_ name: String) -> String { TableRules.alreadyLoadedMessage(name) }

    package func load(_ request: LoadAdapterRequest) async -> AdapterMutationReply {
        await self.load(request, trustedPath: false)
    }

    /// Loads an adapter; with `trustedPath` (operator-given `--lora-modules`) the path
    /// only has to resolve to a directory, without the allowed-prefix policy.
    package func load(_ request: LoadAdapterRequest, trustedPath: Bool) async -> AdapterMutationReply {
        var logger = self.logger
        logger[metadataKey: "adapter.name"] = "\(request.name.echoed())"
        do {
            try AdapterRequestRules.check(request)
        } catch {
            return AdapterMutationReply(status: error, tableVersion: self.replica.version)
        }
        let path: String
        do {
            path = try trustedPath ? Self.trusted(request.path) : self.pathPolicy.canonicalize(request.path, logger: logger)
        } catch {
            logger.info("adapter path refused", metadata: ["reason": "\(error.message)"])
            return AdapterMutationReply(status: error, tableVersion: self.replica.version)
        }
        return await self.serializer.run {
            await self.loadSerialized(request, path: path, logger: logger)
        }
    }

    private static func trusted(_ path: String) throws(Status) -> String {
        guard !path.utf8.contains(0), let canonical = PathPolicy.realPath(path) else {
            throw Status(code: .invalidArgument, message: "'\(path.echoed())' does not exist.", param: "lora_path")
        }
        return canonical
    }

    private func loadSerialized(_ request: LoadAdapterRequest, path: String, logger: Logger) async -> AdapterMutationReply {
        let table = self.replica.snapshot()
        let baseModels = self.replica.baseModels
        if baseModels.contains(request.name) {
            return Self.failure(
                .invalidArgument, "The lora adapter name '\(request.name)' is the name of a base model; choose another name.",
                param: "lora_name", version: table.version)
        }
        if !request.baseModel.isEmpty, !baseModels.contains(request.baseModel) {
            return Self.failure(
                .invalidArgument, "The base model '\(request.baseModel)' is not served here.", param: "base_model_name",
                version: table.version)
        }
        let existing = table.adapters.first { $0.name == request.name }
        if existing != nil, !request.loadInplace {
            return await self.refusalFromTable(
                .alreadyExists, Self.alreadyLoadedMessage(request.name), param: "lora_name", version: table.version)
        }
        if existing == nil, table.adapters.count >= self.maxAdapters {
            return await self.refusalFromTable(
                .failedPrecondition,
                "The adapter table is full (\(table.adapters.count) adapters; the server's --max-adapters is \(self.maxAdapters)). Unload an adapter first.",
                param: "lora_name", version: table.version)
        }
        // Fleet mode: a new name takes the id the supervisor reserved in etcd.
        let intID = existing?.intID ?? (request.reservedIntID != 0 ? request.reservedIntID : max(table.nextIntID, 1))
        let nextIntID = existing == nil ? intID + 1 : max(table.nextIntID, intID + 1)
        let epoch = self.epoch
        let record = AdapterRecord(
            name: request.name, intID: intID, path: path,
            baseModel: request.baseModel.isEmpty ? (baseModels.first ?? "") : request.baseModel,
            loadInplace: request.loadInplace, pinned: request.pinned, loadedAtUnixMs: Self.nowUnixMs())
        do {
            try await self.engine.addAdapter(
                AddAdapterRequest(
                    epoch: epoch, name: request.name, intID: intID, path: path, pinned: request.pinned,
                    replace: existing != nil))
        } catch {
            logger.info("engine refused the adapter", metadata: ["reason": "\(error)"])
            return AdapterMutationReply(status: error, tableVersion: table.version)
        }
        let change = TableChange(version: table.version + 1, upserts: [record], removes: [], nextIntID: nextIntID)
        do {
            let version = try await self.committer.commit(change, baseVersion: table.version, epoch: epoch)
            logger.info(
                "adapter loaded",
                metadata: ["adapter.id": "\(intID)", "adapter.path": "\(path)", "table.version": "\(version)"])
            return AdapterMutationReply(status: .ok, adapter: record, tableVersion: version)
        } catch {
            logger.error("commit failed, rolling the engine back", metadata: ["reason": "\(error)"])
            await self.rollBack(added: record, previous: existing, epoch: epoch, logger: logger)
            return AdapterMutationReply(status: error, tableVersion: self.replica.version)
        }
    }

    package func unload(_ request: UnloadAdapterRequest) async -> AdapterMutationReply {
        var logger = self.logger
        logger[metadataKey: "adapter.name"] = "\(request.name.echoed())"
        do {
            try AdapterRequestRules.check(request)
        } catch {
            return AdapterMutationReply(status: error, tableVersion: self.replica.version)
        }
        return await self.serializer.run {
            await self.unloadSerialized(request, logger: logger)
        }
    }

    private func unloadSerialized(_ request: UnloadAdapterRequest, logger: Logger) async -> AdapterMutationReply {
        let table = self.replica.snapshot()
        guard let existing = table.adapters.first(where: { $0.name == request.name }) else {
            return await self.refusalFromTable(
                .notFound, "The lora adapter '\(request.name)' cannot be found.", param: "lora_name", version: table.version)
        }
        if request.intID != 0, request.intID != existing.intID {
            return await self.refusalFromTable(
                .invalidArgument,
                "The lora adapter '\(request.name)' has lora_int_id \(existing.intID), not \(request.intID).",
                param: "lora_int_id", version: table.version)
        }
        let epoch = self.epoch
        do {
            try await self.engine.removeAdapter(RemoveAdapterRequest(epoch: epoch, intID: existing.intID))
        } catch  where error.code == .notFound {
            // The engine no longer holds it (an engine restart): removing it from the table is what is left.
            logger.info("engine did not hold the adapter; removing it from the table")
        } catch {
            logger.warning("engine refused to remove the adapter", metadata: ["reason": "\(error)"])
            return AdapterMutationReply(status: Self.removalRefused(existing, error), tableVersion: table.version)
        }
        let change = TableChange(
            version: table.version + 1, upserts: [], removes: [existing.name], nextIntID: table.nextIntID)
        do {
            let version = try await self.committer.commit(change, baseVersion: table.version, epoch: epoch)
            logger.info("adapter unloaded", metadata: ["adapter.id": "\(existing.intID)", "table.version": "\(version)"])
            return AdapterMutationReply(status: .ok, adapter: existing, tableVersion: version)
        } catch {
            if error.code == .notFound {
                // The fleet's table no longer holds it (another unload, e.g. an earlier try of
                // this one whose outcome was unknown, committed first): the engine must not
                // hold it either, so it is not re-added.
                logger.info("adapter already unloaded fleet-wide; not re-adding it to the engine", metadata: ["reason": "\(error)"])
                return AdapterMutationReply(status: error, tableVersion: self.replica.version)
            }
            if self.replica.snapshot().adapters.first(where: { $0.name == existing.name }) != existing {
                // The table moved on for this name (a change committed elsewhere, applied to the
                // engine by `applyCommitted`): the engine follows the table, not this try.
                logger.info("commit failed and the adapter changed meanwhile; not re-adding it", metadata: ["reason": "\(error)"])
                return AdapterMutationReply(status: error, tableVersion: self.replica.version)
            }
            logger.error("commit failed, re-adding the adapter to the engine", metadata: ["reason": "\(error)"])
            do {
                try await self.engine.addAdapter(
                    AddAdapterRequest(
                        epoch: epoch, name: existing.name, intID: existing.intID, path: existing.path,
                        pinned: existing.pinned))
            } catch let rollbackError {
                logger.critical("engine rollback failed", metadata: ["reason": "\(rollbackError)"])
            }
            return AdapterMutationReply(status: error, tableVersion: self.replica.version)
        }
    }

    /// The engine's refusal of a removal, as vLLM's Rust frontend answers it (500
    /// `engine rejected removal of LoRA adapter ...`; the engine's reason is logged). An
    /// engine that did not answer stays 503 / 504: the client may retry.
    static func removalRefused(_ adapter: AdapterRecord, _ error: Status) -> Status {
        switch error.code {
        case .unavailable, .deadlineExceeded, .failedPrecondition: error  // FAILED_PRECONDITION: a stale epoch
        default:
            Status(code: .internal, message: "engine rejected removal of LoRA adapter `\(adapter.name)` with id \(adapter.intID)")
        }
    }

    private func rollBack(added: AdapterRecord, previous: AdapterRecord?, epoch: UInt64, logger: Logger) async {
        do {
            if let previous {
                guard self.replica.snapshot().adapters.first(where: { $0.name == previous.name }) == previous else {
                    // Another node's change of this name was committed and applied meanwhile
                    // (`applyCommitted` put it into the engine): nothing of this try is left.
                    logger.info("the adapter changed meanwhile; the engine holds the committed record")
                    return
                }
                try await self.engine.addAdapter(
                    AddAdapterRequest(
                        epoch: epoch, name: previous.name, intID: previous.intID, path: previous.path,
                        pinned: previous.pinned, replace: true))
            } else {
                try await self.engine.removeAdapter(RemoveAdapterRequest(epoch: epoch, intID: added.intID))
            }
        } catch  where error.code == .notFound {
            // Already gone (`applyCommitted` removed it for another node's record of the name).
        } catch {
            logger.critical("engine rollback failed", metadata: ["reason": "\(error)"])
        }
    }

    /// Fleet mode: makes the engine hold a committed `change` (from this node or another),
    /// outside the mutation serializer — a mutation of this node may be waiting for the
    /// fleet to apply exactly this change. Only the change's own ids are touched. Upstream
    /// replicas are reconciled with the whole table (already holding the change): each
    /// replica's holdings are read back, so a change this node made itself is not loaded
    /// twice, and a local mutation in flight is set right by its own commit's application.
    /// Returns false when the engine or a replica could not be brought in line (the
    /// reconcile loop retries).
    package func applyCommitted(_ change: TableChange, previous: AdapterTable) async -> Bool {
        if case .replicas(let replicated) = self.hosting {
            do throws(Status) {
                let outcome = try await replicated.reconcile(with: self.replica.snapshot(), asDrift: false)
                return outcome.failed.isEmpty
            } catch {
                self.logger.warning(
                    "upstream replicas did not take a committed change; the reconcile loop retries", metadata: ["error": "\(error)"])
                return false
            }
        }
        let epoch = self.epoch
        do throws(Status) {
            let held = try await self.engine.listAdapters()
            // A load of the same name that lost the race on this node holds the name under an
            // id no committed record has: it gives way (its own rollback then finds it gone).
            for record in change.upserts {
                for stale in held
                where stale.name == record.name && stale.intID != record.intID
                    && !previous.adapters.contains(where: { $0.intID == stale.intID })
                {
                    try await self.engine.removeAdapter(RemoveAdapterRequest(epoch: epoch, intID: stale.intID))
                }
            }
            for record in change.upserts where !held.contains(where: { $0.intID == record.intID && $0.path == record.path }) {
                try await self.engine.addAdapter(
                    AddAdapterRequest(
                        epoch: epoch, name: record.name, intID: record.intID, path: record.path, pinned: record.pinned,
                        replace: held.contains { $0.intID == record.intID }))
            }
            for name in change.removes {
                guard let old = previous.adapters.first(where: { $0.name == name }), held.contains(where: { $0.intID == old.intID }),
                    !change.upserts.contains(where: { $0.intID == old.intID })
                else { continue }
                try await self.engine.removeAdapter(RemoveAdapterRequest(epoch: epoch, intID: old.intID))
            }
            return true
        } catch {
            self.logger.warning("engine did not take a committed change; the reconcile loop retries", metadata: ["error": "\(error)"])
            return false
        }
    }

    /// What a reconciliation changed in the engine.
    package struct Reconciliation: Sendable {
        package var added: [String] = []
        package var removed: [UInt64] = []
        /// Adapters removed by name (upstream replicas: `name@replica`).
        package var removedNames: [String] = []
        package var failed: [String] = []
        package init() {}
        package var isEmpty: Bool { self.added.isEmpty && self.removed.isEmpty && self.removedNames.isEmpty && self.failed.isEmpty }
    }

    /// Makes the engine hold exactly the committed table: re-adds adapters it lacks (an
    /// engine restart comes back empty) and removes adapters no committed entry names (a
    /// leader that died between the engine call and the commit). Runs between mutations,
    /// never inside one. Adapters that no longer load are reported in `failed` and stay
    /// in the table (requests for them get an error until they load again); they are
    /// retried with exponential backoff (`ReconcileBackoff`), not on every pass.
    package func reconcileEngine() async throws(Status) -> Reconciliation {
        let result: Result<Reconciliation, Status> = await self.serializer.run {
            do throws(Status) {
                return .success(try await self.reconcileSerialized())
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    private func reconcileSerialized() async throws(Status) -> Reconciliation {
        var outcome = Reconciliation()
        let table = self.replica.snapshot()
        // Upstream replicas each hold their own adapters: reconciled one by one.
        if case .replicas(let replicated) = self.hosting { return try await replicated.reconcile(with: table, asDrift: true) }
        let held = try await self.engine.listAdapters()
        let epoch = self.epoch
        for adapter in held where !table.adapters.contains(where: { $0.intID == adapter.intID && $0.path == adapter.path }) {
            if table.adapters.contains(where: { $0.intID == adapter.intID }) { continue }  // replaced below
            try await self.engine.removeAdapter(RemoveAdapterRequest(epoch: epoch, intID: adapter.intID))
            outcome.removed.append(adapter.intID)
        }
        let missing = table.adapters.filter { record in
            !held.contains(where: { $0.intID == record.intID && $0.path == record.path })
        }
        let (due, waiting) = self.backoff.withLock { $0.schedule(missing, now: self.now()) }
        outcome.failed += waiting.map { "\($0.record.name): \($0.lastError)" }
        for record in due {
            do {
                try await self.engine.addAdapter(
                    AddAdapterRequest(
                        epoch: epoch, name: record.name, intID: record.intID, path: record.path, pinned: record.pinned,
                        replace: held.contains { $0.intID == record.intID }))
                outcome.added.append(record.name)
            } catch  where error.code == .failedPrecondition || error.code == .unavailable {
                throw error
            } catch {
                let wait = self.backoff.withLock { $0.recordFailure(.init(record), error: error.message, now: self.now()) }
                self.logger.debug(
                    "committed adapter does not load; retrying later",
                    metadata: ["adapter.name": "\(record.name)", "error": "\(error.message)", "retry.in": "\(wait)"])
                outcome.failed.append("\(record.name): \(error.message)")
            }
        }
        return outcome
    }

    /// A refusal read from this node's table (not found, already loaded, another id, table
    /// full). In a fleet the table may be stale: a fenced node (resumed after a stop, cut off
    /// from etcd) answers 503 instead, and an unfenced one answers once every live node
    /// applied what its table holds, so a 404 for an unload whose earlier try committed with
    /// an unknown outcome means no node serves the adapter any more, as a 200 would. What
    /// etcd decides (the transaction's compares) needs neither.
    private func refusalFromTable(
        _ code: StatusCode, _ message: String, param: String, version: UInt64
    ) async -> AdapterMutationReply {
        if self.replica.fence.isFleet {
            if let fenced = self.replica.fence.problem { return AdapterMutationReply(status: fenced, tableVersion: version) }
            do throws(Status) {
                try await self.committer.confirmFleetApplied(epoch: self.epoch)
            } catch {
                return Self.failure(
                    .unavailable,
                    "cluster unreachable: cannot confirm that every node applied the fleet's adapter table (\(error.message)); retry",
                    version: version)
            }
        }
        return Self.failure(code, message, param: param, version: version)
    }

    private static func failure(
        _ code: StatusCode, _ message: String, param: String = "", version: UInt64 = 0
    ) -> AdapterMutationReply {
        AdapterMutationReply(status: Status(code: code, message: message, param: param), tableVersion: version)
    }

    static func nowUnixMs() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }
}

/// The standalone committer: the worker is its own leader and its own table owner.
///
/// Applies each change to the local replica (version + 1) and, with a state directory,
/// first persists the resulting table (`adapters.pb`, `lorikeet.v1.AdapterTable` bytes:
/// write a temp file, fsync, rename, fsync the directory), so a restarted standalone
/// worker keeps its adapters and ids.
package final class LocalTableCommitter: TableCommitter {
    private let replica: AdapterTableReplica
    private let stateDirectory: String?
    private let lock = Mutex(())

    /// File name of the persisted table inside the state directory.
    package static let fileName = "adapters.pb"

    package init(replica: AdapterTableReplica, stateDirectory: String?) {
        self.replica = replica
        self.stateDirectory = stateDirectory
    }

    package func commit(_ change: TableChange, baseVersion: UInt64, epoch: UInt64) async throws(Status) -> UInt64 {
        try self.lock.withLock { _ throws(Status) -> UInt64 in
            let table = self.replica.snapshot()
            guard table.version == baseVersion, change.version == baseVersion + 1 else {
                throw Status(
                    code: .failedPrecondition,
                    message: "table moved: change based on version \(baseVersion), table is at \(table.version)")
            }
            // The same rules the supervisor enforces: ids never reused, reloads keep theirs.
            let next = try TableRules.apply(change, to: table).get()
            if let directory = self.stateDirectory {
                try Self.persist(next, directory: directory)
            }
            self.replica.apply(snapshot: next)
            return next.version
        }
    }

    /// The table persisted in `directory`, or nil when there is none yet.
    package static func loadPersisted(directory: String) throws(Status) -> AdapterTable? {
        do {
            let store = try StateStore(directory: directory, fileName: Self.fileName)
            guard access(store.path, F_OK) == 0 else { return nil }
            return try store.load()
        } catch {
            throw Status(code: .internal, message: "\(error)")
        }
    }

    /// Writes `table` durably: temp file, fsync, rename over `adapters.pb`, fsync the directory.
    package static func persist(_ table: AdapterTable, directory: String) throws(Status) {
        do {
            try StateStore(directory: directory, fileName: Self.fileName).save(table)
        } catch {
            throw Status(code: .internal, message: "cannot persist the adapter table: \(error)")
        }
    }
}
