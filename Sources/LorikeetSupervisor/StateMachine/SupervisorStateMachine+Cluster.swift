import Logging
import LorikeetProto

/// Fleet mode's part of the state machine (`docs/CLUSTER.md`): etcd owns the committed
/// table; the cluster agent reserves ids, commits transactions and pushes the fleet's table,
/// which reaches the workers through the same fan-out as a local commit.
struct ClusterState: Sendable {
    /// The agent process is running (spawned, not exited).
    var agentUp = false
    /// The agent reported the node caught up once: the workers were started.
    var caughtUp = false
    var agentRestarts: UInt32 = 0
    var agentStartedAtMs: UInt64 = 0
    /// The last revision whose table every worker acked.
    var appliedRevision: Int64 = 0
    /// A table that arrived during a fan-out (only the newest is kept: it is the whole table).
    var pendingTable: ClusterTable?
    /// When the agent's last table arrived (the clock of a pending table's application).
    var lastTableAtMs: UInt64 = 0
    /// The agent's latest fence (sent to every worker, and to each new one after its hello).
    var fence: Fence?
    /// Routed loads waiting for an id reservation, by route id.
    var reserving: Set<UInt64> = []
}

extension SupervisorStateMachine {
    // MARK: - The agent process

    /// Boot in fleet mode: the agent first; the workers once it reports the node caught up.
    mutating func startClusterAgent(now: UInt64) -> [Action] {
        guard self.isRunning, self.cluster != nil else { return [] }
        self.cluster?.agentStartedAtMs = now
        return [.spawnClusterAgent]
    }

    mutating func clusterAgentStarted() { self.cluster?.agentUp = true }

    /// The agent exited: a commit in its hands has an unknown outcome, reservations fail,
    /// and it is restarted with the engine's backoff.
    mutating func clusterAgentExited(_ exit: ProcessExit, now: UInt64) -> [Action] {
        guard var cluster = self.cluster else { return [] }
        cluster.agentUp = false
        var actions: [Action] = []
        let reserving = cluster.reserving.sorted()
        cluster.reserving = []
        self.cluster = cluster
        for routeID in reserving {
            guard let route = self.routes.removeValue(forKey: routeID) else { continue }
            actions.append(self.answer(route, AdapterMutationReply(status: Self.agentGone, tableVersion: self.table.version)))
        }
        if let commit = self.persisting {
            actions += self.clusterCommitReplied(
                callID: commit.callID,
                ClusterCommitReply(
                    status: Status(
                        code: .unavailable,
                        message:
                            "cluster unreachable: the cluster agent exited during the commit; its outcome is unknown, check GET /v1/models before retrying"
                    )
                ))
        }
        guard self.isRunning else { return actions + self.checkStopped() }
        if exit.status == Int64(LorikeetExitCode.cannotBoot.rawValue) {
            return actions + [.fatal(code: .cannotBoot, message: "the cluster agent cannot run (\(exit)); see its message above")]
        }
        self.cluster?.agentRestarts += 1
        let uptime = now - cluster.agentStartedAtMs
        let delay = uptime > self.configuration.stableUptimeMs ? self.configuration.initialBackoffMs : self.backoff(cluster.agentRestarts)
        return actions + [
            .log(.error, "cluster agent \(exit); restarting in \(delay) ms", ["restarts": "\(cluster.agentRestarts)"], worker: nil),
            .startClusterAgentTimer(delayMs: delay),
        ]
    }

    static var agentGone: Status {
        Status(code: .unavailable, message: "cluster unreachable: the cluster agent is not running; the adapter table is unchanged, retry")
    }

    /// The agent moved the node's fence: every worker that said hello hears it.
    mutating func clusterFenceReceived(_ fence: Fence) -> [Action] {
        guard self.cluster != nil else { return [] }
        self.cluster?.fence = fence
        return self.allWorkers.filter { self.workers[$0]?.hasHello == true }.map { .sendFence($0, fence) }
    }

    // MARK: - The fleet's table

    /// The agent pushed the fleet's table at `update.revision`: applied now (as a change
    /// fanned out to every worker), or after the fan-out in progress.
    mutating func clusterTableReceived(_ update: ClusterTable, now: UInt64) -> [Action] {
        guard self.cluster != nil else { return [] }
        self.cluster?.lastTableAtMs = now
        guard self.fanOut == nil else {
            self.cluster?.pendingTable = update
            return []
        }
        return self.applyClusterTable(update, now: now)
    }

    private mutating func applyClusterTable(_ update: ClusterTable, now: UInt64) -> [Action] {
        let incoming = update.table
        let current = Dictionary(self.table.adapters.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        let names = Set(incoming.adapters.map(\.name))
        let removes = self.table.adapters.map(\.name).filter { !names.contains($0) }
        let upserts = incoming.adapters.filter { current[$0.name] != $0 }
        let nextIntID = max(self.table.nextIntID, incoming.nextIntID)
        var actions: [Action] = []
        if upserts.isEmpty && removes.isEmpty {
            self.table.nextIntID = nextIntID
            actions += self.clusterFanOutFinished(update.revision, now: now)
        } else {
            let change = TableChange(version: self.table.version + 1, upserts: upserts, removes: removes, nextIntID: nextIntID)
            self.table = self.table.applying(change)
            let participants = self.allWorkers.filter { self.workers[$0]?.hasHello == true && self.workers[$0]?.channel == .open }
            self.fanOut = CommitFanOut(
                callID: 0, leader: self.leader ?? WorkerID(generation: 0), version: change.version, adapter: nil,
                waiting: Set(participants), clusterRevision: update.revision)
            actions.append(
                .log(
                    .info, "applying the fleet's table",
                    [
                        "etcd.revision": "\(update.revision)", "table.version": "\(change.version)", "upserts": "\(upserts.map(\.name))",
                        "removes": "\(removes)",
                    ], worker: nil))
            actions += participants.map { .sendChange($0, change) }
            actions.append(.startCommitTimer(version: change.version, delayMs: self.configuration.commitAckTimeoutMs))
            actions += self.finishCommitIfAcked()
        }
        if update.caughtUp, self.cluster?.caughtUp == false {
            self.cluster?.caughtUp = true
            actions.append(
                .log(.notice, "caught up with the fleet; starting the workers", ["etcd.revision": "\(update.revision)"], worker: nil))
            for slot in self.slots { actions += self.spawn(inSlot: slot.index, now: now) }
        }
        return actions
    }

    /// Every worker acked the table of `revision`: the agent publishes it in the node key;
    /// a table that arrived meanwhile is applied next.
    mutating func clusterFanOutFinished(_ revision: Int64, now: UInt64) -> [Action] {
        let applied = max(self.cluster?.appliedRevision ?? 0, revision)
        self.cluster?.appliedRevision = applied
        var actions: [Action] = [.sendToClusterAgent(ClusterEnvelope(body: .applied(ClusterApplied(revision: revision))))]
        if let next = self.cluster?.pendingTable {
            self.cluster?.pendingTable = nil
            actions += self.applyClusterTable(next, now: now)
        }
        return actions
    }

    // MARK: - Mutations

    /// A load of a new name: a fleet-wide id is reserved first, then the load goes to the leader.
    mutating func reserveClusterID(routeID: UInt64, name: String) -> [Action] {
        guard self.cluster?.agentUp == true else {
            guard let route = self.routes.removeValue(forKey: routeID) else { return [] }
            return [self.answer(route, AdapterMutationReply(status: Self.agentGone, tableVersion: self.table.version))]
        }
        self.cluster?.reserving.insert(routeID)
        return [.sendToClusterAgent(ClusterEnvelope(callID: routeID, body: .reserve(ClusterReserveRequest(name: name))))]
    }

    /// The agent reserved an id for route `routeID` (or could not: the load fails with its status).
    mutating func clusterReserved(routeID: UInt64, _ reply: ClusterReserveReply) -> [Action] {
        guard self.cluster?.reserving.remove(routeID) != nil, let route = self.routes[routeID] else { return [] }
        guard reply.status.isOK, case .load(var request) = route.mutation else {
            self.routes[routeID] = nil
            return [self.answer(route, AdapterMutationReply(status: reply.status, tableVersion: self.table.version))]
        }
        request.reservedIntID = reply.intID
        self.routes[routeID] = RoutedMutation(
            mutation: .load(request), batchIndex: route.batchIndex, origin: route.origin, leader: route.leader)
        return [.forwardToLeader(route.leader, routeID: routeID, .load(request))]
    }

    /// The leader's commit in fleet mode: the same checks as a local commit, except that the
    /// base version is etcd's to judge (the transaction compares the records this node saw);
    /// then the agent commits it. An empty change is the leader's barrier (see
    /// `TableCommitter.confirmFleetApplied`): the agent writes nothing and answers once
    /// every live node applied this node's table.
    mutating func clusterCommitRequested(_ request: CommitRequest, callID: UInt64, from id: WorkerID) -> [Action] {
        func refuse(_ status: Status) -> [Action] {
            [
                .log(.warning, "commit refused: \(status.message)", ["worker.slot": "\(self.workers[id]?.slot ?? -1)"], worker: nil),
                .replyToCommit(id, callID: callID, CommitReply(status: status, version: self.table.version)),
            ]
        }
        guard self.leader == id, request.epoch == self.epoch else {
            return refuse(
                Status(code: .failedPrecondition, message: "epoch \(request.epoch) is not the current leader epoch \(self.epoch)"))
        }
        guard self.persisting == nil else { return refuse(Status(code: .aborted, message: "another commit is in progress")) }
        guard self.cluster?.agentUp == true else { return refuse(Self.agentGone) }
        let current = Dictionary(self.table.adapters.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        for record in request.change.upserts where current[record.name].map({ $0.intID != record.intID }) == true {
            // Another node's load of this name was applied here after the leader checked.
            return refuse(Status(code: .alreadyExists, message: TableRules.alreadyLoadedMessage(record.name), param: "lora_name"))
        }
        // Ids come from etcd's counter (unique fleet-wide), and loads reserve them in one
        // order but may commit in another: an id below a concurrent load's (already applied
        // here) is legal. So the "never below the next id" rule is off (next id 1) and the
        // committed next id is above every id in the table; the rules check the rest.
        var base = self.table
        base.nextIntID = 1
        var change = request.change
        change.nextIntID = max(change.nextIntID, self.table.nextIntID, (self.table.adapters.map(\.intID).max() ?? 0) + 1)
        let next: AdapterTable
        switch TableRules.apply(change, to: base, maxAdapters: self.maxAdapters) {
        case .failure(let status): return refuse(status)
        case .success(let table): next = table
        }
        if let problem = Self.sizeProblem(next) { return refuse(problem) }
        let previous = (request.change.upserts.map(\.name) + request.change.removes).compactMap { current[$0] }
        self.persisting = DurableCommit(
            callID: callID, leader: id, change: change, table: next, adapter: change.upserts.first)
        let commit = ClusterCommitRequest(upserts: change.upserts, removes: change.removes, previous: previous)
        return [.sendToClusterAgent(ClusterEnvelope(callID: callID, body: .commit(commit)))]
    }

    /// The agent's answer to commit `callID`: committed and applied by every live node
    /// (this one included: its table already holds the change), or refused.
    mutating func clusterCommitReplied(callID: UInt64, _ reply: ClusterCommitReply) -> [Action] {
        guard let commit = self.persisting, commit.callID == callID else { return [] }
        self.persisting = nil
        guard reply.status.isOK else {
            return [
                .log(.warning, "fleet commit failed: \(reply.status.message)", [:], worker: nil),
                .replyToCommit(commit.leader, callID: callID, CommitReply(status: reply.status, version: self.table.version)),
            ] + self.settleIfLeaderGone(commit.leader)
        }
        let answer = AdapterMutationReply(status: .ok, adapter: commit.adapter, tableVersion: self.table.version)
        self.routes[callID]?.committed = answer
        let barrier = commit.change.upserts.isEmpty && commit.change.removes.isEmpty
        let log = Action.log(
            barrier ? .debug : .info, barrier ? "every live node applied this node's table" : "fleet commit applied by every live node",
            ["etcd.revision": "\(reply.revision)", "epoch": "\(self.epoch)"], worker: nil)
        if self.workers[commit.leader] != nil, self.leader == commit.leader {
            return [log, .replyToCommit(commit.leader, callID: callID, CommitReply(status: .ok, version: self.table.version))]
        }
        guard let route = self.routes.removeValue(forKey: callID) else { return [log] }
        return [log, self.answer(route, answer)]
    }
}
