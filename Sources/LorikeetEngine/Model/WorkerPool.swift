import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A fixed set of compute threads that run parallel regions for one owner (a model): the
/// replacement for a `DispatchQueue.concurrentPerform` per matrix product.
///
/// The threads are created once, in `init`, and joined in `deinit`. Between regions a worker
/// spins on the region counter for a short while (a forward pass opens a region every few
/// microseconds), then parks on a condition variable, so an idle engine costs no CPU. A region
/// (`run`) splits `count` items into chunks of `grain`; the caller and the workers take chunks
/// from one atomic counter until none is left (dynamic chunking: a descheduled thread on a
/// shared machine delays only the chunk it holds), and `run` returns when every chunk is done.
///
/// Results never depend on the thread count: every chunk is the same range whoever runs it, so
/// a body whose output for an item depends only on the item gives the same bits with 1 or N
/// threads.
///
/// One region at a time: a `run` that finds the pool busy (a second thread, or a region
/// opened inside a region's body) runs its chunks inline on the calling thread, in order.
package final class WorkerPool: Sendable {
    /// Threads taking part in a region, the caller included (≥ 1).
    package let threads: Int
    /// Multiply-adds below which a product or an attention step runs inline rather than as a
    /// region (about 10 µs of work: the hand-over costs a few).
    package static let minimumParallelWork = 1 << 16
    private let shared: WorkerPoolShared

    /// Creates `threads - 1` worker threads (none for 1: every region runs inline).
    package init(threads: Int) {
        self.threads = max(1, threads)
        self.shared = WorkerPoolShared(workers: self.threads - 1)
    }

    deinit {
        self.shared.stop()
    }

    /// Runs `body(chunk, thread)` for every chunk `i * grain ..< min((i + 1) * grain, count)` of
    /// `0..<count`, in parallel, and returns when all are done. `thread` (`0..<threads`) names
    /// the thread running the chunk (for per-thread scratch); chunks run by one thread never
    /// overlap in time. `body` must not throw or block on another chunk. A region has at most
    /// 65,535 chunks: a smaller `grain` is raised to fit.
    package func run(count: Int, grain: Int, _ body: (Range<Int>, Int) -> Void) {
        guard count > 0 else { return }
        let grain = max(1, grain, (count + WorkerPoolShared.maxChunks - 1) / WorkerPoolShared.maxChunks)
        let chunks = (count + grain - 1) / grain
        if self.threads == 1 || chunks == 1 || !self.shared.acquire() {
            var lo = 0
            while lo < count {
                let hi = min(lo + grain, count)
                body(lo..<hi, 0)
                lo = hi
            }
            return
        }
        withoutActuallyEscaping(body) { escaping in
            self.shared.region(WorkerPoolShared.Job(body: escaping, count: count, grain: grain))
        }
        self.shared.release()
    }
}

/// The state the caller of `WorkerPool.run` shares with the worker threads.
///
/// A region is published in one atomic word, `ticket`: the region's number (high 32 bits),
/// its chunk count (bits 16..<32) and the next unclaimed chunk (low 16 bits). A thread claims
/// a chunk with a compare-and-swap that also checks the region number, so a worker that wakes
/// late never touches a region other than the one it saw; `done` counts finished chunks, and
/// the region ends when it reaches the chunk count — a worker that never woke up delays
/// nothing.
///
/// Safety argument for the unchecked Sendable conformance (every mutable field, who touches it, when):
/// - `job` and `region` are written only by the thread holding `busy` (the region's caller);
///   workers never read `region`. `job` is set before the
///   sequentially consistent store of `ticket` that publishes the region, cleared after `done`
///   reaches the chunk count (acquiring load). A worker reads it only after claiming a chunk
///   below the chunk count of that same region (acquiring compare-and-swap), so the region
///   cannot end before the worker's releasing increment of `done`; and it drops its copy of
///   the closure before that increment (`runChunk` is not inlined), so the closure (valid only
///   inside `withoutActuallyEscaping`) is never used or retained after `run` returns.
/// - `done` is reset by the caller before publishing; no thread increments it without a chunk
///   claimed in the current region.
/// - Parking: a worker increments `sleepers` and re-reads `ticket` under `mutex` before
///   waiting; the caller stores `ticket` and then reads `sleepers` (both sequentially
///   consistent), and broadcasts under `mutex` when it is non-zero. One of the two sees the
///   other's write, so a wake-up is never lost.
/// - `mutex`, `cond` and `threadIDs` are set in `init` and freed in `stop` after every worker
///   was joined. Each worker thread holds a retain on this object until it exits.
// Why it is safe: every mutable field is guarded as the safety argument above
// says (atomics, or `mutex`, or written only before the workers start and after they joined).
// Unchecked sendability is safe here: every mutable field is atomic, mutex-guarded or set before workers start.
final class WorkerPoolShared: @unchecked Sendable {  // Safe: fields atomic, locked or set before workers start.
    struct Job {
        var body: (Range<Int>, Int) -> Void
        var count: Int
        var grain: Int
    }

    /// Chunks a region may have (the ticket's 16-bit fields).
    static let maxChunks = 0xFFFF

    /// Spin iterations (each one atomic load) before a worker parks: tens of microseconds,
    /// longer than the serial work between two regions of a forward pass.
    static let spinLimit = 20_000

    private let ticket = Atomic<Int>(0)
    private let done = Atomic<Int>(0)
    private let sleepers = Atomic<Int>(0)
    private let busy = Atomic<Bool>(false)
    private let stopping = Atomic<Bool>(false)
    private var job: Job?
    private var region = 0
    private let workerCount: Int
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>
    private var threadIDs: [pthread_t] = []

    init(workers: Int) {
        self.workerCount = workers
        self.mutex = .allocate(capacity: 1)
        self.cond = .allocate(capacity: 1)
        pthread_mutex_init(self.mutex, nil)
        pthread_cond_init(self.cond, nil)
        for index in 0..<workers {
            let context = Box(shared: self, index: index + 1)
            let argument = Unmanaged.passRetained(context).toOpaque()
            #if canImport(Glibc)
                var id = pthread_t()
            #else
                var id: pthread_t? = nil
            #endif
            let status = pthread_create(&id, nil, workerPoolMain, argument)
            precondition(status == 0, "WorkerPool: pthread_create failed (\(status))")
            #if canImport(Glibc)
                self.threadIDs.append(id)
            #else
                self.threadIDs.append(id!)
            #endif
        }
    }

    /// What a worker thread receives: the shared state and its thread index (≥ 1).
    final class Box {
        let shared: WorkerPoolShared
        let index: Int
        init(shared: WorkerPoolShared, index: Int) {
            self.shared = shared
            self.index = index
        }
    }

    func acquire() -> Bool {
        self.busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged
    }

    func release() {
        self.busy.store(false, ordering: .releasing)
    }

    /// Publishes `job` (at most `maxChunks` chunks), takes part in it as thread 0, waits until
    /// every chunk is done.
    func region(_ job: Job) {
        let chunks = (job.count + job.grain - 1) / job.grain
        precondition(chunks <= Self.maxChunks)
        self.job = job
        self.region = (self.region + 1) & 0xFFFF_FFFF
        self.done.store(0, ordering: .relaxed)
        let published = self.region << 32 | chunks << 16
        self.ticket.store(published, ordering: .sequentiallyConsistent)
        if self.sleepers.load(ordering: .sequentiallyConsistent) > 0 {
            pthread_mutex_lock(self.mutex)
            pthread_cond_broadcast(self.cond)
            pthread_mutex_unlock(self.mutex)
        }
        self.work(published >> 16, index: 0)
        var spins = 0
        while self.done.load(ordering: .acquiring) < chunks {
            spins += 1
            // A worker descheduled mid-chunk on a busy machine: let it run.
            if spins > Self.spinLimit { sched_yield() }
        }
        self.job = nil
    }

    /// Claims and runs chunks of the region `key` (region number and chunk count, the
    /// ticket's high 48 bits) until none is left or another region was published.
    private func work(_ key: Int, index: Int) {
        let chunks = key & 0xFFFF
        var current = self.ticket.load(ordering: .acquiring)
        while current >> 16 == key && current & 0xFFFF < chunks {
            let (exchanged, original) = self.ticket.compareExchange(
                expected: current, desired: current + 1, ordering: .acquiring)
            guard exchanged else {
                current = original
                continue
            }
            self.runChunk(current & 0xFFFF, index: index)
            self.done.add(1, ordering: .releasing)
            current = self.ticket.load(ordering: .acquiring)
        }
    }

    /// Runs one claimed chunk. Not inlined, so the copy of the closure is released before
    /// the chunk is reported done.
    @inline(never)
    private func runChunk(_ chunk: Int, index: Int) {
        let job = self.job!
        let lo = chunk * job.grain
        job.body(lo..<min(lo + job.grain, job.count), index)
    }

    /// A worker thread's loop: wait for a new region (spin, then park), take part, repeat.
    func workerLoop(index: Int) {
        var seen = 0
        while true {
            var spins = 0
            var current = self.ticket.load(ordering: .acquiring) >> 16
            while current == seen {
                spins += 1
                if spins > Self.spinLimit {
                    pthread_mutex_lock(self.mutex)
                    self.sleepers.add(1, ordering: .sequentiallyConsistent)
                    current = self.ticket.load(ordering: .sequentiallyConsistent) >> 16
                    while current == seen && !self.stopping.load(ordering: .sequentiallyConsistent) {
                        pthread_cond_wait(self.cond, self.mutex)
                        current = self.ticket.load(ordering: .sequentiallyConsistent) >> 16
                    }
                    self.sleepers.subtract(1, ordering: .sequentiallyConsistent)
                    pthread_mutex_unlock(self.mutex)
                    break
                }
                current = self.ticket.load(ordering: .acquiring) >> 16
            }
            if self.stopping.load(ordering: .acquiring) { return }
            seen = current
            self.work(current, index: index)
        }
    }

    /// Stops and joins every worker, then frees the parking primitives. Called once, by the
    /// owning `WorkerPool`'s `deinit` (so no region is running).
    func stop() {
        self.stopping.store(true, ordering: .sequentiallyConsistent)
        pthread_mutex_lock(self.mutex)
        pthread_cond_broadcast(self.cond)
        pthread_mutex_unlock(self.mutex)
        for id in self.threadIDs { pthread_join(id, nil) }
        self.threadIDs = []
        pthread_cond_destroy(self.cond)
        pthread_mutex_destroy(self.mutex)
        self.cond.deallocate()
        self.mutex.deallocate()
    }
}

/// The entry point of a worker thread: takes the retained `Box`, runs the loop, releases it.
private func workerPoolMain(_ argument: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    let box = Unmanaged<WorkerPoolShared.Box>.fromOpaque(argument!).takeRetainedValue()
    box.shared.workerLoop(index: box.index)
    return nil
}
