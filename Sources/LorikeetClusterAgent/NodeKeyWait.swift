/// What a claim of the node key found (``ClusterAgent/claimNodeKey(_:_:lease:)``).
package enum NodeKeyClaim: Equatable, Sendable {
    /// The key is now under this agent's lease.
    case written
    /// The key exists under another lease; `incarnation` is the token in its value ("" if none).
    case heldBy(lease: Int64, incarnation: String)
}

/// How long the agent waits for a node key held under another lease, as a pure state
/// machine (tested without etcd).
///
/// - Held by this supervisor run's previous agent (same `incarnation`): its lease lapses by
///   itself, within one TTL of etcd having a leader. That can take any time while etcd is
///   down (a leader election renews every lease), so it is waited out, never an error.
/// - Held under another token: a previous run of this node's supervisor (gone within one TTL)
///   or a live node with the same `--node-name`. After `limitMs` of etcd answering "held"
///   without a break it is the latter. A call that fails (etcd unreachable) restarts that
///   clock, since no lease can lapse while etcd has no leader.
package struct NodeKeyWait: Sendable {
    package enum Decision: Equatable, Sendable {
        case claimed
        /// Wait: the key is this run's previous agent's. `firstTime` for this lease (log once).
        case waitForPredecessor(lease: Int64, firstTime: Bool)
        /// Wait: the key is under an unknown lease; not yet for long enough to judge.
        case waitForHolder(lease: Int64, firstTime: Bool)
        /// Another live node holds the name: stop (exit 78).
        case nameInUse(lease: Int64)
    }

    let incarnation: String
    let limitMs: Int64
    /// Start of an unbroken run of "held under an unknown lease" answers.
    private var heldSinceMs: Int64?
    /// The holder whose wait was last logged.
    private var reportedLease: Int64?

    package init(incarnation: String, limitMs: Int64) {
        self.incarnation = incarnation
        self.limitMs = limitMs
    }

    /// A claim failed (etcd unreachable or the outcome unknown): leases cannot lapse meanwhile.
    package mutating func unreachable() { self.heldSinceMs = nil }

    package mutating func observe(_ claim: NodeKeyClaim, nowMs: Int64) -> Decision {
        switch claim {
        case .written:
            self.heldSinceMs = nil
            self.reportedLease = nil
            return .claimed
        case .heldBy(let lease, let incarnation):
            let firstTime = self.reportedLease != lease
            self.reportedLease = lease
            if !incarnation.isEmpty && incarnation == self.incarnation {
                self.heldSinceMs = nil
                return .waitForPredecessor(lease: lease, firstTime: firstTime)
            }
            let since = self.heldSinceMs ?? nowMs
            self.heldSinceMs = since
            if nowMs - since >= self.limitMs { return .nameInUse(lease: lease) }
            return .waitForHolder(lease: lease, firstTime: firstTime)
        }
    }
}
