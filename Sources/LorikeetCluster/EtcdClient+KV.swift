import LorikeetJSON
import LorikeetLimits

extension EtcdClient {
    // MARK: Keys

    /// Reads `key`, or every key starting with it when `prefix` (`/v3/kv/range`), at
    /// `revision` (nil = the latest; linearizable: a member without a leader refuses).
    /// `compacted` when `revision` was compacted away.
    package func range(
        key: String, prefix: Bool = false, revision: Int64? = nil, timeout: Duration? = nil
    ) async throws(EtcdError) -> EtcdRangeResult {
        var request = EtcdJSON.range(key, prefix: prefix)
        if let revision { request.append(("revision", EtcdJSON.string(revision))) }
        let response = try await self.call("/v3/kv/range", .object(request), idempotent: true, timeout: timeout, revision: revision)
        return try EtcdJSON.rangeResult(response)
    }

    /// Writes `value` at `key`, attached to `lease` (0 = none); returns the revision of the
    /// write. `leaseNotFound` when the lease has expired.
    @discardableResult
    package func put(key: String, value: [UInt8], lease: Int64 = 0, timeout: Duration? = nil) async throws(EtcdError) -> Int64 {
        var request: [(String, JSONValue)] = [("key", EtcdJSON.key(key)), ("value", EtcdJSON.bytes(value))]
        if lease != 0 { request.append(("lease", EtcdJSON.string(lease))) }
        let response = try await self.call("/v3/kv/put", .object(request), idempotent: false, timeout: timeout, leaseID: lease)
        return try EtcdJSON.revision(response)
    }

    /// Writes a UTF-8 string value.
    @discardableResult
    package func put(key: String, value: String, lease: Int64 = 0, timeout: Duration? = nil) async throws(EtcdError) -> Int64 {
        try await self.put(key: key, value: Array(value.utf8), lease: lease, timeout: timeout)
    }

    /// Deletes `key`, or every key starting with it when `prefix`; returns how many keys
    /// were deleted and the store's revision after it.
    @discardableResult
    package func delete(key: String, prefix: Bool = false, timeout: Duration? = nil) async throws(EtcdError) -> (
        deleted: Int64, revision: Int64
    ) {
        let response = try await self.call(
            "/v3/kv/deleterange", .object(EtcdJSON.range(key, prefix: prefix)), idempotent: false, timeout: timeout)
        return (try EtcdJSON.int64(response, "deleted"), try EtcdJSON.revision(response))
    }

    /// Runs `success` when every `compare` holds, else `failure`, atomically
    /// (`/v3/kv/txn`): the compare-and-swap every fleet commit is made of. A failed compare
    /// is `succeeded == false`, not an error; `txnFailed` means etcd refused the
    /// transaction itself (e.g. two operations on one key).
    package func txn(
        compare: [EtcdCompare], success: [EtcdOp], failure: [EtcdOp] = [], timeout: Duration? = nil
    ) async throws(EtcdError) -> EtcdTxnResult {
        let request: JSONValue = .object([
            ("compare", .array(compare.map(EtcdJSON.compare))),
            ("success", .array(success.map(EtcdJSON.requestOp))),
            ("failure", .array(failure.map(EtcdJSON.requestOp))),
        ])
        let response = try await self.call("/v3/kv/txn", request, idempotent: false, timeout: timeout)
        let revision = try EtcdJSON.revision(response)
        var results: [EtcdOpResult] = []
        for result in try EtcdJSON.array(response, "responses") {
            results.append(try EtcdJSON.opResult(result, txnRevision: revision))
        }
        return EtcdTxnResult(succeeded: try EtcdJSON.bool(response, "succeeded"), results: results, revision: revision)
    }

    /// Compacts the history up to `revision` (`/v3/kv/compaction`, physical): watches and
    /// ranges from older revisions then fail with `compacted`. For operators and tests.
    package func compact(revision: Int64, timeout: Duration? = nil) async throws(EtcdError) {
        let request: JSONValue = .object([("revision", EtcdJSON.string(revision)), ("physical", .bool(true))])
        _ = try await self.call("/v3/kv/compaction", request, idempotent: true, timeout: timeout, revision: revision)
    }

    // MARK: Leases

    /// Grants a lease of `ttl` seconds (`/v3/lease/grant`); etcd may round it up to its
    /// minimum (1.5 × election timeout).
    package func grantLease(ttl: Int64, timeout: Duration? = nil) async throws(EtcdError) -> EtcdLease {
        let response = try await self.call(
            "/v3/lease/grant", .object([("TTL", EtcdJSON.string(ttl))]), idempotent: false, timeout: timeout)
        if let error = response["error"]?.stringValue, !error.isEmpty { throw .rejected(error.echoed()) }
        let lease = EtcdLease(id: try EtcdJSON.int64(response, "ID"), ttl: try EtcdJSON.int64(response, "TTL"))
        guard lease.id != 0 else { throw .badResponse("lease grant without an ID") }
        return lease
    }

    /// Renews lease `id` once (`/v3/lease/keepalive`, one message on the stream); returns
    /// the remaining TTL in seconds — 0 when the lease no longer exists.
    package func keepAliveOnce(_ id: Int64, timeout: Duration? = nil) async throws(EtcdError) -> Int64 {
        let response = try await self.call(
            "/v3/lease/keepalive", .object([("ID", EtcdJSON.string(id))]), idempotent: true, timeout: timeout, leaseID: id)
        return max(try EtcdJSON.int64(response, "TTL"), 0)
    }

    /// Revokes lease `id` (`/v3/lease/revoke`): every key attached to it is deleted.
    /// `leaseNotFound` when it had already expired.
    package func revoke(_ id: Int64, timeout: Duration? = nil) async throws(EtcdError) {
        _ = try await self.call(
            "/v3/lease/revoke", .object([("ID", EtcdJSON.string(id))]), idempotent: false, timeout: timeout, leaseID: id)
    }

    /// The remaining life of lease `id` and the keys attached to it (`/v3/lease/timetolive`).
    package func timeToLive(_ id: Int64, timeout: Duration? = nil) async throws(EtcdError) -> EtcdLeaseTimeToLive {
        let request: JSONValue = .object([("ID", EtcdJSON.string(id)), ("keys", .bool(true))])
        let response = try await self.call("/v3/lease/timetolive", request, idempotent: true, timeout: timeout, leaseID: id)
        let ttl = try EtcdJSON.int64(response, "TTL")
        var keys: [String] = []
        for key in try EtcdJSON.array(response, "keys") {
            guard let text = key.stringValue, let bytes = Base64.decode(text) else { throw .badResponse("lease key is not base64") }
            keys.append(String(decoding: bytes, as: UTF8.self))
        }
        return EtcdLeaseTimeToLive(id: id, ttl: ttl < 0 ? nil : ttl, grantedTTL: try EtcdJSON.int64(response, "grantedTTL"), keys: keys)
    }
}
