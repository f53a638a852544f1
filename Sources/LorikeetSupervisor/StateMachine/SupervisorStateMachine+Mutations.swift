import Logging
package import LorikeetProto

/// A load or an unload, as a worker forwarded it or an admin client sent it.
package enum AdapterMutation: Sendable, Equatable {
    case load(LoadAdapterRequest)
    case unload(UnloadAdapterRequest)

    /// Why the mutation is refused before it reaches the leader, or nil: the inner re-check
    /// of the limits the HTTP edge (and the admin handler) enforce (`AdapterFieldRules`).
    package var problem: Status? {
        switch self {
        case .load(let request): request.fieldProblem
        case .unload(let request): request.fieldProblem
        }
    }

    /// The same mutation with its `caller` field bounded like any echo (it comes from the
    /// forwarding worker or the admin peer).
    var withBoundedCaller: AdapterMutation {
        switch self {
        case .load(var request):
            request.caller = request.caller.echoed()
            return .load(request)
        case .unload(var request):
            request.caller = request.caller.echoed()
            return .unload(request)
        }
    }
}

/// Where the answer to a load/unload goes.
enum MutationOrigin: Sendable, Equatable {
    /// A worker forwarded its HTTP client's request: the answer goes back on its control
    /// channel with the worker's call id.
    case worker(WorkerID, callID: UInt64)
    /// An admin call or one item of an admin batch: the libuv layer holds the reply
    /// callback under this token.
    case admin(token: UInt64)
}

/// A load/unload forwarded to the leader, waiting for the leader's answer.
struct RoutedMutation: Sendable, Equatable {
    let mutation: AdapterMutation
    /// Position in an admin batch, if any (audit field).
    let batchIndex: Int?
    let origin: MutationOrigin
    let leader: WorkerID
    /// Set once the leader's commit for this call is durable and applied everywhere.
    var committed: AdapterMutationReply?
}

/// The outcome of one mutation, to be written to the audit log and sent to its origin.
/// Every mutation that reaches the supervisor ends in exactly one of these.
struct MutationAnswer: Sendable, Equatable {
    let mutation: AdapterMutation
    let batchIndex: Int?
    let origin: MutationOrigin
    let reply: AdapterMutationReply
}

/// A commit that passed every check and is being made durable (one at a time).
struct DurableCommit: Sendable, Equatable {
    let callID: UInt64
    let leader: WorkerID
    let change: TableChange
    let table: AdapterTable
    let adapter: AdapterRecord?
}

extension SupervisorStateMachine {
    // MARK: - Mutations routed to the leader

    /// A load/unload arrived from a worker (`origin` `.worker`) or the admin socket: it is
    /// refused at once (a field over its limit, no leader yet, stopping) or forwarded to
    /// the leader under a new call id.
    mutating func mutationRequested(_ mutation: AdapterMutation, origin: MutationOrigin, batchIndex: Int? = nil) -> [Action] {
        func refuse(_ status: Status) -> [Action] {
            [
                .answerMutation(
                    MutationAnswer(
                        mutation: mutation, batchIndex: batchIndex, origin: origin,
                        reply: AdapterMutationReply(status: status, tableVersion: self.table.version)))
            ]
        }
        if let problem = mutation.problem {
            let slot: String = if case .worker(let id, _) = origin { "\(self.workers[id]?.slot ?? -1)" } else { "admin" }
            return [.log(.warning, "adapter request refused: \(problem.message)", ["worker.slot": "\(slot)"], worker: nil)]
                + refuse(problem)
        }
        guard self.isRunning else { return refuse(Status(code: .unavailable, message: "the server is shutting down")) }
        guard let leader = self.leader, self.workers[leader]?.hasHello == true else {
            return refuse(Status(code: .unavailable, message: "no leader is available yet; retry"))
        }
        let routeID = self.nextRouteID
        self.nextRouteID += 1
        let bounded = mutation.withBoundedCaller
        self.routes[routeID] = RoutedMutation(mutation: bounded, batchIndex: batchIndex, origin: origin, leader: leader)
        if self.cluster != nil, case .load(let request) = bounded, !self.table.adapters.contains(where: { $0.name == request.name }) {
            return self.reserveClusterID(routeID: routeID, name: request.name)
        }
        return [.forwardToLeader(leader, routeID: routeID, bounded)]
    }

    /// The control channel refused to send a forwarded mutation (larger than a frame:
    /// cannot happen with the fields bounded; if it does, this call fails alone).
    mutating func forwardFailed(routeID: UInt64) -> [Action] {
        guard let route = self.routes.removeValue(forKey: routeID) else { return [] }
        return [
            self.answer(
                route,
                AdapterMutationReply(
                    status: Status(code: .invalidArgument, message: "the request is larger than the control channel's limit"),
                    tableVersion: self.table.version))
        ]
    }

    /// The leader answered a forwarded mutation (after its commit, or with a refusal).
    /// An answer from a worker that is not the route's leader is ignored.
    mutating func leaderReplied(routeID: UInt64, reply: AdapterMutationReply, from id: WorkerID) -> [Action] {
        guard let route = self.routes[routeID], route.leader == id else { return [] }
        self.routes[routeID] = nil
        return [self.answer(route, reply)]
    }

    /// The leader `old` exited: a mutation committed before the death still succeeded;
    /// one whose commit is being persisted or fanned out is answered when that ends;
    /// anything else did not happen.
    mutating func settleRoutes(of old: WorkerID) -> [Action] {
        var actions: [Action] = []
        for (routeID, route) in self.routes.sorted(by: { $0.key < $1.key }) where route.leader == old {
            guard self.fanOut?.callID != routeID, self.persisting?.callID != routeID else { continue }
            self.routes[routeID] = nil
            actions.append(
                self.answer(
                    route,
                    route.committed
                        ?? AdapterMutationReply(
                            status: Status(
                                code: .unavailable, message: "the leader exited before committing; the adapter table is unchanged, retry")))
            )
        }
        return actions
    }

    /// Stopping: every mutation not committed yet fails with `status`; committed ones
    /// wait for their leader's answer (or its exit).
    mutating func failPendingMutations(_ status: Status) -> [Action] {
        var actions: [Action] = []
        for (routeID, route) in self.routes.sorted(by: { $0.key < $1.key }) where route.committed == nil {
            guard self.fanOut?.callID != routeID, self.persisting?.callID != routeID else { continue }
            self.routes[routeID] = nil
            actions.append(self.answer(route, AdapterMutationReply(status: status)))
        }
        return actions
    }

    func answer(_ route: RoutedMutation, _ reply: AdapterMutationReply) -> Action {
        .answerMutation(MutationAnswer(mutation: route.mutation, batchIndex: route.batchIndex, origin: route.origin, reply: reply))
    }

    // MARK: - Commits

    /// The leader asks to commit `request` (its call id is the routed mutation's, when the
    /// change answers one). Refused (FAILED_PRECONDITION) unless from the current leader at
    /// the current epoch with no other commit running, ABORTED when based on another table
    /// version, refused by `TableRules` (name taken, too many adapters, ...), or refused when
    /// the table would no longer fit a control frame or the state file. Otherwise the new
    /// table is to be persisted (`persistTable`), and `tablePersisted` continues.
    mutating func commitRequested(_ request: CommitRequest, callID: UInt64, from id: WorkerID) -> [Action] {
        if self.cluster != nil { return self.clusterCommitRequested(request, callID: callID, from: id) }
        func refuse(_ code: StatusCode, _ message: String) -> [Action] {
            [
                .log(.warning, "commit refused: \(message)", ["worker.slot": "\(self.workers[id]?.slot ?? -1)"], worker: nil),
                .replyToCommit(id, callID: callID, CommitReply(status: Status(code: code, message: message), version: self.table.version)),
            ]
        }
        if let refusal = self.commitRefusal(from: id, epoch: request.epoch) {
            return refuse(refusal.code, refusal.message)
        }
        guard request.baseVersion == self.table.version else {
            return refuse(.aborted, "the change is based on table version \(request.baseVersion), current is \(self.table.version)")
        }
        let next: AdapterTable
        switch TableRules.apply(request.change, to: self.table, maxAdapters: self.maxAdapters) {
        case .failure(let status): return refuse(status.code, status.message)
        case .success(let table): next = table
        }
        if let problem = Self.sizeProblem(next) { return refuse(problem.code, problem.message) }
        let change = TableChange(
            version: next.version, upserts: request.change.upserts, removes: request.change.removes, nextIntID: next.nextIntID)
        self.persisting = DurableCommit(callID: callID, leader: id, change: change, table: next, adapter: request.change.upserts.first)
        return [.persistTable(next, callID: callID)]
    }

    /// Every worker gets the table (snapshot) or the change: both must fit a frame, or the
    /// change would cut workers off. Bounded by the limits; checked all the same.
    static func sizeProblem(_ next: AdapterTable) -> Status? {
        let snapshotBytes = ControlEnvelope(callID: UInt64.max, body: .snapshot(TableSnapshot(table: next))).serializedBytes().count
        guard snapshotBytes <= Limits.channelFrameBytes, TableFile.encode(next).count <= TableFile.maximumSize else {
            return Status(
                code: .failedPrecondition,
                message:
                    "the adapter table would be \(snapshotBytes) bytes, more than a control frame (\(Limits.channelFrameBytes) bytes) or the state file limit (\(TableFile.maximumSize) bytes)"
            )
        }
        return nil
    }

    /// The table of commit `callID` was written (`failure` nil) or could not be: on
    /// success it becomes the committed table and is fanned out to every worker.
    mutating func tablePersisted(callID: UInt64, failure: String?) -> [Action] {
        guard let commit = self.persisting, commit.callID == callID else { return [] }
        self.persisting = nil
        if let failure {
            let message = "cannot persist the adapter table: \(failure)"
            return [
                .log(.error, "commit refused: \(message)", [:], worker: nil),
                .replyToCommit(
                    commit.leader, callID: callID,
                    CommitReply(status: Status(code: .internal, message: message), version: self.table.version)),
            ] + self.settleIfLeaderGone(commit.leader)
        }
        self.table = commit.table
        let log = Action.log(
            .info, "committed table version \(commit.table.version)",
            ["upserts": "\(commit.change.upserts.map(\.name))", "removes": "\(commit.change.removes)", "epoch": "\(self.epoch)"],
            worker: nil)
        return [log] + self.commitDurable(callID: callID, leader: commit.leader, change: commit.change, adapter: commit.adapter)
    }

    /// After a failed persist whose leader died meanwhile, its route is settled now.
    mutating func settleIfLeaderGone(_ leader: WorkerID) -> [Action] {
        self.workers[leader] == nil ? self.settleRoutes(of: leader) : []
    }

    /// Every worker applied the commit (or was restarted): the route's answer is recorded;
    /// the leader answers its caller, or, when the leader is gone, the supervisor answers
    /// (the change happened).
    mutating func commitFinished(_ fanOut: CommitFanOut, replyTo target: CommitReplyTarget) -> [Action] {
        let reply = AdapterMutationReply(status: .ok, adapter: fanOut.adapter, tableVersion: fanOut.version)
        self.routes[fanOut.callID]?.committed = reply
        switch target {
        case .leader(let id):
            return [.cancelCommitTimer, .replyToCommit(id, callID: fanOut.callID, CommitReply(status: .ok, version: fanOut.version))]
        case .caller:
            guard let route = self.routes.removeValue(forKey: fanOut.callID) else { return [.cancelCommitTimer] }
            return [.cancelCommitTimer, self.answer(route, reply)]
        }
    }
}
