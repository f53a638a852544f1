import LorikeetClusterAgent
import Testing

/// The node key claim's waiting rules, without etcd (the real-etcd cases are in FleetTests).
@Suite("NodeKeyWait")
struct NodeKeyWaitTests {
    static let limitMs: Int64 = 15_000

    @Test("this run's previous agent's key is waited out however long it lasts, and logged once")
    func predecessorIsNeverAnError() {
        var wait = NodeKeyWait(incarnation: "run-1", limitMs: Self.limitMs)
        #expect(wait.observe(.heldBy(lease: 7, incarnation: "run-1"), nowMs: 0) == .waitForPredecessor(lease: 7, firstTime: true))
        #expect(
            wait.observe(.heldBy(lease: 7, incarnation: "run-1"), nowMs: 10 * Self.limitMs)
                == .waitForPredecessor(lease: 7, firstTime: false))
        #expect(wait.observe(.written, nowMs: 10 * Self.limitMs + 1) == .claimed)
    }

    @Test("another token held for the limit without a break is a name in use")
    func anotherNodeIsRefusedAfterTheLimit() {
        var wait = NodeKeyWait(incarnation: "run-1", limitMs: Self.limitMs)
        #expect(wait.observe(.heldBy(lease: 9, incarnation: "run-2"), nowMs: 1_000) == .waitForHolder(lease: 9, firstTime: true))
        #expect(
            wait.observe(.heldBy(lease: 9, incarnation: "run-2"), nowMs: 1_000 + Self.limitMs - 1)
                == .waitForHolder(lease: 9, firstTime: false))
        #expect(wait.observe(.heldBy(lease: 9, incarnation: "run-2"), nowMs: 1_000 + Self.limitMs) == .nameInUse(lease: 9))
    }

    @Test("etcd unreachable restarts the clock: an outage longer than the limit is not a name in use")
    func outageRestartsTheClock() {
        var wait = NodeKeyWait(incarnation: "run-1", limitMs: Self.limitMs)
        _ = wait.observe(.heldBy(lease: 9, incarnation: ""), nowMs: 0)
        wait.unreachable()
        #expect(wait.observe(.heldBy(lease: 9, incarnation: ""), nowMs: 2 * Self.limitMs) == .waitForHolder(lease: 9, firstTime: false))
        #expect(wait.observe(.heldBy(lease: 9, incarnation: ""), nowMs: 3 * Self.limitMs) == .nameInUse(lease: 9))
    }

    @Test("an empty token never matches, even this agent's own empty one")
    func emptyTokenIsUnknown() {
        var wait = NodeKeyWait(incarnation: "", limitMs: Self.limitMs)
        _ = wait.observe(.heldBy(lease: 3, incarnation: ""), nowMs: 0)
        #expect(wait.observe(.heldBy(lease: 3, incarnation: ""), nowMs: Self.limitMs) == .nameInUse(lease: 3))
    }

    @Test("a new holder is logged again; a write in between restarts the clock")
    func newHolderAndWriteReset() {
        var wait = NodeKeyWait(incarnation: "run-1", limitMs: Self.limitMs)
        _ = wait.observe(.heldBy(lease: 1, incarnation: "x"), nowMs: 0)
        #expect(wait.observe(.written, nowMs: Self.limitMs - 1) == .claimed)
        #expect(wait.observe(.heldBy(lease: 2, incarnation: "x"), nowMs: Self.limitMs) == .waitForHolder(lease: 2, firstTime: true))
        #expect(
            wait.observe(.heldBy(lease: 2, incarnation: "x"), nowMs: 2 * Self.limitMs - 1) == .waitForHolder(lease: 2, firstTime: false))
    }
}
