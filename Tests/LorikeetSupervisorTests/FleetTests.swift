import Foundation
import LorikeetProto
import LorikeetTestSupport
import Synchronization
import Testing

/// Fleet mode for real (`docs/CLUSTER.md`): a 3-member etcd cluster and three
/// `lorikeet serve --cluster-endpoints ...` nodes with 2 workers each, on loopback.
/// Serialized: each test runs 3 servers and 3 etcd members on 2 cores.
@Suite(
    "fleet mode (3 nodes on a real etcd cluster)", .serialized, .enabled(if: EtcdCluster.isAvailable, "\(EtcdCluster.unavailableMessage)"),
    .ownThreads)
struct FleetTests {
    static let leaseSeconds = 6

    /// One fleet: etcd and the nodes A, B, C.
    final class Fleet {
        let etcd: EtcdCluster
        var nodes: [ServerUnderTest] = []
        let cluster = "t\(UInt32.random(in: 0..<UInt32.max))"

        init(names: [String] = ["A", "B", "C"]) throws {
            self.etcd = try EtcdCluster()
            for name in names { self.nodes.append(try self.start(name)) }
        }

        /// The fleet flags of node `name`.
        func arguments(_ name: String) -> [String] {
            [
                "--cluster-endpoints", self.etcd.endpoints.map { "http://\($0)" }.joined(separator: ","), "--cluster-name", self.cluster,
                "--node-name", name, "--cluster-lease-seconds", "\(FleetTests.leaseSeconds)",
            ]
        }

        func start(_ name: String, stateDirectory: String? = nil, extraArguments: [String] = []) throws -> ServerUnderTest {
            try ServerUnderTest(workers: 2, stateDirectory: stateDirectory, extraArguments: self.arguments(name) + extraArguments)
        }

        func stop() {
            for node in self.nodes { node.stop() }
            self.etcd.shutdown()
        }
    }

    static func load(_ node: ServerUnderTest, _ name: String) throws -> TestHTTP.Response {
        try TestHTTP.post(port: node.port, "/v1/load_lora_adapter", ["lora_name": name, "lora_path": node.adapterDirectory + "/plain"])
    }

    static func unload(_ node: ServerUnderTest, _ name: String) throws -> TestHTTP.Response {
        try TestHTTP.post(port: node.port, "/v1/unload_lora_adapter", ["lora_name": name])
    }

    static func complete(_ node: ServerUnderTest, _ model: String) throws -> Int {
        try TestHTTP.post(port: node.port, "/v1/completions", ["model": model, "prompt": "hi", "max_tokens": 1]).status
    }

    /// The committed table of a node (`ctl adapters`): name -> id.
    static func table(_ node: ServerUnderTest) throws -> [String: Int] { try ServeTests.table(node) }

    /// Runs `body` for every index at once (one thread each) and returns the results in order.
    static func parallel<T: Sendable>(_ count: Int, _ body: @escaping @Sendable (Int) throws -> T) -> [Result<T, any Error>] {
        let results = Mutex([Result<T, any Error>?](repeating: nil, count: count))
        let group = DispatchGroup()
        for index in 0..<count {
            // Threads of their own: these block on HTTP for seconds.
            group.enter()
            Thread {
                defer { group.leave() }
                let result = Result { try body(index) }
                results.withLock { $0[index] = result }
            }.start()
        }
        group.wait()
        return results.withLock { $0.map { $0! } }
    }

    @Test("a second node started with a name in use stops with exit 78 and says why; the first node keeps serving")
    func duplicateNodeName() async throws {
        let fleet = try Fleet(names: ["A"])
        defer { fleet.stop() }
        let directory = TestEnvironment.temporaryDirectory("lk-dup-node")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // The claim waits 3 lease TTLs (a restarted node waits for its previous key to
        // expire), then gives up: 120 s bounds a hang on a loaded machine.
        let refused = try ServeTests.refusedStart(
            stateDirectory: directory + "/state", extraArguments: fleet.arguments("A"), timeoutSeconds: 120)
        #expect(refused.status == LorikeetExitCode.cannotBoot.rawValue, "\(refused.log.suffix(2000))")
        #expect(refused.log.contains("another node uses --node-name A"), "\(refused.log.suffix(2000))")
        #expect(try Self.load(fleet.nodes[0], "after-duplicate").status == 200)
        #expect(try Self.complete(fleet.nodes[0], "after-duplicate") == 200)
    }

    @Test("a commit whose answer from etcd is lost is read back: the load answers 200 and every node serves the adapter")
    func lostCommitAnswer() async throws { try Self.lostCommitAnswerBody() }

    static func lostCommitAnswerBody() throws {
        let fleet = try Fleet(names: ["B"])
        defer { fleet.stop() }
        // Node A talks to etcd through a proxy that loses the answer to the commit of
        // "lost" (the only request naming its key) after etcd applied it.
        let key = Data("/\(fleet.cluster)/adapters/lost".utf8).base64EncodedString()
        let proxy = try AnswerDroppingProxy(target: fleet.etcd.endpoints[0], marker: key)
        defer { proxy.stop() }
        let endpoints = (["127.0.0.1:\(proxy.port)"] + fleet.etcd.endpoints).map { "http://\($0)" }.joined(separator: ",")
        let a = try ServerUnderTest(
            workers: 2,
            extraArguments: [
                "--cluster-endpoints", endpoints, "--cluster-name", fleet.cluster, "--node-name", "A", "--cluster-lease-seconds",
                "\(FleetTests.leaseSeconds)",
            ])
        fleet.nodes.append(a)
        let response = try Self.load(a, "lost")
        #expect(response.status == 200, "\(response.body.prefix(500))")
        #expect(proxy.dropped == 1, "the commit's answer was dropped")
        #expect(a.log.contains("read back: committed"), "\(a.log.suffix(3000))")
        for node in fleet.nodes {
            for _ in 0..<10 { #expect(try Self.complete(node, "lost") == 200) }
        }
        #expect(Set(try fleet.nodes.map { try Self.table($0)["lost"] }).count == 1)
    }

    @Test(
        "--lora-modules in a fleet: nodes started together with the same startup adapter commit it once, under one fleet-wide id; every node serves it; a restarted node changes nothing"
    )
    func startupModules() async throws { try Self.startupModulesBody() }

    static func startupModulesBody() throws {
        let fleet = try Fleet(names: [])
        defer { fleet.stop() }
        let module = ["--lora-modules", "startup=" + (try TestEnvironment.fixtureDirectory()) + "/adapters/plain"]
        let arguments = ["A", "B"].map { fleet.arguments($0) + module }
        let started = Self.parallel(2) { index in try ServerUnderTest(workers: 2, extraArguments: arguments[index]) }
        for result in started { if case .success(let node) = result { fleet.nodes.append(node) } }
        for result in started { _ = try result.get() }
        func startupIDs() throws -> [Int?] { try fleet.nodes.map { try Self.table($0)["startup"] } }
        let deadline = Date().addingTimeInterval(60)
        while try startupIDs().contains(nil), Date() < deadline { Thread.sleep(forTimeInterval: 0.2) }
        let ids = try startupIDs()
        #expect(ids.allSatisfy { $0 != nil } && Set(ids).count == 1, "startup ids per node: \(ids)")
        for node in fleet.nodes {
            for _ in 0..<10 { #expect(try Self.complete(node, "startup") == 200) }
            #expect(!node.log.contains("--lora-modules adapter refused"), "\(node.log.suffix(3000))")
        }
        // An API load afterwards gets another id from the fleet's counter.
        #expect(try Self.load(fleet.nodes[1], "after-startup").status == 200)
        let later = try Self.table(fleet.nodes[0])["after-startup"]
        #expect(later != nil && later != ids[0])
        // A node restarted with the same module finds it in the fleet's table: same id.
        fleet.nodes[0].stop()
        fleet.nodes[0] = try fleet.start("A", extraArguments: module)
        Thread.sleep(forTimeInterval: 2)
        #expect(try Self.table(fleet.nodes[0])["startup"] == ids[0])
        #expect(try Self.table(fleet.nodes[1])["startup"] == ids[0])
        #expect(try Self.complete(fleet.nodes[0], "startup") == 200)
    }

    @Test(
        "load on A is served by 100 fresh connections on every node; unload on C is gone everywhere; racing loads: one winner; 30 parallel loads: unique ids"
    )
    func commitsAcrossTheFleet() async throws { try Self.commitsAcrossTheFleetBody() }

    static func commitsAcrossTheFleetBody() throws {
        let fleet = try Fleet()
        defer { fleet.stop() }
        let (a, c) = (fleet.nodes[0], fleet.nodes[2])

        let loaded = try Self.load(a, "fleet-a")
        #expect(loaded.status == 200, "\(loaded.body)")
        for node in fleet.nodes {
            var statuses: [Int: Int] = [:]
            for _ in 0..<100 { statuses[try Self.complete(node, "fleet-a"), default: 0] += 1 }
            #expect(statuses == [200: 100], "node on port \(node.port): \(statuses)")
        }

        let unloaded = try Self.unload(c, "fleet-a")
        #expect(unloaded.status == 200, "\(unloaded.body)")
        for node in fleet.nodes {
            var statuses: [Int: Int] = [:]
            for _ in 0..<100 { statuses[try Self.complete(node, "fleet-a"), default: 0] += 1 }
            #expect(statuses[200] == nil, "node on port \(node.port) still serves the unloaded adapter: \(statuses)")
        }

        // Racing loads of one name on every node: exactly one wins.
        let nodes = fleet.nodes
        let race = Self.parallel(3) { index in try Self.load(nodes[index], "race") }
        let responses = try race.map { try $0.get() }
        #expect(responses.filter { $0.status == 200 }.count == 1, "\(responses.map { "\($0.status) \($0.body)" })")
        for response in responses where response.status != 200 {
            #expect(response.status == 400 && response.body.contains("already loaded"), "\(response.status) \(response.body)")
        }

        // 30 distinct loads spread over the nodes, 6 at a time: every one succeeds, ids are unique.
        let loads = Self.parallel(6) { worker in
            try (0..<5).map { step -> String in
                let index = worker * 5 + step
                let response = try Self.load(nodes[index % 3], "many-\(index)")
                return response.status == 200 ? "200" : "\(response.status) \(response.body)"
            }
        }
        let statuses = try loads.flatMap { try $0.get() }
        #expect(statuses == Array(repeating: "200", count: 30), "\(statuses)")
        let tables = try fleet.nodes.map { try Self.table($0) }
        #expect(tables[0].count == 31, "\(tables[0])")
        #expect(Set(tables[0].values).count == tables[0].count, "ids are not unique: \(tables[0])")
        #expect(!tables[0].values.contains(loaded.json?["lora_int_id"] as? Int ?? 1), "an id was reused")
        #expect(tables[1] == tables[0] && tables[2] == tables[0], "\(tables)")

        // `ctl nodes`: every node, ready, at the same applied revision once idle.
        try ServeTests.waitFor("every node key at one revision", timeout: 30) {
            let listed = try a.ctlJSON(["nodes"]) as? [String: Any]
            let nodes = listed?["nodes"] as? [[String: Any]] ?? []
            let revisions = Set(nodes.compactMap { $0["applied_revision"] as? Int })
            return Set(nodes.compactMap { $0["name"] as? String }) == ["A", "B", "C"] && revisions.count == 1
                && nodes.allSatisfy { ($0["state"] as? String) == "ready" }
        }
    }

    @Test("etcd quorum lost: loads 503 fast, base requests 200, loads work again once it heals; a kill -9'd node comes back converged")
    func outagesAndRestarts() async throws { try Self.outagesAndRestartsBody() }

    static func outagesAndRestartsBody() throws {
        let fleet = try Fleet()
        defer { fleet.stop() }
        let (a, b) = (fleet.nodes[0], fleet.nodes[1])
        #expect(try Self.load(a, "before").status == 200)

        // One member down: quorum holds, loads work.
        fleet.etcd.stop(2)
        #expect(try Self.load(b, "one-down").status == 200)
        // Two down: no quorum.
        fleet.etcd.stop(1)
        let started = Date()
        let refused = try Self.load(a, "no-quorum")
        #expect(refused.status == 503, "\(refused.status) \(refused.body)")
        #expect(refused.body.contains("cluster unreachable"), "\(refused.body)")
        #expect(Date().timeIntervalSince(started) < 30, "hang guard")
        #expect(try Self.complete(b, "tiny") == 200)
        // Renewals fail: within the lease every node fences adapters and /health; base requests go on.
        try ServeTests.waitFor("node A to fence", timeout: Double(Self.leaseSeconds) * 3) { try Self.complete(a, "before") == 503 }
        let fencedAfter = Date().timeIntervalSince(started)
        let health = try TestHTTP.request(port: a.port, path: "/health")
        #expect(health.status == 503 && health.body.contains("cluster unreachable"), "\(health.status) \(health.body)")
        #expect(try Self.complete(a, "tiny") == 200)
        try fleet.etcd.restart(1)
        try fleet.etcd.restart(2)
        try fleet.etcd.waitHealthy()
        try ServeTests.waitFor("loads to work again", timeout: 60) { try Self.load(a, "healed").status == 200 }
        for node in fleet.nodes { try ServeTests.waitFor("unfenced", timeout: 30) { try Self.complete(node, "before") == 200 } }

        // kill -9 node B's supervisor (its children follow their parent): the others keep committing.
        let stateDirectory = b.stateDirectory
        let children = b.childPIDs()
        kill(b.process.processIdentifier, SIGKILL)
        b.process.waitUntilExit()
        try ServeTests.waitFor("node B's children to exit", timeout: 30) { children.allSatisfy { !ServeTests.isAlive($0) } }
        #expect(try Self.load(a, "while-b-down").status == 200)
        #expect(try Self.unload(fleet.nodes[2], "before").status == 200)
        // B comes back with its old state directory and converges to the fleet's table.
        let restarting = Date()
        let restarted = try fleet.start("B", stateDirectory: stateDirectory)
        fleet.nodes[1] = restarted
        let expected = try Self.table(a)
        #expect(try Self.table(restarted) == expected)
        print(
            String(
                format:
                    "fleet numbers: fenced %.1f s after quorum loss (lease %d s); killed node serving the fleet's table %.1f s after its restart",
                fencedAfter, Self.leaseSeconds, Date().timeIntervalSince(restarting)))
        #expect(try Self.complete(restarted, "while-b-down") == 200)
        #expect(try Self.complete(restarted, "before") == 404)
    }

    @Test("SIGSTOP a node during an unload: the unload completes within the lease; resumed, the node serves the unloaded adapter 0 times")
    func stoppedNode() async throws { try Self.stoppedNodeBody() }

    static func stoppedNodeBody() throws {
        let fleet = try Fleet()
        defer { fleet.stop() }
        let (a, c) = (fleet.nodes[0], fleet.nodes[2])
        #expect(try Self.load(a, "paused").status == 200)
        #expect(try Self.complete(c, "paused") == 200)
        let pids = [c.process.processIdentifier] + c.childPIDs()
        for pid in pids { kill(pid, SIGSTOP) }
        let started = Date()
        let unloaded = try Self.unload(a, "paused")
        let took = Date().timeIntervalSince(started)
        #expect(unloaded.status == 200, "\(unloaded.status) \(unloaded.body)")
        #expect(took < Double(Self.leaseSeconds) * 3, "hang guard: the unload took \(took) s")
        for pid in pids { kill(pid, SIGCONT) }
        var served = 0
        var statuses: [Int: Int] = [:]
        let deadline = Date().addingTimeInterval(Double(Self.leaseSeconds) * 5)
        while Date() < deadline {
            let status = try Self.complete(c, "paused")
            statuses[status, default: 0] += 1
            if status == 200 { served += 1 }
            if status == 404 { break }
        }
        #expect(served == 0, "the resumed node served the unloaded adapter: \(statuses)")
        #expect(statuses[404] == 1, "the resumed node never caught up: \(statuses)")
        try ServeTests.waitFor("node C healthy", timeout: 30) { try TestHTTP.request(port: c.port, path: "/health").status == 200 }
        print("fleet: unload with a stopped node took \(String(format: "%.2f", took)) s; resumed node: \(statuses)")
    }

    /// Load latencies (a 200 means every live node serves the adapter) in ms, sorted.
    static func loadLatencies(_ node: ServerUnderTest, prefix: String, count: Int) throws -> [Double] {
        var latencies: [Double] = []
        for index in 0..<count {
            let started = Date()
            let response = try Self.load(node, "\(prefix)-\(index)")
            latencies.append(Date().timeIntervalSince(started) * 1000)
            #expect(response.status == 200, "\(response.body)")
        }
        return latencies.sorted()
    }

    @Test("numbers: load->visible everywhere at 3 nodes x 2 workers against a single node's commit (printed, no timing assertions)")
    func numbers() async throws { try Self.numbersBody() }

    static func numbersBody() throws {
        let single = try ServerUnderTest(workers: 2)
        let local = try Self.loadLatencies(single, prefix: "single", count: 30)
        single.stop()
        let fleet = try Fleet()
        defer { fleet.stop() }
        let remote = try Self.loadLatencies(fleet.nodes[0], prefix: "fleet", count: 30)
        func percentile(_ values: [Double], _ p: Double) -> Double { values[min(values.count - 1, Int(Double(values.count) * p))] }
        let line = String(
            format:
                "fleet numbers: load->visible p50 %.1f ms p99 %.1f ms (3 nodes x 2 workers); single node p50 %.1f ms p99 %.1f ms; ratio p50 %.2f",
            percentile(remote, 0.5), percentile(remote, 0.99), percentile(local, 0.5), percentile(local, 0.99),
            percentile(remote, 0.5) / max(percentile(local, 0.5), 0.001))
        print(line)
    }

    /// The pid of a node's cluster agent (a child of its supervisor running `cluster-agent`).
    static func agentPID(_ node: ServerUnderTest) -> Int32? {
        node.childPIDs().first { pid in
            let command = (try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? ""
            return command.contains("cluster-agent")
        }
    }

    /// Compacts etcd's history up to its current revision (through member 0's JSON gateway).
    static func compactEtcd(_ etcd: EtcdCluster) throws {
        let port = UInt16(etcd.endpoints[0].split(separator: ":").last ?? "") ?? 0
        let range = try TestHTTP.post(port: port, "/v3/kv/range", ["key": Data("x".utf8).base64EncodedString()])
        let header = range.json?["header"] as? [String: Any]
        guard let revision = header?["revision"] as? String else { throw TestEnvironment.Failure("no revision: \(range.body)") }
        let compacted = try TestHTTP.post(port: port, "/v3/kv/compaction", ["revision": revision, "physical": true])
        guard compacted.status == 200 else { throw TestEnvironment.Failure("compaction failed: \(compacted.body)") }
    }

    @Test("a node whose agent was stopped past a compaction reloads the table: it serves the new adapter, never the unloaded one")
    func compactionReload() async throws { try Self.compactionReloadBody() }

    static func compactionReloadBody() throws {
        let fleet = try Fleet()
        defer { fleet.stop() }
        let (a, c) = (fleet.nodes[0], fleet.nodes[2])
        #expect(try Self.load(a, "old").status == 200)
        #expect(try Self.complete(c, "old") == 200)
        guard let agent = Self.agentPID(c) else {
            Issue.record("no cluster agent under node C")
            return
        }
        kill(agent, SIGSTOP)
        // Every member restarted in turn: the stopped agent's watch connection is gone before
        // the changes below, so resumed, it reconnects from its old revision and finds it compacted.
        for member in 0..<3 {
            try fleet.etcd.restart(member)
            try fleet.etcd.waitHealthy()
        }
        // (A retry after an answer lost to the member restarts finds it gone: 404.)
        try ServeTests.waitFor("the unload through A", timeout: 30) { [200, 404].contains(try Self.unload(a, "old").status) }
        #expect(try Self.table(a)["old"] == nil)
        #expect(try Self.load(a, "new").status == 200)
        try Self.compactEtcd(fleet.etcd)
        kill(agent, SIGCONT)
        var statuses: [Int: Int] = [:]
        let deadline = Date().addingTimeInterval(Double(Self.leaseSeconds) * 5)
        while Date() < deadline {
            let old = try Self.complete(c, "old")
            statuses[old, default: 0] += 1
            if old == 404, try Self.complete(c, "new") == 200 { break }
        }
        #expect(statuses[200] == nil, "node C served the unloaded adapter: \(statuses)")
        #expect(try Self.complete(c, "new") == 200, "node C never caught up: \(statuses)")
        #expect(try Self.table(c) == Self.table(a))
        #expect(c.log.contains("reloading the table"), "the agent did not reload after the compaction")
    }
}
