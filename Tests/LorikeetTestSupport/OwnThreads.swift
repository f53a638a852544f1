import Foundation
public import Testing

/// A test trait that runs each test of a suite on threads of its own instead of the Swift
/// concurrency pool.
///
/// The pool has one thread per core: two here. A synchronous test that waits on a real
/// process (`waitUntilExit`, a blocking `recv`) or computes for seconds holds one of them
/// for its whole run, and two such tests starve every async test of the process — the
/// in-process servers of the worker suites stopped answering for 90 s, and their tests
/// failed on timeouts that had nothing to do with what they check. With this trait the
/// test's task prefers `ElasticThreadExecutor` (SE-0417), so its synchronous body and its
/// awaits run there; task-locals (the current test, for `#expect`) are the same task's.
///
/// Use it on every suite whose tests block: `@Suite("...", .ownThreads)`.
public struct OwnThreadsTrait: SuiteTrait, TestTrait, TestScoping {
    public var isRecursive: Bool { true }

    public func scopeProvider(for test: Test, testCase: Test.Case?) -> Self? {
        testCase == nil ? nil : self
    }

    public func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        try await withTaskExecutorPreference(ElasticThreadExecutor.shared) { try await function() }
    }
}

extension Trait where Self == OwnThreadsTrait {
    /// Runs each test on threads of its own (see `OwnThreadsTrait`).
    public static var ownThreads: Self { OwnThreadsTrait() }
}

/// A task executor that never makes a job wait for a blocked one: a job goes to an idle
/// thread, or to a new thread when none is idle; a thread idle for 2 s ends. Meant for
/// tests that block, where a thread per blocked test is the point.
public final class ElasticThreadExecutor: TaskExecutor {
    public static let shared = ElasticThreadExecutor()

    /// The key of the marker in each own thread's `threadDictionary`.
    private static let marker = "lorikeet-test-own-thread"

    /// Guards the three fields below.
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []
    /// Threads waiting for a job.
    private var idle = 0
    /// Idle threads already signalled for a job, not yet awake.
    private var claimed = 0

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        self.condition.lock()
        self.jobs.append(job)
        let spawn = self.idle <= self.claimed
        if !spawn {
            self.claimed += 1
            self.condition.signal()
        }
        self.condition.unlock()
        if spawn {
            let thread = Thread { [self] in self.runJobs() }
            thread.start()
        }
    }

    /// Whether the calling thread is one of this executor's.
    public static var isCurrentThreadOwn: Bool {
        Thread.current.threadDictionary[Self.marker] as? Bool == true
    }

    private func runJobs() {
        Thread.current.threadDictionary[Self.marker] = true
        self.condition.lock()
        while true {
            if !self.jobs.isEmpty {
                let job = self.jobs.removeFirst()
                self.condition.unlock()
                job.runSynchronously(on: self.asUnownedTaskExecutor())
                self.condition.lock()
                continue
            }
            self.idle += 1
            let signalled = self.condition.wait(until: Date(timeIntervalSinceNow: 2))
            self.idle -= 1
            if self.claimed > 0 {
                self.claimed -= 1
                continue
            }
            if !signalled && self.jobs.isEmpty { break }
        }
        self.condition.unlock()
    }
}

// Unchecked Sendable is safe: the mutable fields are only read and written while
// `condition` is locked.
extension ElasticThreadExecutor: @unchecked Sendable {}
