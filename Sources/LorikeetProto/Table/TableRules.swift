/// Invariants of a committed table, checked on load and on every commit.
public enum TableRules {
    /// A reason the table is inconsistent, or nil.
    public static func inconsistency(in table: AdapterTable) -> String? {
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
    /// a new name needs an id >= the table's next id; a reload keeps its id.
    public static func apply(_ change: TableChange, to table: AdapterTable) -> Result<AdapterTable, Status> {
        var next = table
        for name in change.removes {
            guard let index = next.adapters.firstIndex(where: { $0.name == name }) else {
                return .failure(Status(code: .notFound, message: "cannot remove \(name): not in the committed table"))
            }
            next.adapters.remove(at: index)
        }
        var nextID = max(table.nextIntID, 1)
        for record in change.upserts {
            if let index = next.adapters.firstIndex(where: { $0.name == record.name }) {
                guard next.adapters[index].intID == record.intID else {
                    return .failure(Status(code: .failedPrecondition, message: "reload of \(record.name) must keep id \(next.adapters[index].intID)"))
                }
                next.adapters[index] = record
            } else {
                guard record.intID >= nextID else {
                    return .failure(Status(code: .failedPrecondition, message: "id \(record.intID) for \(record.name) was already used (next id is \(nextID))"))
                }
                next.adapters.append(record)
                nextID = record.intID + 1
            }
        }
        next.nextIntID = max(nextID, change.nextIntID)
        next.version = table.version + 1
        if let problem = inconsistency(in: next) { return .failure(Status(code: .failedPrecondition, message: problem)) }
        return .success(next)
    }
}
