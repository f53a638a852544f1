import Foundation
import Logging
import LorikeetTestSupport
import Synchronization
import Testing

@testable import LorikeetCluster

/// The etcd client against a real 3-member etcd cluster on loopback (one cluster per test;
/// the suite is serialized so that at most three etcd processes run for it at a time).
/// No wall-clock assertion: time limits here are hang guards only.
@Suite(.serialized, .enabled(if: EtcdCluster.isAvailable, Comment(rawValue: EtcdCluster.unavailableMessage)), .ownThreads)
struct EtcdClientTests {
    static let logger: Logger = {
        var logger = Logger(label: "etcd-test")
        logger.logLevel = .warning
        return logger
    }()

    /// Runs `body` with a fresh cluster and a client of all its members (member 0 first).
    func withCluster(
        options: EtcdClient.Options = EtcdClient.Options(), _ body: (EtcdCluster, EtcdClient) async throws -> Void
    ) async throws {
        let cluster = try await blocking { try EtcdCluster() }
        let client = try EtcdClient(endpoints: cluster.endpoints, logger: Self.logger, options: options)
        do {
            try await body(cluster, client)
        } catch {
            client.shutdown()
            await blocking { cluster.shutdown() }
            throw error
        }
        client.shutdown()
        await blocking { cluster.shutdown() }
    }

    @Test("a write whose answer is lost after it landed fails as outcome unknown, is not sent again, and reads back")
    func lostAnswer() async throws {
        try await withCluster { cluster, _ in
            let proxy = try AnswerDroppingProxy(target: cluster.endpoints[0], marker: "/v3/kv/put")
            defer { proxy.stop() }
            let client = try EtcdClient(
                endpoints: ["127.0.0.1:\(proxy.port)"] + Array(cluster.endpoints.dropFirst()), logger: Self.logger)
            defer { client.shutdown() }
            let error = await #expect(throws: EtcdError.self) {
                try await withHangGuard(seconds: 30) { try await client.put(key: "/lost/a", value: "landed") }
            }
            if case .outcomeUnknown? = error {} else { Issue.record("a lost answer failed with \(String(describing: error))") }
            #expect(proxy.dropped == 1)
            let kv = try await client.range(key: "/lost/a").kvs.first
            #expect(kv?.valueString == "landed" && kv?.version == 1, "landed once: \(String(describing: kv))")
        }
    }

    @Test func putRangeDelete() async throws {
        try await withCluster { _, client in
            let first = try await client.put(key: "/t/a", value: "1")
            let second = try await client.put(key: "/t/b", value: "2")
            let third = try await client.put(key: "/t/a", value: "3")
            #expect(first < second && second < third)
            let all = try await client.range(key: "/t/", prefix: true)
            #expect(all.kvs.map(\.key) == ["/t/a", "/t/b"])
            #expect(all.kvs.map(\.valueString) == ["3", "2"])
            #expect(all.kvs[0].version == 2 && all.kvs[0].createRevision == first && all.kvs[0].modRevision == third)
            #expect(all.revision == third && all.count == 2)
            let old = try await client.range(key: "/t/a", revision: first)
            #expect(old.kvs.map(\.valueString) == ["1"])
            #expect(try await client.range(key: "/t/nothing").kvs.isEmpty)
            let (deleted, revision) = try await client.delete(key: "/t/", prefix: true)
            #expect(deleted == 2 && revision > third)
            #expect(try await client.range(key: "/t/", prefix: true).kvs.isEmpty)
            // Binary values round-trip.
            let bytes: [UInt8] = [0, 1, 0xFF, 0x80, 0x0A]
            try await client.put(key: "/t/bin", value: bytes)
            #expect(try await client.range(key: "/t/bin").kvs.first?.value == bytes)
        }
    }

    @Test func racingCreatesExactlyOneWins() async throws {
        try await withCluster { cluster, client in
            // Three clients, each starting at another member.
            let clients = try (0..<3).map { first in
                try EtcdClient(endpoints: Array(cluster.endpoints[first...] + cluster.endpoints[..<first]), logger: Self.logger)
            }
            defer { for client in clients { client.shutdown() } }
            for round in 0..<5 {
                let key = "/race/\(round)"
                let results = try await withThrowingTaskGroup(of: (Int, EtcdTxnResult).self) { group in
                    for racer in 0..<6 {
                        group.addTask {
                            let result = try await clients[racer % 3].txn(
                                compare: [.absent(key)], success: [.put(key: key, value: Array("racer \(racer)".utf8))],
                                failure: [.range(key: key)])
                            return (racer, result)
                        }
                    }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
                let winners = results.filter { $0.1.succeeded }
                try #require(winners.count == 1, "round \(round): \(winners.count) winners")
                let stored = try await client.range(key: key).kvs.first
                #expect(stored?.valueString == "racer \(winners[0].0)")
                #expect(stored?.modRevision == winners[0].1.revision)
                for (_, loser) in results where !loser.succeeded {
                    guard case .range(let seen)? = loser.results.first else {
                        Issue.record("loser without range")
                        continue
                    }
                    #expect(seen.kvs.first?.valueString == "racer \(winners[0].0)")
                }
            }
            // A txn etcd refuses outright (two writes to one key) is `txnFailed`.
            await #expect(throws: EtcdError.self) {
                try await client.txn(compare: [], success: [.put(key: "/dup", value: []), .put(key: "/dup", value: [])])
            }
        }
    }

    @Test func leaseExpiryRemovesKeys() async throws {
        try await withCluster { _, client in
            // The attachment is checked on a lease that cannot expire during the checks (a
            // stalled CI machine once took more than 6 s between the put and the range); the
            // expiry itself is checked on a second, short lease with no timed step in between.
            let attached = try await client.grantLease(ttl: 120)
            #expect(attached.ttl >= 120)
            try await client.put(key: "/lease/attached", value: "alive", lease: attached.id)
            let live = try await client.timeToLive(attached.id)
            #expect(live.keys == ["/lease/attached"] && (live.ttl ?? 0) > 0)
            #expect(try await client.range(key: "/lease/attached").kvs.first?.lease == attached.id)
            try await client.revoke(attached.id)

            let lease = try await client.grantLease(ttl: 3)
            do {
                try await client.put(key: "/lease/node", value: "alive", lease: lease.id)
            } catch EtcdError.leaseNotFound {
                // Stalled for more than the TTL between grant and put: already expired.
            }
            try await eventually("the leased key to disappear", seconds: 30) {
                try await client.range(key: "/lease/node").kvs.isEmpty
            }
            #expect(try await client.keepAliveOnce(lease.id) == 0)
            #expect(try await client.timeToLive(lease.id).ttl == nil)
            await #expect(throws: EtcdError.leaseNotFound(id: lease.id)) { try await client.revoke(lease.id) }
            await #expect(throws: EtcdError.leaseNotFound(id: lease.id)) {
                try await client.put(key: "/lease/again", value: "x", lease: lease.id)
            }
            // Revoking a live lease deletes its keys at once.
            let other = try await client.grantLease(ttl: 60)
            try await client.put(key: "/lease/other", value: "x", lease: other.id)
            try await client.revoke(other.id)
            #expect(try await client.range(key: "/lease/other").kvs.isEmpty)
        }
    }

    @Test func leaseKeeperKeepsAliveAndReportsQuorumLoss() async throws {
        try await withCluster { cluster, client in
            // 9 s: renewals every 3 s, each given 1.5 s before it counts as failing. With 3 s
            // a single renewal slower than 0.5 s on a loaded machine reported failing.
            let lease = try await client.grantLease(ttl: 9)
            try await client.put(key: "/keeper/node", value: "alive", lease: lease.id)
            let reports = Mutex<[LeaseKeeper.Health]>([])
            let keeper = LeaseKeeper(client: client, lease: lease)
            let task = Task {
                try await keeper.run { health in reports.withLock { $0.append(health) } }
            }
            defer { task.cancel() }
            // Two TTLs later the key is still there.
            try await Task.sleep(for: .seconds(lease.ttl * 2))
            #expect(try await client.range(key: "/keeper/node").kvs.count == 1)
            #expect(reports.withLock { $0.allSatisfy { if case .healthy = $0 { true } else { false } } })
            // Quorum lost: the keeper reports failing (the owner would fence now).
            await blocking {
                cluster.stop(1)
                cluster.stop(2)
            }
            try await eventually("the keeper to report failing renewals", seconds: 30) {
                reports.withLock { $0.contains { if case .failing = $0 { true } else { false } } }
            }
            // Quorum back: renewals succeed again, and the key survived.
            try await blocking {
                try cluster.start(1)
                try cluster.start(2)
            }
            try await eventually("the keeper to report healthy again", seconds: 60) {
                reports.withLock { if case .healthy? = $0.last { true } else { false } }
            }
            #expect(try await client.range(key: "/keeper/node").kvs.count == 1)
            task.cancel()
            let outcome = await task.result
            #expect(throws: EtcdError.cancelled) { try outcome.get() }
        }
    }

    @Test func watchSeesPutsAndDeletesInOrder() async throws {
        try await withCluster { _, client in
            let start = try await client.range(key: "/w/", prefix: true).revision + 1
            let events = client.watch(prefix: "/w/", fromRevision: start)
            var expected: [(EtcdWatchEvent.Kind, String, Int64)] = []
            for step in 0..<20 {
                let key = "/w/\(step % 4)"
                if step % 5 == 4 {
                    expected.append((.delete, key, try await client.delete(key: key).revision))
                } else {
                    expected.append((.put, key, try await client.put(key: key, value: "v\(step)")))
                }
            }
            try await client.put(key: "/other", value: "not watched")
            // One transaction: two events with one revision, in the transaction's order.
            let txn = try await client.txn(compare: [], success: [.put(key: "/w/t1", value: []), .put(key: "/w/t2", value: [])])
            expected += [(.put, "/w/t1", txn.revision), (.put, "/w/t2", txn.revision)]
            let seen = try await collect(events, count: expected.count, seconds: 30)
            #expect(seen.map(\.kind) == expected.map(\.0))
            #expect(seen.map(\.kv.key) == expected.map(\.1))
            #expect(seen.map(\.revision) == expected.map(\.2))
            #expect(seen.first?.kv.valueString == "v0")
        }
    }

    @Test func watchResumesAfterItsMemberIsKilled() async throws {
        try await withCluster { cluster, client in
            // The watching client starts at member 0; the writer uses members 1 and 2 only.
            let writer = try EtcdClient(endpoints: Array(cluster.endpoints[1...]), logger: Self.logger)
            defer { writer.shutdown() }
            let start = try await writer.range(key: "/r/", prefix: true).revision + 1
            let events = client.watch(prefix: "/r/", fromRevision: start)
            var iterator = events.makeAsyncIterator()
            var seen: [EtcdWatchEvent] = []
            var written: [Int64] = []
            for step in 0..<40 {
                if step == 15 {
                    // Make sure the watch is live on member 0, then kill that member.
                    while seen.count < 10 { seen.append(try #require(try await iterator.next())) }
                    await blocking { cluster.kill(0) }
                }
                written.append(try await putReadingBack(writer, key: "/r/\(step % 7)", value: "s\(step)"))
            }
            seen += try await collect(iterator: &iterator, count: written.count - seen.count, seconds: 60)
            #expect(seen.map(\.revision) == written, "no event lost or repeated across the kill")
            let final = try await writer.range(key: "/r/", prefix: true)
            var replayed: [String: String] = [:]
            for event in seen { replayed[event.kv.key] = event.kv.valueString }
            #expect(replayed == Dictionary(uniqueKeysWithValues: final.kvs.map { ($0.key, $0.valueString) }))
        }
    }

    @Test func watchFromACompactedRevisionReportsCompacted() async throws {
        try await withCluster { _, client in
            let first = try await client.put(key: "/c/k", value: "1")
            try await client.put(key: "/c/k", value: "2")
            let third = try await client.put(key: "/c/k", value: "3")
            try await client.compact(revision: third)
            let compacted = client.watch(prefix: "/c/", fromRevision: first)
            await #expect(throws: EtcdError.compacted(revision: third)) { try await firstEvent(of: compacted) }
            await #expect(throws: EtcdError.compacted(revision: first)) { try await client.range(key: "/c/k", revision: first) }
            // Reload at the current revision, then watch from there: works.
            let reload = try await client.range(key: "/c/", prefix: true)
            let events = client.watch(prefix: "/c/", fromRevision: reload.revision + 1)
            let next = try await client.put(key: "/c/k", value: "4")
            #expect(try await collect(events, count: 1, seconds: 30).map(\.revision) == [next])
        }
    }

    @Test func quorumLossFailsWithinTheDeadlineAndHeals() async throws {
        try await withCluster { cluster, client in
            let before = try await client.put(key: "/q/kept", value: "committed")
            await blocking {
                cluster.stop(1)
                cluster.stop(2)
            }
            for call in ["put", "range"] {
                let error = await #expect(throws: EtcdError.self) {
                    try await withHangGuard(seconds: 30) {
                        if call == "put" {
                            try await client.put(key: "/q/new", value: "x", timeout: .seconds(3))
                        } else {
                            _ = try await client.range(key: "/q/kept", timeout: .seconds(3))
                        }
                    }
                }
                switch error {
                case .unavailable?, .timeout?, .outcomeUnknown?: break
                default: Issue.record("\(call) with quorum lost failed with \(String(describing: error))")
                }
            }
            try await blocking {
                try cluster.start(1)
                try cluster.start(2)
            }
            try await eventually("calls to succeed again", seconds: 60) {
                (try? await client.put(key: "/q/new", value: "after", timeout: .seconds(3))) != nil
            }
            let kept = try await client.range(key: "/q/kept").kvs.first
            #expect(kept?.valueString == "committed" && kept?.modRevision == before)
        }
    }

    @Test func failsOverFromDeadAndFrozenMembers() async throws {
        try await withCluster { cluster, client in
            try await client.put(key: "/f/k", value: "v")
            await blocking { cluster.kill(0) }
            // Connection refused -> next member; the time covers an election if it was the leader.
            #expect(try await client.range(key: "/f/k", timeout: .seconds(30)).kvs.count == 1)
            try await blocking {
                try cluster.start(0)
                try cluster.waitHealthy()
            }
            // A frozen member accepts connections but never answers: the next member does.
            let frozenFirst = try EtcdClient(endpoints: [cluster.endpoints[1], cluster.endpoints[2]], logger: Self.logger)
            defer { frozenFirst.shutdown() }
            cluster.pause(1)
            defer { cluster.resume(1) }
            #expect(try await withHangGuard(seconds: 30) { try await frozenFirst.range(key: "/f/k", timeout: .seconds(8)) }.kvs.count == 1)
            // A write to a frozen member is not retried elsewhere (it may still apply): it
            // fails with a timeout that says so; the next call starts at the other member.
            let stuck = try EtcdClient(endpoints: [cluster.endpoints[1], cluster.endpoints[2]], logger: Self.logger)
            defer { stuck.shutdown() }
            let error = await #expect(throws: EtcdError.self) { try await stuck.put(key: "/f/w", value: "x", timeout: .seconds(8)) }
            if case .outcomeUnknown? = error {} else { Issue.record("a write to a frozen member failed with \(String(describing: error))") }
            try await stuck.put(key: "/f/w", value: "y", timeout: .seconds(8))
        }
    }

    @Test func oversizedResponsesFailTheCall() async throws {
        var options = EtcdClient.Options()
        options.responseLimit = 2048
        try await withCluster(options: options) { _, client in
            let start = try await client.put(key: "/big/small", value: "x") + 1
            try await client.put(key: "/big/value", value: [UInt8](repeating: 0x41, count: 4096))
            await #expect(throws: EtcdError.responseTooLarge(limit: 2048)) { try await client.range(key: "/big/", prefix: true) }
            let oversized = client.watch(prefix: "/big/", fromRevision: start)
            await #expect(throws: EtcdError.responseTooLarge(limit: 2048)) { try await firstEvent(of: oversized) }
            #expect(try await client.range(key: "/big/small").kvs.count == 1)  // the client carries on
        }
    }

    /// Not a pass/fail test: prints compare-and-swap commit latency on this 3-member cluster.
    @Test func txnLatency() async throws {
        try await withCluster { _, client in
            var revision: Int64 = 0
            var samples: [Duration] = []
            let clock = ContinuousClock()
            for step in 0..<200 {
                let started = clock.now
                let result = try await client.txn(
                    compare: [.unchanged("/lat/counter", since: revision)],
                    success: [.put(key: "/lat/counter", value: Array("\(step)".utf8))])
                samples.append(clock.now - started)
                try #require(result.succeeded)
                revision = result.revision
            }
            samples.sort()
            let p50 = samples[samples.count / 2]
            let p99 = samples[samples.count * 99 / 100]
            print("etcd CAS txn latency, 3 members on loopback, \(samples.count) sequential: p50 \(p50), p99 \(p99)")
        }
    }
}

// MARK: Helpers

/// Runs blocking test-support work (process control, health polling) on its own thread, so
/// that it never occupies one of the two threads of the cooperative pool.
func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}

func blocking(_ body: @escaping @Sendable () -> Void) async {
    await withCheckedContinuation { continuation in
        Thread {
            body()
            continuation.resume()
        }.start()
    }
}

struct HangGuard: Error, CustomStringConvertible {
    var description: String
}

/// Fails (instead of hanging the suite) when `body` takes longer than `seconds`.
func withHangGuard<T: Sendable>(seconds: Int, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: .seconds(seconds))
            return nil
        }
        defer { group.cancelAll() }
        guard let result = try await group.next(), let value = result else {
            throw HangGuard(description: "hang guard: still waiting after \(seconds) s")
        }
        return value
    }
}

/// Polls `condition` until it holds; fails after `seconds` (a hang guard, not a timing claim).
func eventually(_ what: String, seconds: Int, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(100))
    }
    throw HangGuard(description: "waited \(seconds) s for \(what)")
}

/// Puts a unique value; when the outcome is unknown (timeout during an election), reads
/// back and retries only if the write did not land. Returns the write's revision.
func putReadingBack(_ client: EtcdClient, key: String, value: String) async throws -> Int64 {
    for _ in 0..<10 {
        do {
            return try await client.put(key: key, value: value)
        } catch .timeout, .unavailable, .outcomeUnknown {
            if let kv = try? await client.range(key: key).kvs.first, kv.valueString == value { return kv.modRevision }
        }
    }
    throw HangGuard(description: "put of \(key) kept failing")
}

/// The first event of a watch (within a hang guard of 30 s).
func firstEvent(of events: AsyncThrowingStream<EtcdWatchEvent, any Error>) async throws {
    try await withHangGuard(seconds: 30) {
        var iterator = events.makeAsyncIterator()
        _ = try await iterator.next()
    }
}

func collect(_ events: AsyncThrowingStream<EtcdWatchEvent, any Error>, count: Int, seconds: Int) async throws -> [EtcdWatchEvent] {
    var iterator = events.makeAsyncIterator()
    return try await collect(iterator: &iterator, count: count, seconds: seconds)
}

func collect(
    iterator: inout AsyncThrowingStream<EtcdWatchEvent, any Error>.Iterator, count: Int, seconds: Int
) async throws -> [EtcdWatchEvent] {
    var seen: [EtcdWatchEvent] = []
    let deadline = ContinuousClock.now + .seconds(seconds)
    while seen.count < count {
        guard ContinuousClock.now < deadline else { throw HangGuard(description: "saw \(seen.count) of \(count) events in \(seconds) s") }
        guard let event = try await iterator.next() else { throw HangGuard(description: "watch ended after \(seen.count) events") }
        seen.append(event)
    }
    return seen
}
