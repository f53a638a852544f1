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

        /// The fleet flags of node `name`; `proxy` (an `AnswerDroppingProxy` in front of the
        /// first member) comes first in its endpoint list.
        func arguments(_ name: String, proxy: AnswerDroppingProxy? = nil) -> [String] {
            let endpoints = (proxy.map { ["127.0.0.1:\($0.port)"] } ?? []) + self.etcd.endpoints
            return [
                "--cluster-endpoints", endpoints.map { "http://\($0)" }.joined(separator: ","), "--cluster-name", self.cluster,
                "--node-name", name, "--cluster-lease-seconds", "\(FleetTests.leaseSeconds)",
            ]
        }

        func start(
            _ name: String, stateDirectory: String? = nil, proxy: AnswerDroppingProxy? = nil, extraArguments: [String] = [],
            environment: [String: String] = [:]
        ) throws -> ServerUnderTest {
            try ServerUnderTest(
                workers: 2, stateDirectory: stateDirectory, extraArguments: self.arguments(name, proxy: proxy) + extraArguments,
                environment: environment)
        }

        /// A proxy in front of the first member that loses etcd's answer to the first request
        /// naming adapter `name`'s key.
        func proxyLosingAnswer(about name: String) throws -> AnswerDroppingProxy {
            let key = Data("/\(self.cluster)/adapters/\(name)".utf8).base64EncodedString()
            return try AnswerDroppingProxy(target: self.etcd.endpoints[0], marker: key)
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

    @Test(
        "a record committed through another node whose lora_path is outside this node's allowed prefixes is not loaded here: 503 naming the cause, never 200; the node refuses the same path from its own clients with 400"
    )
    func foreignPathRefused() throws {
        let fleet = try Fleet(names: ["A"])
        defer { fleet.stop() }
        // B allows adapters only from an empty directory of its own; A (the fixture's
        // prefix) commits a path under its prefix into etcd.
        let elsewhere = TestEnvironment.temporaryDirectory("lk-prefix")
        defer { try? FileManager.default.removeItem(atPath: elsewhere) }
        let b = try fleet.start("B", environment: ["LORIKEET_RUNTIME_LORA_ALLOWED_PATH_PREFIXES": elsewhere])
        fleet.nodes.append(b)
        let a = fleet.nodes[0]
        #expect(try Self.load(a, "foreign").status == 200)
        #expect(try Self.complete(a, "foreign") == 200)
        try ServeTests.waitFor("B to apply the record", timeout: 30) { try Self.table(b)["foreign"] != nil }
        try ServeTests.waitFor("B's engine to refuse the path", timeout: 30) {
            b.log.contains("foreign: cannot load LoRA adapter: the adapter path is not allowed")
        }
        for _ in 0..<8 {
            let response = try TestHTTP.post(port: b.port, "/v1/completions", ["model": "foreign", "prompt": "hi", "max_tokens": 1])
            #expect(response.status == 503, "\(response.status) \(response.body.prefix(300))")
            #expect(response.body.contains("lorikeet_adapters_unavailable"), "\(response.body.prefix(300))")
        }
        let direct = try Self.load(b, "direct")
        #expect(direct.status == 400 && direct.body.contains("outside the configured allowed prefixes"), "\(direct.body.prefix(300))")
        #expect(try Self.complete(b, "before-unload") == 404)
        // Unloaded through A: gone on B too.
        #expect(try TestHTTP.post(port: a.port, "/v1/unload_lora_adapter", ["lora_name": "foreign"]).status == 200)
        try ServeTests.waitFor("B to drop the record", timeout: 30) { try Self.table(b)["foreign"] == nil }
        #expect(try Self.complete(b, "foreign") == 404)
    }

    @Test("a node key rewritten by hand under no lease is taken over: loads keep answering 200, the node stays up")
    func leaselessNodeKey() async throws {
        let fleet = try Fleet(names: ["A", "B"])
        defer { fleet.stop() }
        let (a, b) = (fleet.nodes[0], fleet.nodes[1])
        #expect(try Self.load(a, "before").status == 200)
        // `etcdctl put /<cluster>/nodes/A ''`: the key leaves the node's lease and would never expire.
        let port = UInt16(fleet.etcd.endpoints[0].split(separator: ":").last ?? "") ?? 0
        let key = Data("/\(fleet.cluster)/nodes/A".utf8).base64EncodedString()
        #expect(try TestHTTP.post(port: port, "/v3/kv/put", ["key": key, "value": ""]).status == 200)
        // B's commit waits for A to publish its applied revision under its key: it must not
        // wait 3 leases for a 504 (and A must not take the key for another node's and exit 78).
        let loaded = try Self.load(b, "after")
        #expect(loaded.status == 200, "\(loaded.status) \(loaded.body)")
        #expect(a.process.isRunning)
        try ServeTests.waitFor("A to take its key over", timeout: 10) { a.log.contains("took over the node key") }
        #expect(try Self.complete(a, "after") == 200)
    }

    @Test(
        "records Lorikeet would never commit, written into etcd by hand (id 0, id >= 2^63, a name over the limit, an id held twice), are ignored and logged; a node key under no lease is not waited for; a record with an unknown field unloads; a garbage id counter refuses loads with a clear error"
    )
    func handWrittenRecords() async throws {
        let fleet = try Fleet(names: ["A"])
        defer { fleet.stop() }
        let a = fleet.nodes[0]
        #expect(try Self.load(a, "good").status == 200)
        let port = UInt16(fleet.etcd.endpoints[0].split(separator: ":").last ?? "") ?? 0
        func put(_ key: String, _ value: [UInt8]) throws {
            let body = ["key": Data("/\(fleet.cluster)/\(key)".utf8).base64EncodedString(), "value": Data(value).base64EncodedString()]
            #expect(try TestHTTP.post(port: port, "/v3/kv/put", body).status == 200)
        }
        let path = a.adapterDirectory + "/plain"
        try put("adapters/zero", AdapterRecord(name: "zero", intID: 0, path: path).serializedBytes())
        try put("adapters/huge", AdapterRecord(name: "huge", intID: 1 << 63, path: path).serializedBytes())
        let long = String(repeating: "n", count: 5000)
        try put("adapters/\(long)", AdapterRecord(name: long, intID: 77, path: path).serializedBytes())
        try ServeTests.waitFor("the records to be seen and refused", timeout: 30) {
            a.log.components(separatedBy: "ignoring an adapter record in etcd").count - 1 >= 3
        }
        // Nothing of them is served, no worker trips over them, commits go on.
        for model in ["zero", "huge"] { #expect(try Self.complete(a, model) == 404) }
        #expect(try TestHTTP.request(port: a.port, path: "/v1/lora_adapters").status == 200)

        // A second record with the id of "good" (served: the one created first), a node key
        // under no lease (never expires: commits must not wait for it), and a record with a
        // field this version does not know (a newer writer's; re-encoded it differs).
        let goodID = try #require(try Self.table(a)["good"])
        try put("adapters/twin", AdapterRecord(name: "twin", intID: UInt64(goodID), path: path).serializedBytes())
        try put("nodes/ghost", NodeStatus(name: "ghost", appliedRevision: 1, state: "ready").serializedBytes())
        try put("adapters/newer", AdapterRecord(name: "newer", intID: 500, path: path).serializedBytes() + [0xC0, 0x3E, 0x01])
        try ServeTests.waitFor("the shared id to be refused and the newer record served", timeout: 30) {
            guard a.log.contains("twin (id \(goodID)") else { return false }
            return try Self.table(a)["newer"] == 500
        }
        #expect(try Self.complete(a, "twin") == 404)
        #expect(try Self.complete(a, "good") == 200)
        #expect(try Self.complete(a, "newer") == 200)
        let after = try Self.load(a, "after")
        #expect(after.status == 200, "a commit waited for a node key under no lease: \(after.status) \(after.body.prefix(300))")
        let unloaded = try Self.unload(a, "newer")
        #expect(unloaded.status == 200, "a record with an unknown field cannot be unloaded: \(unloaded.body.prefix(300))")
        #expect(Set(try Self.table(a).keys) == ["good", "after"])

        try put("next-id", Array("abc".utf8))
        let refused = try Self.load(a, "counter")
        #expect(refused.status != 200 && refused.body.contains("id counter"), "\(refused.status) \(refused.body)")
        try put("next-id", Array("1000".utf8))
        #expect(try Self.load(a, "counter").status == 200)
        #expect(try Self.table(a)["counter"] == 1000)
        #expect(a.process.isRunning)
    }

    @Test("a commit whose answer from etcd is lost is read back: the load answers 200 and every node serves the adapter")
    func lostCommitAnswer() async throws { try Self.lostCommitAnswerBody() }

    static func lostCommitAnswerBody() throws {
        let fleet = try Fleet(names: ["B"])
        defer { fleet.stop() }
        // Node A talks to etcd through a proxy that loses the answer to the commit of
        // "lost" (the only request naming its key) after etcd applied it.
        let proxy = try fleet.proxyLosingAnswer(about: "lost")
        defer { proxy.stop() }
        let a = try fleet.start("A", proxy: proxy)
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
        "An unload whose answer from etcd is lost after it landed is read back: 200 once every node (one stopped meanwhile too) dropped the adapter, not 503"
    )
    func lostUnloadAnswer() async throws { try Self.lostUnloadAnswerBody() }

    static func lostUnloadAnswerBody() throws {
        let fleet = try Fleet(names: ["B", "C"])
        defer { fleet.stop() }
        let (b, c) = (fleet.nodes[0], fleet.nodes[1])
        #expect(try Self.load(b, "lost").status == 200)
        // Node A's proxy loses the answer to the first request naming "lost": its unload.
        let proxy = try fleet.proxyLosingAnswer(about: "lost")
        defer { proxy.stop() }
        let a = try fleet.start("A", proxy: proxy)
        fleet.nodes.append(a)
        try ServeTests.waitFor("node A serves the adapter", timeout: 30) { try Self.complete(a, "lost") == 200 }
        // C stops before the unload: the answer must wait for C to drop the adapter too.
        let pids = [c.process.processIdentifier] + c.childPIDs()
        for pid in pids { kill(pid, SIGSTOP) }
        let started = Date()
        let answer = Mutex<Result<TestHTTP.Response, any Error>?>(nil)
        let answered = DispatchSemaphore(value: 0)
        Thread {
            let result = Result { try Self.unload(a, "lost") }
            answer.withLock { $0 = result }
            answered.signal()
        }.start()
        let pause = 2.0  // well inside the 6 s lease: C stays a live node
        Thread.sleep(forTimeInterval: pause)
        for pid in pids { kill(pid, SIGCONT) }
        answered.wait()
        let took = Date().timeIntervalSince(started)
        let response = try answer.withLock { $0! }.get()
        #expect(response.status == 200, "\(response.status) \(response.body)")
        #expect(proxy.dropped == 1, "the unload's answer was dropped")
        #expect(a.log.contains("read back: removed"), "\(a.log.suffix(3000))")
        #expect(took >= pause, "the answer came before the stopped node could drop the adapter (\(took) s)")
        for node in fleet.nodes {
            #expect(try Self.complete(node, "lost") == 404, "node \(node.port) still serves the unloaded adapter")
            #expect(try Self.table(node)["lost"] == nil)
        }
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
        #expect(try TestHTTP.request(port: a.port, path: "/metrics").body.contains("\nlorikeet_cluster_fenced 1"))
        #expect(try Self.complete(a, "tiny") == 200)
        try fleet.etcd.restart(1)
        try fleet.etcd.restart(2)
        try fleet.etcd.waitHealthy()
        try ServeTests.waitFor("loads to work again", timeout: 60) { try Self.load(a, "healed").status == 200 }
        for node in fleet.nodes { try ServeTests.waitFor("unfenced", timeout: 30) { try Self.complete(node, "before") == 200 } }
        #expect(try TestHTTP.request(port: a.port, path: "/metrics").body.contains("\nlorikeet_cluster_fenced 0"))

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

    @Test(
        "kill -9 a node's cluster agent: its successor adopts the lease and adapter traffic never stops; killed just before etcd loses quorum for over 3 leases, the node still comes back (no exit 78)"
    )
    func agentKilled() async throws { try Self.agentKilledBody() }

    static func agentKilledBody() throws {
        let fleet = try Fleet(names: ["A", "B"])
        defer { fleet.stop() }
        let (a, b) = (fleet.nodes[0], fleet.nodes[1])
        #expect(try Self.load(a, "before").status == 200)
        guard let agent = Self.agentPID(b) else {
            Issue.record("no cluster agent under node B")
            return
        }
        // The successor keeps the dead agent's lease: B never fences, and a commit through A
        // right after the kill is confirmed by B's new agent.
        kill(agent, SIGKILL)
        #expect(try Self.load(a, "right-after").status == 200)
        var statuses: [Int: Int] = [:]
        let until = Date().addingTimeInterval(Double(Self.leaseSeconds) * 2)
        while Date() < until { statuses[try Self.complete(b, "before"), default: 0] += 1 }
        #expect(statuses.keys.sorted() == [200], "node B stopped serving adapters after its agent died: \(statuses)")
        #expect(b.log.contains("adopted the lease of this node's previous cluster agent"), "\(b.log.suffix(2000))")
        #expect(try Self.complete(b, "right-after") == 200)

        // Killed again, then no quorum for longer than the 3 leases after which a node key
        // held elsewhere means "name in use": no lease lapses meanwhile, and the node must
        // not take its own previous agent's key for another node's.
        guard let second = Self.agentPID(b) else {
            Issue.record("no cluster agent under node B after the first kill")
            return
        }
        kill(second, SIGKILL)
        fleet.etcd.stop(2)
        fleet.etcd.stop(1)
        Thread.sleep(forTimeInterval: Double(Self.leaseSeconds) * 3 + 3)
        try fleet.etcd.restart(1)
        try fleet.etcd.restart(2)
        try fleet.etcd.waitHealthy()
        try ServeTests.waitFor("loads through B to work again", timeout: 60) { [200, 400].contains(try Self.load(b, "after").status) }
        #expect(b.process.isRunning, "node B stopped: \(b.log.suffix(2000))")
        #expect(!b.log.contains("another node uses --node-name"), "\(b.log.suffix(2000))")
        for node in fleet.nodes {
            try ServeTests.waitFor("unfenced and serving", timeout: 30) { try Self.complete(node, "after") == 200 }
            #expect(try Self.complete(node, "before") == 200)
        }
    }

    @Test(
        "--upstream in a fleet: a load on A answers 200 only once B's own replica holds it (B serves it at once); an unload likewise removes it from B's replica first"
    )
    func upstreamReplicas() async throws { try Self.upstreamReplicasBody() }

    static func upstreamReplicasBody() throws {
        let fleet = try Fleet(names: [])
        defer { fleet.stop() }
        let replicaA = try ReplicaUnderTest()
        defer { replicaA.stop() }
        let replicaB = try ReplicaUnderTest()
        defer { replicaB.stop() }
        let a = try ServerUnderTest(workers: 2, extraArguments: fleet.arguments("A"), upstreams: [replicaA.url])
        fleet.nodes.append(a)
        let b = try ServerUnderTest(workers: 2, extraArguments: fleet.arguments("B"), upstreams: [replicaB.url])
        fleet.nodes.append(b)
        for round in 0..<3 {
            let name = "up-\(round)"
            #expect(try Self.load(a, name).status == 200)
            // Read-your-writes through the other node's replica: no reconcile tick waited for.
            #expect(try replicaB.adapters().contains(name), "B's replica lacks \(name) after the 200")
            #expect(try Self.complete(b, name) == 200)
            #expect(try Self.unload(b, name).status == 200)
            #expect(try !replicaA.adapters().contains(name), "A's replica still holds \(name) after the unload's 200")
            #expect(try Self.complete(a, name) == 404)
        }
        #expect(!b.log.contains("upstream adapter drift repaired"), "a committed change was applied as drift")
    }

    @Test(
        "SIGSTOP a node during an unload: the unload completes within the lease; resumed, the node serves the unloaded adapter 0 times and does not answer 404 for a load it missed"
    )
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
        // A load the stopped node missed: resumed, its stale table must not answer an unload
        // of it with 404 (a fenced node answers refusals read from its table with 503).
        #expect(try Self.load(a, "missed").status == 200)
        for pid in pids { kill(pid, SIGCONT) }
        let early = try Self.unload(c, "missed")
        #expect(early.status == 503 || early.status == 200, "\(early.status) \(early.body)")
        if early.status == 503 {
            #expect(early.body.contains("cluster unreachable"), "\(early.body)")
        }
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
        if early.status != 200 {
            let later = try Self.unload(c, "missed")
            #expect(later.status == 200, "once caught up, the resumed node unloads what it missed: \(later.status) \(later.body)")
        }
        print(
            "fleet: unload with a stopped node took \(String(format: "%.2f", took)) s; resumed node: \(statuses); its first unload: \(early.status)"
        )
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

    /// Commits per second with `clients` concurrent clients (client i loads through node
    /// i mod n), `perClient` distinct loads each; every load must answer 200.
    static func commitRate(_ nodes: [ServerUnderTest], prefix: String, clients: Int, perClient: Int) throws -> Double {
        let started = Date()
        let results = Self.parallel(clients) { client in
            try (0..<perClient).map { index in try Self.load(nodes[client % nodes.count], "\(prefix)-\(client)-\(index)").status }
        }
        let elapsed = Date().timeIntervalSince(started)
        for result in results { #expect(try result.get().allSatisfy { $0 == 200 }, "\(result)") }
        return Double(clients * perClient) / elapsed
    }

    @Test(
        "numbers: load->visible everywhere and commits/s at 3 nodes x 2 workers against a single node's commit (printed, no timing assertions)"
    )
    func numbers() async throws { try Self.numbersBody() }

    static func numbersBody() throws {
        let single = try ServerUnderTest(workers: 2)
        let local = try Self.loadLatencies(single, prefix: "single", count: 30)
        let localRate = try Self.commitRate([single], prefix: "single-rate", clients: 6, perClient: 10)
        single.stop()
        let fleet = try Fleet()
        defer { fleet.stop() }
        let remote = try Self.loadLatencies(fleet.nodes[0], prefix: "fleet", count: 30)
        let fleetRate = try Self.commitRate(fleet.nodes, prefix: "fleet-rate", clients: 6, perClient: 10)
        print(
            String(
                format: "fleet numbers: commits/s %.1f (6 clients over 3 nodes); single node %.1f (6 clients); ratio %.2f", fleetRate,
                localRate, fleetRate / max(localRate, 0.001)))
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
