/// Invariants of a committed table, checked on load and on every commit.
package enum TableRules {
    /// vLLM's message for a name already loaded without `load_inplace` (HTTP 400).
    package static func alreadyLoadedMessage(_ name: String) -> String {
        "The lora adapter '\(name)' has already been loaded. If you want to load the adapter in place, set 'load_inplace' to True."
    }

    /// A reason the table is inconsistent, or nil.
    package static func inconsistency(in table: AdapterTable) -> String? {
        var names = Set<String>()
        var ids = Set<UInt64>()
        for adapter in table.adapters {
            if adapter.name.isEmpty { return "an adapter has an empty name" }
            if adapter.intID == 0 { return "adapter \(adapter.name) has id 0" }
            if !names.insert(adapter.name).inserted { return "adapter name \(adapter.name) appears twice" }
            if !ids.insert(adapter.intID).inserted { return "adapter id \(adapter.intID) appears twice" }
            if adapter.intID >= table.nextIntID { return "adapter \(adapter.name) has id \(adapter.intID) >= next id \(table.nextIntID)" }
        }
        return nil
    }

    /// Applies a proposed change to `table`, enforcing that ids are never reused:
    /// a new name needs an id >= the table's next id; a reload keeps its id. The result is
    /// at the next version.
    ///
    /// Also the inner re-check of the limits the HTTP edge enforces: every upserted record
    /// passes `AdapterFieldRules` (`INVALID_ARGUMENT`), removed names are within the name
    /// limit, and a change that grows the table beyond `maxAdapters` is refused
    /// (`FAILED_PRECONDITION`; a table already above it, after the operator lowered
    /// `--max-adapters`, may still shrink or reload in place).
    package static func apply(
        _ change: TableChange, to table: AdapterTable, maxAdapters: Int = Limits.maxAdaptersCeiling
    ) -> Result<AdapterTable, Status> {
        for record in change.upserts {
            if let problem = record.fieldProblem { return .failure(problem) }
        }
        for name in change.removes {
            if let problem = AdapterFieldRules.problem(name: name) { return .failure(problem) }
        }
        var ids = Dictionary(table.adapters.map { ($0.name, $0.intID) }, uniquingKeysWith: { first, _ in first })
        for name in change.removes where ids.removeValue(forKey: name) == nil {
            return .failure(Status(code: .notFound, message: "cannot remove \(name): not in the committed table"))
        }
        var nextID = max(table.nextIntID, 1)
        for record in change.upserts {
            if let id = ids[record.name] {
                guard id == record.intID else {
                    return .failure(Status(code: .failedPrecondition, message: "reload of \(record.name) must keep id \(id)"))
                }
            } else {
                guard record.intID >= nextID else {
                    return .failure(
                        Status(
                            code: .failedPrecondition,
                            message: "id \(record.intID) for \(record.name) was already used (next id is \(nextID))"))
                }
                nextID = record.intID + 1
            }
            ids[record.name] = record.intID
        }
        var committed = change
        committed.version = table.version + 1
        committed.nextIntID = max(nextID, change.nextIntID)
        let next = table.applying(committed)
        if next.adapters.count > maxAdapters && next.adapters.count > table.adapters.count {
            return .failure(
                Status(
                    code: .failedPrecondition,
                    message:
                        "the adapter table is full (\(table.adapters.count) adapters; --max-adapters is \(maxAdapters)); unload one first"))
        }
        if let problem = inconsistency(in: next) { return .failure(Status(code: .failedPrecondition, message: problem)) }
        return .success(next)
    }
}

extension AdapterTable {
    /// This table with a committed change applied: removes, then upserts by name; the
    /// version becomes the change's, and the next id never goes back. (No validation:
    /// `TableRules.apply` validates proposals; replicas apply what was committed.)
    package func applying(_ change: TableChange) -> AdapterTable {
        var next = self
        let removed = Set(change.removes)
        next.adapters.removeAll { removed.contains($0.name) }
        for record in change.upserts {
            if let index = next.adapters.firstIndex(where: { $0.name == record.name }) {
                next.adapters[index] = record
            } else {
                next.adapters.append(record)
            }
        }
        next.version = change.version
        next.nextIntID = max(next.nextIntID, change.nextIntID)
        return next
    }
}
