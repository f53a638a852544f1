import LorikeetProto
import Testing

@testable import LorikeetSupervisor

/// Loads and unloads routed to the leader, and the checks of a commit, in the state
/// machine: no processes, no state file (persisting is an action whose outcome the test
/// reports).
extension SupervisorStateMachineTests {
    static func load(_ name: String, caller: String = "") -> AdapterMutation {
        .load(LoadAdapterRequest(name: name, path: "/srv/lora/\(name)", caller: caller))
    }

    /// The route id of the one `forwardToLeader` action, if any.
    static func forwarded(_ actions: [Machine.Action]) -> UInt64? {
        actions.compactMap { if case .forwardToLeader(_, let routeID, _) = $0 { routeID } else { nil } }.first
    }

    /// The version of the table the actions ask to persist, if any.
    static func persisted(_ actions: [Machine.Action]) -> UInt64? {
        actions.compactMap { if case .persistTable(let table, _) = $0 { table.version } else { nil } }.first
    }

    static func answers(_ actions: [Machine.Action]) -> [MutationAnswer] {
        actions.compactMap { if case .answerMutation(let answer) = $0 { answer } else { nil } }
    }

    static func commitReplies(_ actions: [Machine.Action]) -> [CommitReply] {
        actions.compactMap { if case .replyToCommit(_, _, let reply) = $0 { reply } else { nil } }
    }

    /// The leader's commit of a load of `name` with id `id`, at epoch 1 on table version 0.
    static func commit(loading name: String, id: UInt64, epoch: UInt64 = 1, baseVersion: UInt64 = 0) -> CommitRequest {
        CommitRequest(
            epoch: epoch, baseVersion: baseVersion,
            change: TableChange(upserts: [AdapterRecord(name: name, intID: id, path: "/srv/lora/\(name)")], nextIntID: id + 1))
    }

    @Test("with no leader yet, or while stopping, a mutation is refused at once with UNAVAILABLE")
    func mutationWithoutLeader() {
        var (machine, ids) = Self.booted(slots: 2)
        let early = Self.answers(machine.mutationRequested(Self.load("a"), origin: .admin(token: 1)))
        #expect(early.count == 1 && early[0].reply.status.code == .unavailable && early[0].origin == .admin(token: 1))
        #expect(early[0].reply.status.message.contains("no leader"))
        for id in ids { Self.serve(&machine, id) }
        _ = machine.stop(.graceful)
        let late = Self.answers(machine.mutationRequested(Self.load("a"), origin: .worker(ids[1], callID: 3)))
        #expect(late.count == 1 && late[0].reply.status.message == "the server is shutting down")
    }

    @Test("a field over its limit is refused before it reaches the leader; the caller field is bounded")
    func mutationFieldRules() {
        var (machine, ids) = Self.booted(slots: 1)
        Self.serve(&machine, ids[0])
        let refused = Self.answers(machine.mutationRequested(.unload(UnloadAdapterRequest(name: "")), origin: .admin(token: 2)))
        #expect(refused.count == 1 && refused[0].reply.status.code == .invalidArgument && refused[0].reply.status.param == "lora_name")
        #expect(machine.routes.isEmpty)
        let long = String(repeating: "c", count: 100_000)
        let actions = machine.mutationRequested(Self.load("a", caller: long), origin: .admin(token: 3))
        guard case .forwardToLeader(ids[0], _, .load(let request)) = actions.first else {
            Issue.record("not forwarded: \(actions)")
            return
        }
        #expect(request.caller.utf8.count < 1024 && request.caller != long)
    }

    @Test("the leader's answer goes to the origin once; an answer from another worker is ignored")
    func leaderAnswers() {
        var (machine, ids) = Self.booted(slots: 2)
        for id in ids { Self.serve(&machine, id) }
        let routeID = Self.forwarded(machine.mutationRequested(Self.load("a"), origin: .worker(ids[1], callID: 8)))!
        let refusal = AdapterMutationReply(status: Status(code: .notFound, message: "no such directory"))
        #expect(machine.leaderReplied(routeID: routeID, reply: refusal, from: ids[1]).isEmpty, "a follower cannot answer")
        let answered = Self.answers(machine.leaderReplied(routeID: routeID, reply: refusal, from: ids[0]))
        #expect(answered == [MutationAnswer(mutation: Self.load("a"), batchIndex: nil, origin: .worker(ids[1], callID: 8), reply: refusal)])
        #expect(machine.leaderReplied(routeID: routeID, reply: refusal, from: ids[0]).isEmpty, "answered once")
    }

    @Test("a leader that dies before committing: the mutation fails with UNAVAILABLE and the table is unchanged")
    func leaderDiesBeforeCommit() {
        var (machine, ids) = Self.booted(slots: 2)
        for id in ids { Self.serve(&machine, id) }
        _ = Self.forwarded(machine.mutationRequested(Self.load("a"), origin: .admin(token: 5), batchIndex: 2))!
        let exit = machine.childExited(ids[0], Self.killed, now: 60_000)
        let answers = Self.answers(exit)
        #expect(answers.count == 1 && answers[0].reply.status.code == .unavailable && answers[0].batchIndex == 2)
        #expect(answers[0].reply.status.message.contains("table is unchanged"))
        #expect(machine.table.version == 0 && machine.routes.isEmpty)
    }

    @Test("a commit on another table version is ABORTED; one the rules refuse is answered with their status; nothing is persisted")
    func commitChecks() {
        let configuration = {
            var configuration = Self.defaults
            configuration.maxAdapters = 1
            return configuration
        }()
        var (machine, ids) = Self.booted(slots: 2, configuration: configuration)
        for id in ids { Self.serve(&machine, id) }
        let stale = machine.commitRequested(Self.commit(loading: "a", id: 1, baseVersion: 7), callID: 1, from: ids[0])
        #expect(Self.commitReplies(stale).map(\.status.code) == [.aborted] && Self.persisted(stale) == nil)
        let follower = machine.commitRequested(Self.commit(loading: "a", id: 1), callID: 2, from: ids[1])
        #expect(Self.commitReplies(follower).map(\.status.code) == [.failedPrecondition])
        #expect(Self.persisted(machine.commitRequested(Self.commit(loading: "a", id: 1), callID: 3, from: ids[0])) == 1)
        let concurrent = machine.commitRequested(Self.commit(loading: "b", id: 2), callID: 4, from: ids[0])
        #expect(Self.commitReplies(concurrent).map(\.status.code) == [.aborted], "one commit at a time, persisting included")
        _ = machine.tablePersisted(callID: 3, failure: nil)
        for id in ids { _ = machine.changeAcked(by: id, version: 1) }
        let full = machine.commitRequested(Self.commit(loading: "b", id: 2, baseVersion: 1), callID: 5, from: ids[0])
        #expect(Self.commitReplies(full).first?.status.message.contains("--max-adapters") == true)
        let reused = machine.commitRequested(
            CommitRequest(epoch: 1, baseVersion: 1, change: TableChange(upserts: [AdapterRecord(name: "a", intID: 9, path: "/p")])),
            callID: 6, from: ids[0])
        #expect(Self.commitReplies(reused).first?.status.message == "reload of a must keep id 1")
        #expect(machine.table.version == 1)
    }

    @Test("a table that cannot be written is an INTERNAL refusal; the committed table stays and the next commit may run")
    func persistFailure() {
        var (machine, ids) = Self.booted(slots: 1)
        Self.serve(&machine, ids[0])
        #expect(Self.persisted(machine.commitRequested(Self.commit(loading: "a", id: 1), callID: 1, from: ids[0])) == 1)
        let failed = machine.tablePersisted(callID: 1, failure: "No space left on device")
        #expect(Self.commitReplies(failed).map(\.status.code) == [.internal])
        #expect(Self.commitReplies(failed).first?.status.message == "cannot persist the adapter table: No space left on device")
        #expect(machine.table.version == 0 && machine.fanOut == nil)
        #expect(Self.persisted(machine.commitRequested(Self.commit(loading: "a", id: 1), callID: 2, from: ids[0])) == 1)
    }

    @Test("stopping fails the mutations not committed yet; a committed one waits for its leader's answer")
    func stopWithPendingMutations() {
        var (machine, ids) = Self.booted(slots: 2)
        for id in ids { Self.serve(&machine, id) }
        let committedRoute = Self.forwarded(machine.mutationRequested(Self.load("a"), origin: .admin(token: 1)))!
        _ = machine.commitRequested(Self.commit(loading: "a", id: 1), callID: committedRoute, from: ids[0])
        _ = machine.tablePersisted(callID: committedRoute, failure: nil)
        let finished = ids.flatMap { machine.changeAcked(by: $0, version: 1) }
        #expect(Self.commitReplies(finished).map(\.status.code) == [.ok], "the leader is told; it answers its caller")
        _ = Self.forwarded(machine.mutationRequested(Self.load("b"), origin: .admin(token: 2)))!
        let answers = Self.answers(machine.stop(.graceful))
        #expect(answers.map(\.origin) == [.admin(token: 2)] && answers[0].reply.status.message == "the server is shutting down")
        let leaderAnswer = AdapterMutationReply(status: .ok, tableVersion: 1)
        #expect(
            Self.answers(machine.leaderReplied(routeID: committedRoute, reply: leaderAnswer, from: ids[0])).map(\.origin) == [
                .admin(token: 1)
            ])
    }
}

/// Admin calls that change the server, decided by the state machine.
extension SupervisorStateMachineTests {
    static func openedSlots(_ actions: [Machine.Action]) -> [Int] {
        actions.compactMap { if case .openSlot(let index) = $0 { index } else { nil } }
    }

    @Test("scale: 0 and 257 are refused naming `workers`; 1 → 3 opens two distinct slots; back to 1 drains two")
    func scaleEdges() {
        var (machine, ids) = Self.booted(slots: 1)
        Self.serve(&machine, ids[0])
        #expect(machine.scaleRequested(to: 0).0.param == "workers")
        #expect(machine.scaleRequested(to: 257).0.code == .invalidArgument)
        let (status, up) = machine.scaleRequested(to: 3)
        #expect(status.isOK && Self.openedSlots(up) == [1, 2])
        #expect(Self.openedSlots(machine.scaleRequested(to: 3).1).isEmpty, "slots being opened count")
        machine.slotOpenFailed(2)
        _ = machine.slotOpened(1, now: 0)
        #expect(machine.wantedSlotCount == 2)
        let (_, down) = machine.scaleRequested(to: 1)
        #expect(down.contains { if case .releaseListener(slot: 1) = $0 { true } else { false } })
        #expect(machine.wantedSlotCount == 1)
    }

    @Test("TTIN stops at 256 slots with a warning")
    func ttinAtTheLimit() {
        var (machine, _) = Self.booted(slots: 255)
        #expect(Self.openedSlots(machine.scaleUp()) == [255])
        let refused = machine.scaleUp()
        #expect(Self.openedSlots(refused).isEmpty && Self.logs(refused) == ["not scaling up: 256 worker slots is the limit"])
    }

    @Test("rolling-restart and drain-worker are refused while a roll runs; drain-worker of an unknown slot is NOT_FOUND")
    func adminRolling() {
        var (machine, ids) = Self.booted(slots: 2)
        for id in ids { Self.serve(&machine, id) }
        #expect(machine.drainSlotRequested(7, now: 0).0.code == .notFound)
        let (started, actions) = machine.rollingRestartRequested(now: 0)
        #expect(started.isOK && Self.spawned(actions).count == 1)
        #expect(machine.rollingRestartRequested(now: 0).0.code == .failedPrecondition)
        #expect(machine.drainSlotRequested(1, now: 0).0.code == .failedPrecondition)
    }
}
