import Foundation
import Logging
import LorikeetProto
import LorikeetTestSupport
import Synchronization
import Testing

@testable import LorikeetWorker

@Suite("Engine reconciliation retries a broken adapter with backoff", .ownThreads)
struct ReconcileTests {
    @Test("waits double from the first to the cap, and starts over when the entry leaves")
    func schedule() {
        var backoff = ReconcileBackoff(initial: .seconds(1), maximum: .seconds(60))
        let key = ReconcileBackoff.Key(intID: 7, path: "/adapters/a")
        let start = ContinuousClock.now
        #expect(backoff.waiting(key, now: start) == nil)
        let waits = (0..<9).map { _ in backoff.recordFailure(key, error: "corrupt", now: start) }
        #expect(waits == [1, 2, 4, 8, 16, 32, 60, 60, 60].map { Duration.seconds($0) })
        #expect(backoff.waiting(key, now: start + .seconds(59)) == "corrupt")
        #expect(backoff.waiting(key, now: start + .seconds(60)) == nil)
        // Another path under the same id is a different entry.
        #expect(backoff.waiting(ReconcileBackoff.Key(intID: 7, path: "/adapters/b"), now: start) == nil)
        backoff.retain(only: [])
        #expect(backoff.failures(key) == 0)
        #expect(backoff.recordFailure(key, error: "corrupt", now: start) == .seconds(1))
    }

    @Test("an engine that refuses a committed adapter is asked again only after the backoff; a fixed adapter comes back")
    func retries() async throws {
        let root = PathPolicyTests.makeTree()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let engine = try FakeEngine()
        defer { engine.stop() }
        let logger = Logger(label: "test")
        let client = EngineClient(socketPath: engine.path, logger: logger)
        defer { client.shutdown() }
        let replica = AdapterTableReplica(baseModels: ["tiny-llama"])
        let clock = Mutex(ContinuousClock.now)
        let leader = LeaderMutationService(
            adapters: .engine(client), replica: replica, committer: LocalTableCommitter(replica: replica, stateDirectory: nil),
            pathPolicy: PathPolicy(allowedPrefixes: [root + "/lora"]), epoch: 1, logger: logger,
            reconcileBackoff: ReconcileBackoff(initial: .seconds(30), maximum: .seconds(60)), now: { clock.withLock { $0 } })
        let reply = await leader.load(LoadAdapterRequest(name: "a", path: root + "/lora/good"))
        #expect(reply.status.code == .ok)

        // The engine restarts empty and the adapter's files went bad meanwhile.
        engine.state.withLock {
            $0.adapters = [:]
            $0.refuseAdds = true
            $0.addAttempts = 0
        }
        let first = try await leader.reconcileEngine()
        #expect(first.failed.count == 1 && first.added.isEmpty)
        // Passes inside the backoff report the failure without touching the engine.
        for _ in 0..<5 {
            clock.withLock { $0 += .seconds(5) }
            let again = try await leader.reconcileEngine()
            #expect(again.failed == first.failed)
        }
        #expect(engine.state.withLock { $0.addAttempts } == 1)

        // Repaired: the next attempt after the backoff loads it.
        engine.state.withLock { $0.refuseAdds = false }
        clock.withLock { $0 += .seconds(5) }
        let repaired = try await leader.reconcileEngine()
        #expect(repaired.added == ["a"] && repaired.failed.isEmpty)
        #expect(engine.state.withLock { $0.addAttempts } == 2)
        #expect(engine.state.withLock { Set($0.adapters.keys) } == [1])
    }
}
