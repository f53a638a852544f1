import LorikeetProto
import LorikeetTestSupport
import Testing

@testable import LorikeetSupervisor

/// Fleet mode's rules in `SupervisorStateMachine` (`+Cluster.swift`), without processes.
@Suite("Supervisor state machine, fleet mode", .ownThreads)
struct FleetStateMachineTests {
    typealias Machine = SupervisorStateMachine

    static func record(_ name: String, _ id: UInt64) -> AdapterRecord {
        AdapterRecord(name: name, intID: id, path: "/a/\(name)", baseModel: "tiny")
    }

    static func sent(_ actions: [Machine.Action]) -> [ClusterEnvelope] {
        actions.compactMap { if case .sendToClusterAgent(let envelope) = $0 { envelope } else { nil } }
    }

    static func changes(_ actions: [Machine.Action]) -> [(WorkerID, TableChange)] {
        actions.compactMap { if case .sendChange(let id, let change) = $0 { (id, change) } else { nil } }
    }

    /// A fleet machine with 2 slots, the agent running, caught up at revision 5 with `table`,
    /// both workers serving (the first leads).
    static func caughtUp(_ table: [AdapterRecord] = []) -> (Machine, [WorkerID]) {
        var machine = Machine(configuration: .init(SupervisorStateMachineTests.defaults), fleet: true)
        machine.registerSlot(0)
        machine.registerSlot(1)
        #expect(machine.startClusterAgent(now: 0).count == 1)
        machine.clusterAgentStarted()
        let actions = machine.clusterTableReceived(
            ClusterTable(revision: 5, table: AdapterTable(adapters: table, nextIntID: 10), caughtUp: true), now: 0)
        let ids = SupervisorStateMachineTests.spawned(actions)
        #expect(ids.count == 2, "the workers start once the node caught up")
        #expect(sent(actions).contains { $0.body == .applied(ClusterApplied(revision: 5)) })
        for id in ids { SupervisorStateMachineTests.serve(&machine, id) }
        return (machine, ids)
    }

    @Test("no worker starts before the agent reports the node caught up; the table converges to the fleet's")
    func boot() {
        var machine = Machine(
            configuration: .init(SupervisorStateMachineTests.defaults),
            table: AdapterTable(adapters: [Self.record("stale", 1)], nextIntID: 2),
            fleet: true)
        machine.registerSlot(0)
        _ = machine.startClusterAgent(now: 0)
        machine.clusterAgentStarted()
        let early = machine.clusterTableReceived(
            ClusterTable(revision: 3, table: AdapterTable(adapters: [Self.record("a", 4)], nextIntID: 5)), now: 0)
        #expect(SupervisorStateMachineTests.spawned(early).isEmpty)
        #expect(machine.table.adapters.map(\.name) == ["a"] && machine.table.nextIntID == 5)
        let ready = machine.clusterTableReceived(ClusterTable(revision: 4, table: machine.table, caughtUp: true), now: 0)
        #expect(SupervisorStateMachineTests.spawned(ready).count == 1)
    }

    @Test("a table from the agent is fanned out; the agent hears Applied only after every worker acked; a table arriving meanwhile waits")
    func fanOut() {
        var (machine, ids) = Self.caughtUp()
        let first = machine.clusterTableReceived(
            ClusterTable(revision: 7, table: AdapterTable(adapters: [Self.record("x", 10)], nextIntID: 11), caughtUp: true), now: 1)
        #expect(Self.changes(first).map(\.0) == ids)
        #expect(Self.sent(first).isEmpty)
        let second = machine.clusterTableReceived(ClusterTable(revision: 8, table: AdapterTable(nextIntID: 11), caughtUp: true), now: 2)
        #expect(second.isEmpty, "one fan-out at a time")
        let version = Self.changes(first)[0].1.version
        #expect(Self.sent(machine.changeAcked(by: ids[0], version: version)).isEmpty)
        let done = machine.changeAcked(by: ids[1], version: version)
        #expect(Self.sent(done).first?.body == .applied(ClusterApplied(revision: 7)))
        #expect(Self.changes(done).map { $0.1.removes } == [["x"], ["x"]], "the waiting table follows")
    }

    @Test("a load of a new name reserves an id first; the commit goes to the agent, not the state file; OK answers the leader")
    func commit() {
        var (machine, ids) = Self.caughtUp([Self.record("old", 3)])
        let request = LoadAdapterRequest(name: "new", path: "/a/new")
        let reserve = machine.mutationRequested(.load(request), origin: .worker(ids[1], callID: 9))
        guard case .reserve(let reservation)? = Self.sent(reserve).first?.body, let routeID = Self.sent(reserve).first?.callID else {
            Issue.record("no reservation: \(reserve)")
            return
        }
        #expect(reservation.name == "new")
        let forward = machine.clusterReserved(routeID: routeID, ClusterReserveReply(intID: 12))
        guard case .forwardToLeader(let leader, _, .load(let forwarded))? = forward.first else {
            Issue.record("not forwarded: \(forward)")
            return
        }
        #expect(leader == ids[0] && forwarded.reservedIntID == 12)
        let change = TableChange(version: 9, upserts: [Self.record("new", 12)], removes: [], nextIntID: 13)
        let commit = machine.commitRequested(
            CommitRequest(epoch: machine.epoch, baseVersion: 0, change: change), callID: routeID, from: ids[0])
        #expect(!commit.contains { if case .persistTable = $0 { true } else { false } })
        guard case .commit(let sent)? = Self.sent(commit).first?.body else {
            Issue.record("no commit to the agent: \(commit)")
            return
        }
        #expect(sent.upserts.map(\.name) == ["new"] && sent.previous.isEmpty)
        let done = machine.clusterCommitReplied(callID: routeID, ClusterCommitReply(revision: 20))
        #expect(done.contains { if case .replyToCommit(ids[0], routeID, let reply) = $0 { reply.status.isOK } else { false } })
    }

    @Test("reserved ids commit out of order: a load holding id 12 commits after another node's id 14 was applied here")
    func outOfOrderReservedIDs() {
        var (machine, ids) = Self.caughtUp([Self.record("old", 3)])
        // Another node reserved 14 and committed first; this node's table applied it.
        let applied = machine.clusterTableReceived(
            ClusterTable(
                revision: 9, table: AdapterTable(adapters: [Self.record("old", 3), Self.record("other", 14)], nextIntID: 15), caughtUp: true
            ),
            now: 1)
        let version = Self.changes(applied)[0].1.version
        _ = machine.changeAcked(by: ids[0], version: version)
        _ = machine.changeAcked(by: ids[1], version: version)
        #expect(machine.table.adapters.map(\.name).sorted() == ["old", "other"])
        // This node's load reserved 12 earlier; its leader proposes it with next id 13.
        let change = TableChange(version: machine.table.version + 1, upserts: [Self.record("mine", 12)], removes: [], nextIntID: 13)
        let commit = machine.commitRequested(CommitRequest(epoch: machine.epoch, change: change), callID: 7, from: ids[0])
        guard case .commit(let sent)? = Self.sent(commit).first?.body else {
            Issue.record("refused instead of committed: \(commit)")
            return
        }
        #expect(sent.upserts.map(\.intID) == [12])
        // The commit comes back through the watch (every node applies it), then OK.
        let watched = machine.clusterTableReceived(
            ClusterTable(
                revision: 10,
                table: AdapterTable(
                    adapters: [Self.record("old", 3), Self.record("other", 14), Self.record("mine", 12)], nextIntID: 15),
                caughtUp: true),
            now: 2)
        let watchedVersion = Self.changes(watched)[0].1.version
        _ = machine.changeAcked(by: ids[0], version: watchedVersion)
        _ = machine.changeAcked(by: ids[1], version: watchedVersion)
        let done = machine.clusterCommitReplied(callID: 7, ClusterCommitReply(revision: 10))
        #expect(done.contains { if case .replyToCommit(ids[0], 7, let reply) = $0 { reply.status.isOK } else { false } })
        #expect(machine.table.adapters.count == 3)
        #expect(machine.table.nextIntID == 15, "the next id never goes back")
        #expect(TableRules.inconsistency(in: machine.table) == nil)
        // An id already held by another name is still refused.
        let clash = TableChange(version: machine.table.version + 1, upserts: [Self.record("dup", 14)], removes: [], nextIntID: 15)
        let refused = machine.commitRequested(CommitRequest(epoch: machine.epoch, change: clash), callID: 8, from: ids[0])
        #expect(refused.contains { if case .replyToCommit(_, 8, let reply) = $0 { !reply.status.isOK } else { false } })
    }

    @Test(
        "without the agent, loads fail at once with 'cluster unreachable'; a commit in its hands fails UNAVAILABLE and the agent restarts")
    func agentGone() {
        var (machine, ids) = Self.caughtUp()
        let reserve = machine.mutationRequested(.load(LoadAdapterRequest(name: "n", path: "/p")), origin: .worker(ids[0], callID: 1))
        let routeID = Self.sent(reserve).first?.callID ?? 0
        let exit = machine.clusterAgentExited(ProcessExit(status: 1, signal: 0), now: 100_000)
        #expect(exit.contains { if case .answerMutation(let answer) = $0 { answer.reply.status.code == .unavailable } else { false } })
        #expect(exit.contains { if case .startClusterAgentTimer = $0 { true } else { false } })
        #expect(machine.clusterReserved(routeID: routeID, ClusterReserveReply(intID: 3)).isEmpty, "a late reservation is dropped")
        let again = machine.mutationRequested(.load(LoadAdapterRequest(name: "m", path: "/p")), origin: .worker(ids[0], callID: 2))
        #expect(
            again.contains {
                if case .answerMutation(let answer) = $0 { answer.reply.status.message.contains("cluster unreachable") } else { false }
            })
    }

    @Test("a name another node loaded meanwhile is 'already loaded'; the fence reaches every worker and each new one")
    func conflictAndFence() {
        var (machine, ids) = Self.caughtUp([Self.record("taken", 4)])
        let change = TableChange(version: 2, upserts: [Self.record("taken", 11)], removes: [], nextIntID: 12)
        let refused = machine.commitRequested(CommitRequest(epoch: machine.epoch, change: change), callID: 5, from: ids[0])
        #expect(refused.contains { if case .replyToCommit(_, 5, let reply) = $0 { reply.status.code == .alreadyExists } else { false } })
        let fence = Fence(validUntilMonotonicMs: 1234)
        let sent = machine.clusterFenceReceived(fence)
        #expect(sent.count == 2)
        let more = machine.spawn(inSlot: 0, asReplacement: true, now: 1)
        let id = SupervisorStateMachineTests.spawned(more)[0]
        #expect(machine.hello(id, Hello(pid: 2, version: "t")).contains { if case .sendFence(id, fence) = $0 { true } else { false } })
    }

    @Test("stopping: after the workers, the agent is stopped (it gives its lease back), then the loop ends")
    func stopping() {
        var (machine, ids) = Self.caughtUp()
        _ = machine.stop(.fast)
        #expect(
            !machine.childExited(ids[0], SupervisorStateMachineTests.killed, now: 1).contains {
                if case .terminateClusterAgent = $0 { true } else { false }
            })
        let last = machine.childExited(ids[1], SupervisorStateMachineTests.killed, now: 2)
        #expect(last.contains { if case .terminateClusterAgent = $0 { true } else { false } })
        let gone = machine.clusterAgentExited(ProcessExit(status: 0, signal: 0), now: 3)
        #expect(gone.contains { if case .leaveLoop = $0 { true } else { false } })
        #expect(!gone.contains { if case .startClusterAgentTimer = $0 { true } else { false } })
    }
}
