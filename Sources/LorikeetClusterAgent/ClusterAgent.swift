package import Logging
import LorikeetChannels
package import LorikeetCluster
import LorikeetProto

#if canImport(Glibc)
    import Glibc
#endif

/// What `lorikeet cluster-agent` is told by the supervisor (from `serve --cluster-*`).
package struct ClusterAgentConfiguration: Sendable {
    /// etcd client URLs (`--cluster-endpoints`).
    package var endpoints: [String]
    /// Key prefix (`--cluster-name`).
    package var clusterName: String
    /// This node's name (`--node-name`), unique in the fleet.
    package var nodeName: String
    /// TTL of the node's lease (`--cluster-lease-seconds`).
    package var leaseSeconds: Int64
    /// Reported in the node key.
    package var version: String
    /// The supervisor run's token (`--incarnation`), written into the node key: a key under
    /// another lease with this token is this node's previous agent, waited out, never an error.
    package var incarnation: String

    package init(
        endpoints: [String], clusterName: String, nodeName: String, leaseSeconds: Int64, version: String, incarnation: String
    ) {
        self.endpoints = endpoints
        self.clusterName = clusterName
        self.nodeName = nodeName
        self.leaseSeconds = leaseSeconds
        self.version = version
        self.incarnation = incarnation
    }
}

/// Why the agent stopped (`lorikeet cluster-agent` exits with status 1; the supervisor
/// restarts it).
package enum ClusterAgentError: Error, Sendable, CustomStringConvertible {
    /// The cluster channel to the supervisor ended or could not be used.
    case supervisorGone(String)

    package var description: String {
        switch self {
        case .supervisorGone(let reason): "the supervisor is gone: \(reason)"
        }
    }
}

/// The cluster agent: the node's only etcd client in fleet mode (`docs/CLUSTER.md`).
///
/// It holds the node's lease, follows the fleet's keys (range, then a watch from that
/// revision; a compaction reloads), pushes the committed table to the supervisor at every
/// adapter change (`ClusterTable`), publishes the revision the supervisor applied in the
/// node key, reserves ids and commits changes as etcd transactions, and answers a commit
/// only once every node key shows the commit applied (or has vanished with its lease).
/// Its cluster channel (a socketpair, fd 3) carries `lorikeet.v1.ClusterEnvelope` frames.
package final class ClusterAgent: Sendable {
    let configuration: ClusterAgentConfiguration
    let keys: ClusterKeys
    let logger: Logger
    let client: EtcdClient
    let link: FramedCallClient<ClusterEnvelope>
    let state: AgentState
    private let inbound: AsyncStream<Inbound>
    private let inboundSink: AsyncStream<Inbound>.Continuation
    private let publishes: AsyncStream<Void>
    private let publishSink: AsyncStream<Void>.Continuation

    private enum Inbound: Sendable {
        case message(ClusterEnvelope)
        case lost(String)
    }

    /// An agent on the cluster channel `controlFD`, with an etcd client of `configuration.endpoints`.
    package init(configuration: ClusterAgentConfiguration, controlFD: Int32, logger: Logger) throws(EtcdError) {
        self.configuration = configuration
        self.keys = ClusterKeys(clusterName: configuration.clusterName)
        self.logger = logger
        self.client = try EtcdClient(endpoints: configuration.endpoints, logger: logger)
        let (inbound, inboundSink) = AsyncStream.makeStream(of: Inbound.self)
        self.inbound = inbound
        self.inboundSink = inboundSink
        let (publishes, publishSink) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        self.publishes = publishes
        self.publishSink = publishSink
        self.link = FramedCallClient(
            endpoint: .connectedSocket(fd: controlFD),
            configuration: .init(maximumFrameSize: Limits.channelFrameBytes, firstCallID: 1 << 63),
            logger: logger,
            onUnsolicited: { inboundSink.yield(.message($0)) },
            onConnectionLost: { inboundSink.yield(.lost($0)) })
        self.state = AgentState(
            nodeName: configuration.nodeName, link: self.link, commitWaitLimit: .seconds(max(configuration.leaseSeconds, 1) * 3),
            publish: publishSink, logger: logger)
    }

    /// Runs until the supervisor goes away (throws `ClusterAgentError.supervisorGone`).
    package func run() async throws {
        do {
            try await self.link.connect()
        } catch {
            throw ClusterAgentError.supervisorGone("cannot use the cluster channel: \(error)")
        }
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { await self.keepLease() }
            group.addTask { await self.followStore() }
            group.addTask { await self.publishNodeKey() }
            group.addTask { await self.expireCommits() }
            for await inbound in self.inbound {
                switch inbound {
                case .lost(let reason):
                    throw ClusterAgentError.supervisorGone(reason)
                case .message(let envelope):
                    group.addTask { await self.handle(envelope) }
                }
            }
            throw ClusterAgentError.supervisorGone("the cluster channel ended")
        }
    }

    /// Leaving the fleet (after `run()`): revokes the lease, which deletes the node key, and
    /// closes the etcd client.
    package func leave() async {
        defer { self.client.shutdown() }
        guard let lease = await self.state.lease else { return }
        do throws(EtcdError) {
            try await self.client.revoke(lease, timeout: .seconds(2))
            self.logger.info("left the fleet (lease revoked)", metadata: ["etcd.lease": "\(lease)"])
        } catch {
            self.logger.warning("cannot revoke the node's lease; its key expires with it", metadata: ["error": "\(error)"])
        }
    }

    // MARK: - Supervisor requests

    private func handle(_ envelope: ClusterEnvelope) async {
        switch envelope.body {
        case .applied(let applied):
            await self.state.applied(applied.revision)
        case .reserve(let request):
            let reply = await self.reserveID(for: request.name)
            self.link.post(ClusterEnvelope(callID: envelope.callID, body: .reserveReply(reply)))
        case .commit(let request):
            await self.commit(request, callID: envelope.callID)
        case .nodes:
            let reply = await self.listNodes()
            self.link.post(ClusterEnvelope(callID: envelope.callID, body: .nodesReply(reply)))
        case .table, .reserveReply, .commitReply, .nodesReply, .fence, .none:
            self.logger.warning("unexpected cluster message", metadata: ["call.id": "\(envelope.callID)"])
        }
    }

    static func unreachable(_ error: EtcdError) -> Status {
        Status(code: .unavailable, message: "cluster unreachable: \(error); the adapter table is unchanged, retry")
    }

    /// A fleet-wide id: compare-and-swap on `next-id` (never reused; a failed load leaves a gap).
    func reserveID(for name: String) async -> ClusterReserveReply {
        for _ in 0..<64 {
            do throws(EtcdError) {
                let current = try await self.client.range(key: self.keys.nextID)
                let kv = current.kvs.first
                var next: UInt64 = 1
                if let kv {
                    guard let parsed = ClusterKeys.adapterID(kv.valueString) else {
                        self.logger.error(
                            "the fleet's id counter is not a valid id; loads are refused until it is fixed",
                            metadata: ["etcd.key": "\(self.keys.nextID)"])
                        return ClusterReserveReply(
                            status: Status(
                                code: .failedPrecondition,
                                message:
                                    "the fleet's id counter \(self.keys.nextID) in etcd does not hold an id in 1...\(ClusterKeys.maximumAdapterID); put the largest adapter id + 1 there"
                            ))
                    }
                    next = parsed
                }
                let guardCompare: EtcdCompare =
                    kv.map { EtcdCompare(key: self.keys.nextID, .equal, .modRevision($0.modRevision)) }
                    ?? EtcdCompare(key: self.keys.nextID, .equal, .version(0))
                let result = try await self.client.txn(
                    compare: [guardCompare], success: [.put(key: self.keys.nextID, value: Array("\(next + 1)".utf8))])
                if result.succeeded { return ClusterReserveReply(intID: next) }
            } catch .outcomeUnknown(let message) {
                // Applied or not, the counter is read again: at worst an id is skipped.
                self.logger.notice("id reservation outcome unknown; reading the counter again", metadata: ["error": "\(message)"])
            } catch {
                return ClusterReserveReply(status: Self.unreachable(error))
            }
        }
        return ClusterReserveReply(
            status: Status(code: .aborted, message: "could not reserve an adapter id: too many concurrent loads in the fleet; retry"))
    }

    /// One transaction: every upsert compares the record this node saw (or its absence),
    /// every remove the record it saw. The reply waits for the fleet (`AgentState`).
    ///
    /// An empty request writes nothing: it is a barrier, answered once every live node
    /// applied the last revision this node was given (a refusal read from this node's table
    /// then holds fleet-wide).
    func commit(_ request: ClusterCommitRequest, callID: UInt64) async {
        if request.upserts.isEmpty, request.removes.isEmpty {
            await self.state.waitForFleetToApplyPushed(callID: callID)
            return
        }
        let previous = Dictionary(request.previous.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        var compares: [EtcdCompare] = []
        var success: [EtcdOp] = []
        var failure: [EtcdOp] = []
        for record in request.upserts {
            let key = self.keys.adapter(record.name)
            if let seen = previous[record.name] {
                compares.append(await self.unchanged(key, name: record.name, seen: seen))
            } else {
                compares.append(EtcdCompare(key: key, .equal, .version(0)))
            }
            success.append(.put(key: key, value: record.serializedBytes()))
            failure.append(.range(key: key))
        }
        for name in request.removes {
            let key = self.keys.adapter(name)
            if let seen = previous[name] {
                compares.append(await self.unchanged(key, name: name, seen: seen))
            } else {
                compares.append(EtcdCompare(key: key, .greater, .version(0)))
            }
            success.append(.delete(key: key))
            failure.append(.range(key: key))
        }
        let result: EtcdTxnResult
        do throws(EtcdError) {
            result = try await self.client.txn(compare: compares, success: success, failure: failure)
        } catch {
            let status: Status
            if case .outcomeUnknown = error {
                if let revision = await self.appliedRevision(of: request) {
                    // The transaction did land: answer as for a commit (after the fleet applied it).
                    self.logger.notice(
                        "commit outcome was unknown; read back: committed", metadata: ["etcd.revision": "\(revision)", "error": "\(error)"])
                    await self.state.waitForFleet(callID: callID, revision: revision)
                    return
                }
                if let absentAt = await self.removedRevision(of: request) {
                    // Every name is gone from etcd: answered as done once this node and the
                    // fleet no longer serve them (whoever deleted them).
                    self.logger.notice(
                        "commit outcome was unknown; read back: removed", metadata: ["etcd.revision": "\(absentAt)", "error": "\(error)"])
                    await self.state.waitForFleet(callID: callID, absent: request.removes, absentAt: absentAt)
                    return
                }
                status = Status(
                    code: .unavailable,
                    message: "cluster unreachable: the commit's outcome is unknown (\(error)); check GET /v1/models before retrying")
            } else {
                status = Self.unreachable(error)
            }
            self.logger.warning("commit failed", metadata: ["error": "\(error)"])
            self.link.post(ClusterEnvelope(callID: callID, body: .commitReply(ClusterCommitReply(status: status))))
            return
        }
        guard result.succeeded else {
            // The refusal waits until this node and the fleet see what etcd showed: an
            // "already loaded" is then served everywhere, a "cannot be found" (an unload that
            // lost the race, or the retry of one whose answer was lost) gone everywhere.
            let status = Self.conflict(request, previous: previous, found: result.results)
            let seen = Self.seen(request, previous: previous, found: result.results)
            await self.state.waitForFleet(
                callID: callID, revision: seen.revision, absent: seen.absent, absentAt: result.revision, refusal: status)
            return
        }
        self.logger.info(
            "committed",
            metadata: ["etcd.revision": "\(result.revision)", "upserts": "\(request.upserts.map(\.name))", "removes": "\(request.removes)"])
        await self.state.waitForFleet(callID: callID, revision: result.revision)
    }

    /// "The key still holds the record this node saw": its mod revision when the agent's view
    /// holds that record (so a record written by a newer version, whose bytes this one would
    /// re-encode differently, can still be reloaded and unloaded), else its bytes.
    private func unchanged(_ key: String, name: String, seen: AdapterRecord) async -> EtcdCompare {
        if let revision = await self.state.currentRevision(of: name, ifHolding: seen) {
            return EtcdCompare.unchanged(key, since: revision)
        }
        return EtcdCompare(key: key, .equal, .value(seen.serializedBytes()))
    }

    /// After a removal whose outcome is unknown: the revision at which every removed name
    /// was read absent from etcd, or nil when one is still there (or cannot be read). An
    /// absent key does not say who deleted it, nor when; the caller waits until this node's
    /// view no longer holds the names, then for the fleet.
    func removedRevision(of request: ClusterCommitRequest) async -> Int64? {
        guard request.upserts.isEmpty, !request.removes.isEmpty else { return nil }
        var revision: Int64 = 0
        for name in request.removes {
            guard let range = try? await self.client.range(key: self.keys.adapter(name)), range.kvs.isEmpty else { return nil }
            revision = max(revision, range.revision)
        }
        return revision
    }

    /// What a failed transaction's failure branch showed: the newest revision among the keys
    /// it found, and the names this commit expected to exist that it found absent.
    static func seen(
        _ request: ClusterCommitRequest, previous: [String: AdapterRecord], found: [EtcdOpResult]
    ) -> (revision: Int64, absent: [String]) {
        var revision: Int64 = 0
        var absent: [String] = []
        for (index, name) in (request.upserts.map(\.name) + request.removes).enumerated() {
            guard index < found.count, case .range(let range) = found[index] else { continue }
            revision = max(revision, range.kvs.map(\.modRevision).max() ?? 0)
            if range.kvs.isEmpty, previous[name] != nil { absent.append(name) }
        }
        return (revision, absent)
    }

    /// After a commit whose outcome is unknown: the revision at which it landed, read back,
    /// or nil when that cannot be shown. A load or reload landed when every upserted name
    /// holds exactly the record this commit wrote (its id was reserved for it alone, so no
    /// other write can have put those bytes). Removals: `removedRevision(of:)`.
    func appliedRevision(of request: ClusterCommitRequest) async -> Int64? {
        guard request.removes.isEmpty, !request.upserts.isEmpty else { return nil }
        var revision: Int64 = 0
        for record in request.upserts {
            guard let range = try? await self.client.range(key: self.keys.adapter(record.name)),
                let kv = range.kvs.first, kv.value == record.serializedBytes()
            else { return nil }
            revision = max(revision, kv.modRevision)
        }
        return revision
    }

    /// Why a commit's compare failed, from the keys' current values (the failure branch's ranges).
    static func conflict(_ request: ClusterCommitRequest, previous: [String: AdapterRecord], found: [EtcdOpResult]) -> Status {
        let names = request.upserts.map(\.name) + request.removes
        for (index, name) in names.enumerated() {
            guard index < found.count, case .range(let range) = found[index] else { continue }
            let exists = !range.kvs.isEmpty
            let isUpsert = index < request.upserts.count
            if isUpsert && previous[name] == nil && exists {
                return Status(code: .alreadyExists, message: TableRules.alreadyLoadedMessage(name), param: "lora_name")
            }
            if !isUpsert && !exists || isUpsert && previous[name] != nil && !exists {
                return Status(code: .notFound, message: "The lora adapter '\(name)' cannot be found.", param: "lora_name")
            }
            if let seen = previous[name], let value = range.kvs.first?.value, (try? AdapterRecord(serializedBytes: value)) != seen {
                return Status(
                    code: .aborted, message: "The lora adapter '\(name)' was changed on another node at the same time; retry.",
                    param: "lora_name")
            }
        }
        return Status(code: .aborted, message: "the adapter table changed on another node at the same time; retry")
    }

    func listNodes() async -> ClusterNodesReply {
        do throws(EtcdError) {
            let range = try await self.client.range(key: self.keys.nodes, prefix: true)
            let nodes = range.kvs.compactMap { try? NodeStatus(serializedBytes: $0.value) }
            return ClusterNodesReply(nodes: nodes, revision: range.revision)
        } catch {
            return ClusterNodesReply(status: Status(code: .unavailable, message: "cluster unreachable: \(error)"))
        }
    }

    // MARK: - Background work

    /// Grants the node's lease and renews it; every successful renewal moves the node's
    /// fence to renewal send time + TTL - margin (margin = max(2 s, TTL/4)), so the node
    /// stops serving adapters before its lease can expire. A lost lease is granted again
    /// (the node key is re-published under it, and the fence stays down until that key has
    /// come back through the watch: the node has caught up).
    private func keepLease() async {
        let ttlMs = self.configuration.leaseSeconds * 1000
        let marginMs = max(2000, ttlMs / 4)
        let renewEvery = Duration.milliseconds(max(min(ttlMs / 3, (ttlMs - marginMs) / 3), 100))
        var pause = Duration.milliseconds(100)
        var mayAdopt = true
        while !Task.isCancelled {
            let lease: EtcdLease
            let granted = MonotonicClock.nowMs()
            if mayAdopt, let adopted = await self.predecessorLease(renewTimeout: renewEvery * 2) {
                lease = adopted
            } else {
                do throws(EtcdError) {
                    lease = try await self.client.grantLease(ttl: self.configuration.leaseSeconds)
                } catch {
                    self.logger.warning("cannot grant the node's lease; retrying", metadata: ["error": "\(error)"])
                    try? await Task.sleep(for: pause)
                    pause = min(pause * 2, .seconds(2))
                    continue
                }
            }
            mayAdopt = false
            pause = .milliseconds(100)
            await self.state.setLease(lease.id, validUntilMs: granted + ttlMs - marginMs)
            var failing = false
            while !Task.isCancelled {
                try? await Task.sleep(for: renewEvery)
                let sent = MonotonicClock.nowMs()
                do throws(EtcdError) {
                    let ttl = try await self.client.keepAliveOnce(lease.id, timeout: renewEvery * 2)
                    guard ttl > 0 else { throw EtcdError.leaseNotFound(id: lease.id) }
                    if failing { self.logger.notice("node lease renewed again", metadata: ["etcd.lease": "\(lease.id)"]) }
                    failing = false
                    await self.state.renewed(lease.id, validUntilMs: sent + ttlMs - marginMs)
                } catch {
                    if case .leaseNotFound = error {
                        self.logger.warning("node lease expired; granting a new one", metadata: ["etcd.lease": "\(lease.id)"])
                        break
                    }
                    if !failing { self.logger.warning("node lease renewal failing", metadata: ["error": "\(error)"]) }
                    failing = true
                }
            }
        }
    }

    /// The lease of this supervisor run's previous agent (the node key carries this run's
    /// `incarnation`), renewed once, so this agent keeps it instead of granting a new one: the
    /// node key stays, commits elsewhere keep counting this node (which applied everything it
    /// reported: the supervisor is the same), and the fence keeps moving. An agent crash then
    /// costs neither a fenced gap nor a commit elsewhere waiting out the dead agent's lease.
    /// Nil when there is none, or etcd cannot say (a new lease is granted then).
    private func predecessorLease(renewTimeout: Duration) async -> EtcdLease? {
        let key = self.keys.node(self.configuration.nodeName)
        guard !self.configuration.incarnation.isEmpty,
            let range = try? await self.client.range(key: key, timeout: renewTimeout),
            let kv = range.kvs.first, kv.lease != 0,
            let status = try? NodeStatus(serializedBytes: kv.value), status.incarnation == self.configuration.incarnation,
            let ttl = try? await self.client.keepAliveOnce(kv.lease, timeout: renewTimeout), ttl > 0
        else { return nil }
        self.logger.notice("adopted the lease of this node's previous cluster agent", metadata: ["etcd.lease": "\(kv.lease)"])
        return EtcdLease(id: kv.lease, ttl: ttl)
    }

    /// Loads the fleet's keys at a revision, pushes the table, then follows the watch from
    /// there; a compaction (or any end of the watch) starts over with a fresh range.
    private func followStore() async {
        while !Task.isCancelled {
            let range: EtcdRangeResult
            do throws(EtcdError) {
                range = try await self.client.range(key: self.keys.prefix, prefix: true)
            } catch {
                self.logger.warning("cannot load the fleet's table; retrying", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: .seconds(1))
                continue
            }
            await self.state.load(range.kvs, revision: range.revision, keys: self.keys)
            do throws(EtcdError) {
                try await self.client.watch(prefix: self.keys.prefix, fromRevision: range.revision + 1) { event in
                    await self.state.event(event, keys: self.keys)
                }
            } catch {
                if case .cancelled = error { return }
                self.logger.notice("watch ended; reloading the table", metadata: ["error": "\(error)"])
                // A compaction reloads at once; anything else (a member answering garbage, a
                // message over the size cap) would come back at once: not in a tight loop.
                if case .compacted = error { continue }
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    /// Writes the node key (under the lease) whenever the applied revision or the lease changes.
    ///
    /// The key is claimed, not overwritten: it is written only when absent or already under
    /// this node's lease. A key under another lease is either this node's previous agent (its
    /// value carries this supervisor run's `incarnation`; its lease lapses by itself, within
    /// one TTL of etcd having a leader, so it is waited out however long etcd is down) or, with
    /// another token, a previous run of this node's supervisor or another live node with the
    /// same `--node-name`. The decision is ``NodeKeyWait``: after 3 TTLs of etcd answering
    /// "held" it is the latter, and the agent exits 78 (the supervisor stops the server with
    /// that code): two nodes writing one key would break the fleet's wait for every node to
    /// apply a commit.
    private func publishNodeKey() async {
        let started = Self.nowUnixMs()
        let key = self.keys.node(self.configuration.nodeName)
        var wait = NodeKeyWait(incarnation: self.configuration.incarnation, limitMs: self.configuration.leaseSeconds * 3000)
        for await _ in self.publishes {
            guard let (lease, applied, ready) = await self.state.publication() else { continue }
            let status = NodeStatus(
                name: self.configuration.nodeName, appliedRevision: applied, state: ready ? "ready" : "joining",
                version: self.configuration.version, startedUnixMs: started, leaseID: lease,
                incarnation: self.configuration.incarnation)
            let claim: NodeKeyClaim
            do throws(EtcdError) {
                claim = try await self.claimNodeKey(key, status.serializedBytes(), lease: lease)
            } catch {
                wait.unreachable()
                self.logger.warning("cannot publish the node key; retrying", metadata: ["error": "\(error)"])
                // A lease that expired is granted again by `keepLease`, which publishes under the new one.
                try? await Task.sleep(for: .milliseconds(250))
                self.publishSink.yield()
                continue
            }
            switch wait.observe(claim, nowMs: MonotonicClock.nowMs()) {
            case .claimed:
                continue
            case .waitForPredecessor(let other, let firstTime):
                if firstTime {
                    self.logger.notice(
                        "the node key is still held by this node's previous cluster agent; waiting for its lease to lapse",
                        metadata: ["etcd.key": "\(key)", "etcd.lease": "\(other)"])
                }
            case .waitForHolder(let other, let firstTime):
                if firstTime {
                    self.logger.warning(
                        "the node key is held by another lease (a previous run of this node, until its lease expires, or another node with the same --node-name); waiting",
                        metadata: ["etcd.key": "\(key)", "etcd.lease": "\(other)"])
                }
            case .nameInUse(let other):
                self.logger.critical(
                    "another node uses --node-name \(self.configuration.nodeName) (its key \(key) is kept alive by lease \(other)); give every node a unique --node-name"
                )
                LorikeetExitCode.cannotBoot.exit()
            }
            try? await Task.sleep(for: .milliseconds(500))
            self.publishSink.yield()
        }
    }

    /// Writes `key` if it is under `lease` already, or absent; otherwise names the holder.
    func claimNodeKey(_ key: String, _ value: [UInt8], lease: Int64) async throws(EtcdError) -> NodeKeyClaim {
        let put = EtcdOp.put(key: key, value: value, lease: lease)
        func holder(_ reply: EtcdTxnResult) -> NodeKeyClaim {
            guard case .range(let range)? = reply.results.first, let kv = range.kvs.first else { return .heldBy(lease: 0, incarnation: "") }
            let incarnation = (try? NodeStatus(serializedBytes: kv.value))?.incarnation ?? ""
            return .heldBy(lease: kv.lease, incarnation: incarnation)
        }
        let mine = try await self.client.txn(
            compare: [EtcdCompare(key: key, .equal, .lease(lease))], success: [put], failure: [.range(key: key)])
        if mine.succeeded { return .written }
        if case .range(let range)? = mine.results.first, let kv = range.kvs.first, kv.lease != 0 { return holder(mine) }
        let absent = try await self.client.txn(
            compare: [EtcdCompare(key: key, .equal, .version(0))], success: [put], failure: [.range(key: key)])
        if absent.succeeded { return .written }
        if case .range(let range)? = absent.results.first, let kv = range.kvs.first, kv.lease != 0 { return holder(absent) }
        // A key under no lease (an `etcdctl put` by hand) never expires and is no live node's:
        // taken over, so it cannot stall the fleet's commits or pass for a duplicate name.
        let leaseless = try await self.client.txn(
            compare: [EtcdCompare(key: key, .equal, .lease(0))], success: [put], failure: [.range(key: key)])
        if leaseless.succeeded {
            self.logger.warning("took over the node key, which was under no lease (written by hand?)", metadata: ["etcd.key": "\(key)"])
            return .written
        }
        return holder(leaseless)
    }

    /// Answers commits the fleet did not confirm in time.
    private func expireCommits() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(250))
            await self.state.expire()
        }
    }

    static func nowUnixMs() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }
}

/// The agent's view of the fleet: the table, the node keys, what the supervisor applied,
/// and the commits waiting for the fleet. Every message to the supervisor is sent from
/// here, so they leave in the order the state changed.
actor AgentState {
    let nodeName: String
    let link: FramedCallClient<ClusterEnvelope>
    let commitWaitLimit: Duration
    let publish: AsyncStream<Void>.Continuation
    var adapters: [String: AdapterRecord] = [:]
    /// Each adapter key's create and mod revision (the order of records that share an id;
    /// the compare of a reload or unload).
    var adapterRevisions: [String: (created: Int64, modified: Int64)] = [:]
    /// Records left out of the pushed table (shared id, over the ceiling), as last logged:
    /// how many, and the first 20.
    var leftOut: (count: Int, first: [String]) = (0, [])
    var nextID: UInt64 = 1
    var nodes: [String: NodeStatus] = [:]
    /// Each node key's etcd lease (0: written by hand under no lease; it never expires, so
    /// it is not waited for).
    var nodeLeases: [String: Int64] = [:]
    var lease: Int64?
    /// The lease whose node key came back through the watch (the node caught up under it).
    var registeredLease: Int64?
    /// The last revision pushed when the node key came back: the fence moves only once the
    /// supervisor applied it (every worker serves what the watch delivered before the key).
    var registeredAfter: Int64 = .max
    /// The latest fence instant from a renewal of `lease`.
    var validUntilMs: Int64 = 0
    /// The last revision pushed to the supervisor, and the last it applied.
    var pushed: Int64 = 0
    var appliedRevision: Int64 = 0
    var caughtUp = false
    /// Commits, barriers and refusals waiting for every live node to apply their revision.
    var pending: [FleetWait] = []
    /// Whether the view holds a full range of the keys yet: until then (an agent just
    /// restarted) an empty view proves nothing, and no wait completes.
    var loaded = false
    /// The revision at which each adapter name was last deleted, as the watch delivered it
    /// (cleared by a reload, bounded): what a wait for an absent name waits for.
    var recentDeletes: [String: Int64] = [:]

    /// A call answered once every live node applied `revision` — and, first, once this
    /// node's view no longer holds the `absent` names (etcd showed them absent at revision
    /// `absentAt`; the wait then covers what this node was pushed at that point).
    struct FleetWait {
        let callID: UInt64
        var revision: Int64
        let deadline: ContinuousClock.Instant
        /// An empty commit: "was not confirmed" rather than "committed, but".
        let barrier: Bool
        var absent: [String] = []
        var absentAt: Int64 = 0
        /// Sent once the fleet applied `revision` (nil: the commit's success).
        var refusal: Status? = nil
    }

    let logger: Logger

    init(
        nodeName: String, link: FramedCallClient<ClusterEnvelope>, commitWaitLimit: Duration, publish: AsyncStream<Void>.Continuation,
        logger: Logger
    ) {
        self.logger = logger
        self.nodeName = nodeName
        self.link = link
        self.commitWaitLimit = commitWaitLimit
        self.publish = publish
    }

    func setLease(_ lease: Int64?, validUntilMs: Int64 = 0) {
        self.lease = lease
        self.validUntilMs = validUntilMs
        if lease != nil { self.publish.yield() }
    }

    /// A renewal of `lease` succeeded: the fence moves, once the node key of this lease
    /// came back through the watch.
    func renewed(_ lease: Int64, validUntilMs: Int64) {
        guard lease == self.lease else { return }
        self.validUntilMs = validUntilMs
        self.pushFence()
    }

    private func pushFence() {
        guard let lease = self.lease, self.registeredLease == lease, self.caughtUp, self.appliedRevision >= self.registeredAfter
        else { return }
        self.link.post(ClusterEnvelope(body: .fence(Fence(validUntilMonotonicMs: self.validUntilMs))))
    }

    /// The node key's content, once there is a lease and the supervisor applied a table.
    func publication() -> (lease: Int64, applied: Int64, ready: Bool)? {
        guard let lease = self.lease, self.appliedRevision > 0 else { return nil }
        return (lease, self.appliedRevision, self.caughtUp)
    }

    /// A fresh range of every key (boot, or after a compaction): the whole table is pushed.
    func load(_ kvs: [EtcdKeyValue], revision: Int64, keys: ClusterKeys) {
        self.adapters = [:]
        self.adapterRevisions = [:]
        // Deletes between the last event and this range are not known: waits fall back to
        // the range's revision.
        self.recentDeletes = [:]
        self.nodes = [:]
        self.nodeLeases = [:]
        self.nextID = 1
        for kv in kvs { self.apply(kv, deleted: false, keys: keys) }
        self.loaded = true
        self.push(revision: revision)
        self.checkCommits()
    }

    func event(_ event: EtcdWatchEvent, keys: ClusterKeys) {
        let kind = keys.kind(of: event.kv.key)
        self.apply(event.kv, deleted: event.kind == .delete, keys: keys)
        switch kind {
        case .adapter:
            self.push(revision: event.revision)
        case .node(let name):
            if name == self.nodeName, event.kind == .put, let lease = self.lease, self.nodes[name]?.leaseID == lease,
                self.registeredLease != lease
            {
                // Our own key came back through the watch: every change before it was pushed.
                self.registeredLease = lease
                if !self.caughtUp {
                    self.caughtUp = true
                    self.push(revision: event.revision)
                }
                self.registeredAfter = self.pushed
                self.pushFence()
            }
            if name == self.nodeName, event.kind == .put, event.kv.lease == 0 {
                // Our key was rewritten by hand under no lease: publish (take it over) now,
                // not at the next applied change.
                self.publish.yield()
            }
            self.checkCommits()
        case .nextID, .other:
            break
        }
    }

    private func apply(_ kv: EtcdKeyValue, deleted: Bool, keys: ClusterKeys) {
        switch keys.kind(of: kv.key) {
        case .adapter(let name):
            self.adapterRevisions[name] = deleted ? nil : (kv.createRevision, kv.modRevision)
            if deleted {
                self.adapters[name] = nil
                if self.recentDeletes.count >= 4096 { self.recentDeletes = [:] }  // bounded; waits fall back to `pushed`
                self.recentDeletes[name] = kv.modRevision
            } else if let record = try? AdapterRecord(serializedBytes: kv.value), record.name == name,
                let problem = ClusterKeys.recordProblem(record)
            {
                // Written by hand or by something else than Lorikeet: served nowhere, said loudly.
                self.adapters[name] = nil
                self.logger.error(
                    "ignoring an adapter record in etcd that Lorikeet would never commit; delete or rewrite it",
                    metadata: ["etcd.key": "\(kv.key.echoed())", "problem": "\(problem)"])
            } else if let record = try? AdapterRecord(serializedBytes: kv.value), record.name == name {
                self.adapters[name] = record
            }
        case .nextID:
            if !deleted, let value = ClusterKeys.adapterID(kv.valueString) { self.nextID = value }
        case .node(let name):
            if deleted {
                self.nodes[name] = nil
                self.nodeLeases[name] = nil
            } else if let status = try? NodeStatus(serializedBytes: kv.value) {
                self.nodes[name] = status
                self.nodeLeases[name] = kv.lease
                if kv.lease == 0, name != self.nodeName {
                    self.logger.error(
                        "a node key in etcd is under no lease (written by hand?); commits do not wait for it; delete it",
                        metadata: ["etcd.key": "\(kv.key.echoed())"])
                }
            }
        case .other:
            break
        }
    }

    private func push(revision: Int64) {
        let records = self.servedRecords()
        let next = max(self.nextID, (records.last?.intID ?? 0) + 1)
        self.pushed = revision
        self.link.post(
            ClusterEnvelope(
                body: .table(
                    ClusterTable(revision: revision, table: AdapterTable(adapters: records, nextIntID: next), caughtUp: self.caughtUp))))
    }

    func applied(_ revision: Int64) {
        guard revision > self.appliedRevision else { return }
        self.appliedRevision = revision
        self.publish.yield()
        self.checkCommits()
        self.pushFence()
    }

    /// A barrier: the fleet applied every revision pushed to this node's supervisor.
    func waitForFleetToApplyPushed(callID: UInt64) {
        self.waitForFleet(callID: callID, revision: self.pushed, barrier: true)
    }

    func waitForFleet(
        callID: UInt64, revision: Int64 = 0, barrier: Bool = false, absent: [String] = [], absentAt: Int64 = 0, refusal: Status? = nil
    ) {
        self.pending.append(
            FleetWait(
                callID: callID, revision: revision, deadline: .now + self.commitWaitLimit, barrier: barrier, absent: absent,
                absentAt: absentAt, refusal: refusal))
        self.checkCommits()
    }

    /// The records this node serves, by id: one per id (records that share an id, which only
    /// a hand-written key can do, keep the one created first) and at most
    /// `Limits.maxAdaptersCeiling` of them (the lowest ids), so the table always fits the
    /// channel's frame and every node picks the same records. What is left out is logged
    /// when it changes.
    private func servedRecords() -> [AdapterRecord] {
        func order(_ record: AdapterRecord) -> (UInt64, Int64, String) {
            (record.intID, self.adapterRevisions[record.name]?.created ?? 0, record.name)
        }
        var records: [AdapterRecord] = []
        var leftOut: (count: Int, first: [String]) = (0, [])
        for record in self.adapters.values.sorted(by: { order($0) < order($1) }) {
            let sharedID = records.last.map { $0.intID == record.intID } ?? false
            guard sharedID || records.count >= Limits.maxAdaptersCeiling else {
                records.append(record)
                continue
            }
            leftOut.count += 1
            if leftOut.first.count < 20 {  // named in the log; the rest are counted
                leftOut.first.append(
                    sharedID
                        ? "\(record.name) (id \(record.intID) is \(records.last?.name ?? "")'s)"
                        : "\(record.name) (over \(Limits.maxAdaptersCeiling) adapters)")
            }
        }
        if leftOut.count != self.leftOut.count || leftOut.first != self.leftOut.first {
            self.leftOut = leftOut
            if leftOut.count > 0 {
                self.logger.error(
                    "ignoring adapter records in etcd that Lorikeet would never commit; delete them",
                    metadata: ["count": "\(leftOut.count)", "records": "\(leftOut.first)"])
            }
        }
        return records
    }

    /// The record `name` holds now if it is `seen`, with its mod revision (a reload or unload
    /// compares that revision, not re-encoded bytes, which a newer writer's fields would change).
    func currentRevision(of name: String, ifHolding seen: AdapterRecord) -> Int64? {
        guard self.adapters[name] == seen else { return nil }
        return self.adapterRevisions[name]?.modified
    }

    /// Other nodes that have not applied `revision`. A node key under no lease (written by
    /// hand) never expires: it is waited for only during the first third of the commit's
    /// wait (one TTL) — a live node of that name takes its key over within that time (it
    /// publishes when it sees the rewrite and when it applies the commit), a ghost key then
    /// costs one TTL per commit instead of a 504 on every commit.
    private func nodesBehind(_ revision: Int64, deadline: ContinuousClock.Instant) -> [String] {
        let leaselessCount = ContinuousClock.now < deadline - self.commitWaitLimit * 2 / 3
        return self.nodes.filter { name, status in
            name != self.nodeName && (self.nodeLeases[name] != 0 || leaselessCount) && status.appliedRevision < revision
        }.map(\.key).sorted()
    }

    /// Answers every waiting commit that this node applied and every other node key shows applied.
    private func checkCommits() {
        guard self.loaded else { return }
        for index in self.pending.indices where !self.pending[index].absent.isEmpty {
            let absentAt = self.pending[index].absentAt
            var revision = self.pending[index].revision
            // Gone from this node's view, or created again after etcd showed it absent: the
            // fleet must then have applied the delete (its revision, when the watch
            // delivered it; else everything this node was pushed).
            self.pending[index].absent.removeAll { name in
                guard self.adapters[name] == nil || (self.adapterRevisions[name]?.created ?? 0) > absentAt else { return false }
                revision = max(revision, self.recentDeletes[name] ?? self.pushed)
                return true
            }
            self.pending[index].revision = revision
        }
        self.pending.removeAll { commit in
            guard commit.absent.isEmpty, self.appliedRevision >= commit.revision,
                self.nodesBehind(commit.revision, deadline: commit.deadline).isEmpty
            else { return false }
            let reply =
                commit.refusal.map { ClusterCommitReply(status: $0) } ?? ClusterCommitReply(revision: commit.revision)
            self.link.post(ClusterEnvelope(callID: commit.callID, body: .commitReply(reply)))
            return true
        }
    }

    func expire() {
        self.checkCommits()  // a node key under no lease stops counting after a while
        let now = ContinuousClock.now
        self.pending.removeAll { commit in
            guard commit.deadline <= now else { return false }
            let late = self.nodesBehind(commit.revision, deadline: commit.deadline)
            let what =
                if !commit.absent.isEmpty {
                    "the removal of \(commit.absent.map { $0.echoed() }) from etcd was"
                } else if commit.barrier || commit.refusal != nil || commit.absentAt > 0 {
                    "etcd revision \(commit.revision) was"
                } else {
                    "committed at etcd revision \(commit.revision), but"
                }
            let message =
                "\(what) not confirmed by \(!commit.absent.isEmpty || self.appliedRevision < commit.revision ? "this node" : "node(s) \(late)") within \(self.commitWaitLimit)"
            self.link.post(
                ClusterEnvelope(
                    callID: commit.callID,
                    body: .commitReply(
                        ClusterCommitReply(status: Status(code: .deadlineExceeded, message: message), revision: commit.revision))))
            return true
        }
    }
}
