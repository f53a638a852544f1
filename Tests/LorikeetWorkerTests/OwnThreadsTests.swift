import Foundation
import LorikeetTestSupport
import Synchronization
import Testing

/// `.ownThreads` (the trait every blocking suite carries): the test body and its child
/// tasks run on threads of their own, so blocked tests cannot starve the 2-thread pool.
@Suite("tests that block run on threads of their own", .ownThreads)
struct OwnThreadsTests {
    @Test("a synchronous test body runs on an own thread, not the concurrency pool")
    func synchronousBody() {
        #expect(ElasticThreadExecutor.isCurrentThreadOwn)
    }

    @Test("an async test body stays on own threads across awaits")
    func asyncBody() async throws {
        #expect(ElasticThreadExecutor.isCurrentThreadOwn)
        try await Task.sleep(for: .milliseconds(5))
        #expect(ElasticThreadExecutor.isCurrentThreadOwn)
    }

    @Test("four child tasks that block until all four run complete (the 2-thread pool would hang)")
    func blockedChildrenDoNotStarve() async {
        let arrived = Counter()
        let finished = await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<4 {
                group.addTask {
                    arrived.value.add(1, ordering: .relaxed)
                    // Blocks its thread until all four arrived (a 30 s bound against hangs).
                    let deadline = Date(timeIntervalSinceNow: 30)
                    while arrived.value.load(ordering: .relaxed) < 4, Date() < deadline { usleep(1000) }
                    return arrived.value.load(ordering: .relaxed) == 4
                }
            }
            var all = true
            for await done in group { all = all && done }
            return all
        }
        #expect(finished, "a child task waited for a thread while others blocked")
    }
}

private final class Counter: Sendable {
    let value = Atomic<Int>(0)
}
