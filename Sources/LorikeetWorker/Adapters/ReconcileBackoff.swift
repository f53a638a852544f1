import Foundation
package import LorikeetProto

/// When to try again to re-add a committed adapter the engine (or an upstream replica)
/// refused during reconciliation (its files were deleted or corrupted after the load was
/// acknowledged, or a replica's host lacks them).
///
/// The first retry comes after `initial`, each later one after twice the previous wait, up
/// to `maximum`; an adapter that loads again, leaves the table or changes path starts
/// over. So a broken adapter costs the engine one read a minute, not one a second, while a
/// repaired one is back within that minute (or at once on an explicit reload).
package struct ReconcileBackoff: Sendable {
    /// One committed entry: the same id at a new path is a new attempt.
    package struct Key: Hashable, Sendable {
        package var intID: UInt64
        package var path: String

        /// The key of a committed record.
        package init(_ record: AdapterRecord) { self.init(intID: record.intID, path: record.path) }

        package init(intID: UInt64, path: String) {
            self.intID = intID
            self.path = path
        }
    }

    private struct Entry: Sendable {
        var failures: Int
        var nextAttempt: ContinuousClock.Instant
        var lastError: String
    }

    package let initial: Duration
    package let maximum: Duration
    private var entries: [Key: Entry] = [:]

    package init(initial: Duration = .seconds(1), maximum: Duration = .seconds(60)) {
        self.initial = initial
        self.maximum = maximum
    }

    /// Splits the committed records the engine (or a replica) lacks into those to try now
    /// and those still waiting after a refusal (with the refusal), and forgets every other
    /// entry (loaded again, unloaded, or moved).
    package mutating func schedule(
        _ pending: [AdapterRecord], now: ContinuousClock.Instant
    ) -> (due: [AdapterRecord], waiting: [(record: AdapterRecord, lastError: String)]) {
        self.retain(only: Set(pending.map(Key.init)))
        var due: [AdapterRecord] = []
        var waiting: [(record: AdapterRecord, lastError: String)] = []
        for record in pending {
            if let lastError = self.waiting(Key(record), now: now) {
                waiting.append((record, lastError))
            } else {
                due.append(record)
            }
        }
        return (due, waiting)
    }

    /// The last error of `key` when it is still waiting for its next attempt at `now`,
    /// nil when it may be tried.
    func waiting(_ key: Key, now: ContinuousClock.Instant) -> String? {
        guard let entry = self.entries[key], now < entry.nextAttempt else { return nil }
        return entry.lastError
    }

    /// Records a failed attempt at `now`; returns how long until the next one.
    @discardableResult
    package mutating func recordFailure(_ key: Key, error: String, now: ContinuousClock.Instant) -> Duration {
        let failures = (self.entries[key]?.failures ?? 0) + 1
        var wait = self.initial
        for _ in 1..<failures where wait < self.maximum { wait *= 2 }
        wait = min(wait, self.maximum)
        self.entries[key] = Entry(failures: failures, nextAttempt: now + wait, lastError: error)
        return wait
    }

    /// Forgets every key not in `pending` (loaded again, unloaded, or moved).
    mutating func retain(only pending: Set<Key>) {
        self.entries = self.entries.filter { pending.contains($0.key) }
    }

    /// Failed attempts recorded for `key` since it last loaded.
    func failures(_ key: Key) -> Int { self.entries[key]?.failures ?? 0 }
}
