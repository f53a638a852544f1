/// One key of etcd's store as a range or a watch returns it (`mvccpb.KeyValue`: `key`,
/// `value`, `create_revision`, `mod_revision`, `version`, `lease`).
package struct EtcdKeyValue: Sendable, Equatable {
    /// The key, decoded as UTF-8 (Lorikeet writes UTF-8 paths; foreign bytes become U+FFFD).
    package var key: String
    package var value: [UInt8]
    /// Revision of the transaction that created the key (0 for a delete event's kv).
    package var createRevision: Int64
    /// Revision of the last change to the key.
    package var modRevision: Int64
    /// Number of changes since the key was created (1 = just created; 0 after a delete).
    package var version: Int64
    /// The lease the key is attached to, 0 for none.
    package var lease: Int64

    package init(key: String, value: [UInt8], createRevision: Int64, modRevision: Int64, version: Int64, lease: Int64) {
        self.key = key
        self.value = value
        self.createRevision = createRevision
        self.modRevision = modRevision
        self.version = version
        self.lease = lease
    }

    /// The value decoded as UTF-8.
    package var valueString: String { String(decoding: self.value, as: UTF8.self) }
}

/// The answer to a range (`RangeResponse`): the keys and the store's revision when read.
package struct EtcdRangeResult: Sendable, Equatable {
    package var kvs: [EtcdKeyValue]
    /// Keys in the range (may exceed `kvs.count` when a limit was set).
    package var count: Int64
    /// Whether more keys exist than were returned.
    package var more: Bool
    /// `header.revision`: the store's revision the range was read at. Watch from
    /// `revision + 1` to see every later change.
    package var revision: Int64
}

/// One condition of a transaction (`Compare`): `key`'s `target` compared with a value.
/// A key that does not exist has version, create and mod revision 0.
package struct EtcdCompare: Sendable, Equatable {
    /// Which property of the key is compared, with the value to compare it with.
    package enum Target: Sendable, Equatable {
        case version(Int64)
        case createRevision(Int64)
        case modRevision(Int64)
        case value([UInt8])
        case lease(Int64)
    }

    /// `Compare.CompareResult`.
    package enum Result: String, Sendable, Equatable {
        case equal = "EQUAL"
        case notEqual = "NOT_EQUAL"
        case greater = "GREATER"
        case less = "LESS"
    }

    package var key: String
    package var result: Result
    package var target: Target

    package init(key: String, _ result: Result, _ target: Target) {
        self.key = key
        self.result = result
        self.target = target
    }

    /// The key does not exist (version == 0): "create only if absent".
    package static func absent(_ key: String) -> EtcdCompare { EtcdCompare(key: key, .equal, .version(0)) }

    /// The key was last changed at `revision` (0 = absent): "update only if unchanged".
    package static func unchanged(_ key: String, since revision: Int64) -> EtcdCompare {
        EtcdCompare(key: key, .equal, .modRevision(revision))
    }
}

/// One operation of a transaction (`RequestOp`).
package enum EtcdOp: Sendable, Equatable {
    /// Writes `value` at `key`, attached to `lease` (0 = none).
    case put(key: String, value: [UInt8], lease: Int64 = 0)
    /// Deletes `key`, or every key starting with it when `prefix`.
    case delete(key: String, prefix: Bool = false)
    /// Reads `key`, or every key starting with it when `prefix`.
    case range(key: String, prefix: Bool = false)
}

/// The result of one `EtcdOp` in a transaction (`ResponseOp`).
package enum EtcdOpResult: Sendable, Equatable {
    case put
    case delete(deleted: Int64)
    case range(EtcdRangeResult)
}

/// The answer to a transaction (`TxnResponse`).
package struct EtcdTxnResult: Sendable, Equatable {
    /// Whether every compare held (then `success` ran, else `failure`).
    package var succeeded: Bool
    /// One result per operation of the branch that ran.
    package var results: [EtcdOpResult]
    /// `header.revision`: the store's revision after the transaction (the revision of its
    /// writes when it wrote anything).
    package var revision: Int64
}

/// A granted lease (`LeaseGrantResponse`).
package struct EtcdLease: Sendable, Equatable {
    package var id: Int64
    /// Seconds the lease lives without a renewal, as etcd granted it.
    package var ttl: Int64

    package init(id: Int64, ttl: Int64) {
        self.id = id
        self.ttl = ttl
    }
}

/// A lease's remaining life (`LeaseTimeToLiveResponse`).
package struct EtcdLeaseTimeToLive: Sendable, Equatable {
    package var id: Int64
    /// Remaining seconds; nil when the lease does not exist (etcd's `-1`).
    package var ttl: Int64?
    package var grantedTTL: Int64
    package var keys: [String]
}

/// One change seen by a watch (`mvccpb.Event`).
package struct EtcdWatchEvent: Sendable, Equatable {
    package enum Kind: Sendable, Equatable {
        case put
        case delete
    }

    package var kind: Kind
    /// The key after the change; for a delete, only `key` and `modRevision` are set.
    package var kv: EtcdKeyValue

    /// The revision of the change. Changes of one transaction share a revision and arrive
    /// together, in the order of the transaction's operations.
    package var revision: Int64 { self.kv.modRevision }
}

extension String {
    /// The end of the range of keys starting with this prefix (etcd's `range_end`): the
    /// prefix with its last byte below 0xFF incremented; "\0" (every key) for "".
    var prefixRangeEnd: [UInt8] {
        var bytes = Array(self.utf8)
        while let last = bytes.last {
            if last < 0xFF {
                bytes[bytes.count - 1] = last + 1
                return bytes
            }
            bytes.removeLast()
        }
        return [0]
    }
}
