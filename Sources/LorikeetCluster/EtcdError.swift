/// Why an etcd call failed: a closed set, each case with a message an operator can act on.
///
/// The gateway's gRPC status codes map as follows: UNAVAILABLE (14: "no leader", "request
/// timed out", "leader changed") is `unavailable`; DEADLINE_EXCEEDED (4) is `timeout`;
/// NOT_FOUND (5) for a lease is `leaseNotFound`; OUT_OF_RANGE (11, "required revision has
/// been compacted") is `compacted`; INVALID_ARGUMENT (3) on `/v3/kv/txn` is `txnFailed`;
/// every other code is `rejected`.
package enum EtcdError: Error, Sendable, Equatable, CustomStringConvertible {
    /// No endpoint accepted a connection (all members down, wrong address, firewall).
    case unreachable(String)
    /// No answer within the call's deadline. For a write the outcome is unknown: read back
    /// before retrying (commits are compare-and-swap transactions for that reason).
    case timeout(String)
    /// The cluster answered but cannot serve: no leader (quorum lost), or the request timed
    /// out inside etcd. Heals by itself when a quorum of members is back.
    case unavailable(String)
    /// A write reached a member and then failed without an answer (the member went quiet,
    /// closed the connection, or said its proposal timed out): it may have been applied, now
    /// or later. Read back before retrying; the message says what happened.
    case outcomeUnknown(String)
    /// History before `revision` is gone: a watch's `compact_revision`, or for a range, the
    /// revision that was asked for. Reload with a range at the current revision and watch
    /// again from there.
    case compacted(revision: Int64)
    /// The lease does not exist (expired or revoked): keys attached to it are gone.
    case leaseNotFound(id: Int64)
    /// etcd refused the transaction itself (duplicate key, too many operations): a bug in
    /// the caller, not a failed compare (a failed compare is `succeeded == false`).
    case txnFailed(String)
    /// etcd refused the request for another reason (request too large, bad argument).
    case rejected(String)
    /// A response (or one watch message) was larger than the configured cap
    /// (`Limits.etcdResponseBytes` by default); its connection was closed.
    case responseTooLarge(limit: Int)
    /// The member sent something that is not the gateway's JSON (a proxy in the way, or a
    /// version of etcd without the `/v3/` gateway).
    case badResponse(String)
    /// An endpoint or argument given to the client is unusable.
    case invalidArgument(String)
    /// The calling task was cancelled.
    case cancelled
    /// `EtcdClient.shutdown()` was called.
    case shutdown

    package var description: String {
        switch self {
        case .unreachable(let message): "etcd unreachable: \(message)"
        case .timeout(let message): "etcd call timed out: \(message)"
        case .unavailable(let message): "etcd unavailable (no quorum or no leader?): \(message)"
        case .outcomeUnknown(let message): "etcd write outcome unknown (it may have been applied; read back): \(message)"
        case .compacted(let revision): "etcd history compacted: revision \(revision) is no longer available; reload and watch again"
        case .leaseNotFound(let id): "etcd lease \(id) not found (expired or revoked)"
        case .txnFailed(let message): "etcd refused the transaction: \(message)"
        case .rejected(let message): "etcd refused the request: \(message)"
        case .responseTooLarge(let limit): "etcd response larger than \(limit) bytes; refused"
        case .badResponse(let message): "unexpected response from etcd: \(message)"
        case .invalidArgument(let message): "invalid etcd argument: \(message)"
        case .cancelled: "etcd call cancelled"
        case .shutdown: "etcd client shut down"
        }
    }

    /// Whether another member may succeed where this one failed (used by failover).
    var triesNextMember: Bool {
        switch self {
        case .unreachable, .timeout, .unavailable: true
        default: false
        }
    }
}
