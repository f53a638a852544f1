import Foundation

/// When to try again to re-add a committed adapter the engine (or an upstream replica)
/// refused during reconciliation (its files were deleted or corrupted after the load was
/// acknowledged, or a replica's host lacks them).
///
/// The first retry comes after `initial`, each later one after twice the previous wait, up
/// to `maximum`; an adapter that loads again, leaves the table or changes path starts
/// over. So a broken adapter costs the engine one read a minute, not one a second, while a
/// repaired one is back within that minute (or at once on an explicit reload).
public struct ReconcileBackoff: Sendable {
    /// One committed entry: the same id at a new path is a new attempt.
    public struct Key: Hashable, Sendable {
        public var intID: UInt64
        public var path: String
    }

    private struct Entry: Sendable {
        var failures: Int
        var nextAttempt: ContinuousClock.Instant
        var lastError: String
    }

    public let initial: Duration
    public let maximum: Duration
    private var entries: [Key: Entry] = [:]

    public init(initial: Duration = .seconds(1), maximum: Duration = .seconds(60)) {
        self.initial = initial
        self.maximum = maximum
    }

    /// The last error of `key` when it is still waiting for its next attempt at `now`,
    /// nil when it may be tried.
    func waiting(_ key: Key, now: ContinuousClock.Instant) -> String? {
        guard let entry = self.entries[key], now < entry.nextAttempt else { return nil }
        return entry.lastError
    }

    /// Records a failed attempt at `now`; returns how long until the next one.
    @discardableResult
    mutating func recordFailure(_ key: Key, error: String, now: ContinuousClock.Instant) -> Duration {
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
