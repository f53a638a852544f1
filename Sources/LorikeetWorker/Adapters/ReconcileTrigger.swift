/// When the leader reconciles the engine with the committed table: every `interval`, and
/// at once whenever `wake()` is called (an upstream replica back in rotation, a promotion
/// to leader). Wakes that come while a reconciliation runs fold into one more pass.
///
/// `run(every:_:)` is meant to be a child task of the worker's `run()`: it returns when
/// that task is cancelled. `wake()` never blocks and may be called from any thread.
final class ReconcileTrigger: Sendable {
    private let wakes: AsyncStream<Void>
    private let sink: AsyncStream<Void>.Continuation

    init() {
        (self.wakes, self.sink) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Asks for a reconciliation now.
    func wake() { self.sink.yield() }

    /// Runs `body` after every tick and wake, one at a time, until the task is cancelled.
    /// Call it from one task only.
    func run(every interval: Duration, _ body: @Sendable () async -> Void) async {
        await withDiscardingTaskGroup { group in
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    self.sink.yield()
                }
            }
            // The stream ends (nil) when this task is cancelled; the ticker goes with it.
            for await _ in self.wakes {
                if Task.isCancelled { break }
                await body()
            }
            group.cancelAll()
        }
    }
}
