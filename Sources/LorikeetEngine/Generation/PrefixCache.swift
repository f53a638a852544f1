/// The key/value caches of finished sequences, kept so that a later prompt starting with
/// the same tokens, on the same adapter, copies those positions instead of computing them
/// (vLLM's automatic prefix caching, kept per sequence rather than per block): a repeated
/// system prompt, few-shot examples, or a chat's earlier turns cost no second prefill.
///
/// The keys and values of a position depend only on the tokens up to it and the weights,
/// so a copied position holds exactly the bits the sequence would have computed, and the
/// output is the same as without the cache. Entries are keyed by adapter id *and* the
/// adapter's load generation (an adapter replaced under the same id never matches the old
/// weights' entries, and a removed adapter's entries are never matched again: they age out),
/// and by the request's `cache_salt` (tenants that set one share nothing with others).
///
/// Matches count in whole blocks of `blockSize` positions, as vLLM's: a client that probes
/// with prompts of its own learns from `cached_tokens` or the time to its first token only
/// whether another prompt shared a whole further block with it, never token by token.
///
/// Bounded by `capacity` bytes of kept caches (`--prefix-cache-mib`), counted as the pages
/// they hold (`KVCache.residentBytes`, after `KVCache.release(beyond:)` gave back the rest of
/// the reservation); the least recently used entries go first. An entry whose tokens start
/// another's is dropped in favour of the longer one, so repeating one conversation keeps one
/// entry.
///
/// Touched only by the scheduler thread, so not `Sendable`.
final class PrefixCache {
    /// Who may reuse an entry: the same weights (adapter id and load generation; nil for
    /// the base model) and the same `cache_salt`.
    struct Key: Equatable {
        var adapter: UInt64?
        var generation: UInt64 = 0
        var salt: String?
    }

    private struct Entry {
        var key: Key
        var tokens: [UInt32]
        var cache: KVCache
        var bytes: Int
        var lastUse: UInt64
    }

    /// Positions per block (vLLM's default block size): matches are whole blocks, and a
    /// sequence shorter than one block is not kept.
    static let blockSize = 16

    /// `count` rounded down to whole blocks.
    static func wholeBlocks(_ count: Int) -> Int { count / Self.blockSize * Self.blockSize }

    /// Bytes all entries together may hold.
    let capacity: Int
    /// Bytes held now.
    private(set) var heldBytes = 0
    private var entries: [Entry] = []
    private var clock: UInt64 = 0

    /// A cache of at most `capacity` bytes (0: keeps nothing).
    init(capacity: Int) {
        self.capacity = max(0, capacity)
    }

    /// Number of entries.
    var count: Int { self.entries.count }

    /// Keeps `cache`, whose first `tokens.count` positions hold `tokens` computed with the
    /// weights and salt of `key`. The caller gives the cache up (it is never written again).
    func insert(tokens: [UInt32], key: Key, cache: KVCache) {
        guard tokens.count >= Self.blockSize, cache.length >= tokens.count else { return }
        self.clock += 1
        // An entry that already holds these tokens (or more) is as good: keep it, fresher.
        if let i = self.entries.firstIndex(where: { $0.key == key && $0.tokens.starts(with: tokens) }) {
            self.entries[i].lastUse = self.clock
            return
        }
        cache.release(beyond: tokens.count)
        let bytes = cache.residentBytes
        guard bytes <= self.capacity else { return }
        // Entries the new one extends are now redundant.
        self.entries.removeAll { entry in
            guard entry.key == key, tokens.starts(with: entry.tokens) else { return false }
            self.heldBytes -= entry.bytes
            return true
        }
        while self.heldBytes + bytes > self.capacity,
            let oldest = self.entries.indices.min(by: { self.entries[$0].lastUse < self.entries[$1].lastUse })
        {
            self.heldBytes -= self.entries[oldest].bytes
            self.entries.remove(at: oldest)
        }
        self.entries.append(Entry(key: key, tokens: tokens, cache: cache, bytes: bytes, lastUse: self.clock))
        self.heldBytes += bytes
    }

    /// The entry sharing the longest prefix with `prompt` (same key), and how many of its
    /// positions to copy: whole blocks, at most `limit`; nil below one block.
    func longestPrefix(of prompt: [UInt32], key: Key, limit: Int) -> (source: KVCache, count: Int)? {
        var best: (index: Int, count: Int)?
        for (i, entry) in self.entries.enumerated() where entry.key == key {
            let count = Self.wholeBlocks(Self.commonPrefix(entry.tokens, prompt, limit: limit))
            if count > (best?.count ?? 0) { best = (i, count) }
        }
        guard let best else { return nil }
        self.clock += 1
        self.entries[best.index].lastUse = self.clock
        return (self.entries[best.index].cache, best.count)
    }

    /// Leading positions where `a` and `b` agree, at most `limit`.
    static func commonPrefix(_ a: [UInt32], _ b: [UInt32], limit: Int) -> Int {
        let n = min(a.count, b.count, limit)
        var i = 0
        while i < n && a[i] == b[i] { i += 1 }
        return i
    }
}
