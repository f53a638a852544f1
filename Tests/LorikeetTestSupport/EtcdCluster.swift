import Foundation

/// A real etcd cluster for tests: `members` etcd processes (`/usr/bin/etcd`, Debian's
/// `etcd-server`) on free loopback client and peer ports with temporary data directories.
/// Members can be stopped, killed, paused (SIGSTOP), resumed and restarted by index.
///
/// Every member runs under a small shell watchdog that `exec`s etcd, so the pid the test
/// holds is etcd's own; the watchdog (a background subshell) kills etcd with SIGKILL as soon
/// as the test process is gone, so a crashed or killed test run leaves no etcd behind.
/// `shutdown()` (also run by `deinit`) kills every member and removes the directories.
public final class EtcdCluster: @unchecked Sendable {
    // @unchecked: `members` is only touched by the owning test's task (one test drives one
    // cluster, sequentially); everything else is immutable after init.
    //
    // Members are spawned with posix_spawn and reaped here with waitpid(pid) (never -1),
    // not with Foundation's `Process`: its exit monitoring missed some etcd exits here, and
    // then `waitUntilExit()` never returned.
    public static let binary = "/usr/bin/etcd"

    /// Whether etcd is installed (bin/test installs it; tests skip with a message otherwise).
    public static var isAvailable: Bool { FileManager.default.isExecutableFile(atPath: binary) }

    public static let unavailableMessage = "\(binary) is missing: install Debian's etcd-server (bin/test does)"

    public let clientPorts: [UInt16]
    public let peerPorts: [UInt16]
    public let directory: String
    private var members: [pid_t?]

    /// `host:port` of every member's client URL, in member order.
    public var endpoints: [String] { self.clientPorts.map { "127.0.0.1:\($0)" } }

    /// Starts `members` members and waits until every one reports healthy.
    public init(members: Int = 3, timeoutSeconds: Double = 60) throws {
        guard Self.isAvailable else { throw TestEnvironment.Failure(Self.unavailableMessage) }
        var ports = Set<UInt16>()
        while ports.count < members * 2 { ports.insert(TestEnvironment.freePort()) }
        let sorted = Array(ports)
        self.clientPorts = Array(sorted[0..<members])
        self.peerPorts = Array(sorted[members...])
        self.directory = TestEnvironment.temporaryDirectory("lk-etcd")
        self.members = Array(repeating: nil, count: members)
        for index in 0..<members { try self.start(index) }
        try self.waitHealthy(timeoutSeconds: timeoutSeconds)
    }

    deinit { self.shutdown() }

    private func name(_ index: Int) -> String { "m\(index)" }

    /// The member's log so far.
    public func log(_ index: Int) -> String {
        (try? String(contentsOfFile: "\(self.directory)/\(self.name(index)).log", encoding: .utf8)) ?? ""
    }

    /// Starts member `index` (again, with its data directory: a restart).
    public func start(_ index: Int) throws {
        let cluster = self.peerPorts.indices.map { "\(self.name($0))=http://127.0.0.1:\(self.peerPorts[$0])" }.joined(separator: ",")
        let client = "http://127.0.0.1:\(self.clientPorts[index])"
        let peer = "http://127.0.0.1:\(self.peerPorts[index])"
        let arguments = [
            "--name", self.name(index), "--data-dir", "\(self.directory)/\(self.name(index)).data",
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", "lorikeet-test-\(self.clientPorts[0])",
            "--logger", "zap", "--log-level", "warn",
        ]
        // bin/lib/etcd-watchdog.sh (shared with the drill): the member dies with this process.
        let script = TestEnvironment.repoRoot + "/bin/lib/etcd-watchdog.sh"
        let logPath = "\(self.directory)/\(self.name(index)).log"
        let argv = ["/bin/sh", script, "\(getpid())", Self.binary] + arguments
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let cArguments = argv.map { strdup($0) } + [nil]
        defer { for pointer in cArguments { free(pointer) } }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, "/bin/sh", &actions, nil, cArguments, environ)
        guard status == 0 else { throw TestEnvironment.Failure("cannot start etcd: \(String(cString: strerror(status)))") }
        self.members[index] = pid
    }

    /// etcd's pid of member `index`, nil when it is not running (an exited member is reaped here).
    public func pid(_ index: Int) -> Int32? {
        guard let pid = self.members[index] else { return nil }
        var status: Int32 = 0
        let reaped = waitpid(pid, &status, WNOHANG)
        if reaped == pid || (reaped < 0 && errno == ECHILD) {
            self.members[index] = nil
            return nil
        }
        return pid
    }

    /// Graceful stop (SIGTERM), waiting for the exit.
    public func stop(_ index: Int) { self.signalAndWait(index, SIGTERM) }

    /// `kill -9` member `index`, waiting for the exit.
    public func kill(_ index: Int) { self.signalAndWait(index, SIGKILL) }

    /// Freezes member `index` (SIGSTOP): its sockets stay open, nothing answers.
    public func pause(_ index: Int) {
        if let pid = self.pid(index) { Foundation.kill(pid, SIGSTOP) }
    }

    /// Resumes a paused member (SIGCONT).
    public func resume(_ index: Int) {
        if let pid = self.pid(index) { Foundation.kill(pid, SIGCONT) }
    }

    /// Stops (if running) and starts member `index` again with its data.
    public func restart(_ index: Int) throws {
        self.stop(index)
        try self.start(index)
    }

    private func signalAndWait(_ index: Int, _ signal: Int32) {
        guard let pid = self.pid(index) else { return }
        Foundation.kill(pid, SIGCONT)
        Foundation.kill(pid, signal)
        let deadline = Date().addingTimeInterval(10)
        while self.pid(index) != nil && Date() < deadline { usleep(20_000) }
        guard self.pid(index) != nil else { return }
        Foundation.kill(pid, SIGKILL)
        while self.pid(index) != nil { usleep(20_000) }
    }

    /// Whether member `index` answers `/health` with `"health":"true"` (it has a leader and
    /// can serve a linearizable read).
    public func isHealthy(_ index: Int) -> Bool {
        guard let response = try? TestHTTP.request(port: self.clientPorts[index], path: "/health", timeoutSeconds: 3) else { return false }
        return response.status == 200 && response.body.contains("\"true\"")
    }

    /// Waits until every running member (or those in `members`) is healthy.
    public func waitHealthy(members: [Int]? = nil, timeoutSeconds: Double = 60) throws {
        let wanted = members ?? self.clientPorts.indices.filter { self.pid($0) != nil }
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while Date() < deadline {
            if wanted.allSatisfy({ self.isHealthy($0) }) { return }
            for index in wanted where self.pid(index) == nil {
                throw TestEnvironment.Failure("etcd member \(index) exited:\n\(self.log(index).suffix(3000))")
            }
            usleep(100_000)
        }
        let logs = wanted.map { "member \($0):\n\(self.log($0).suffix(1500))" }.joined(separator: "\n")
        throw TestEnvironment.Failure("etcd members \(wanted) not healthy within \(timeoutSeconds) s:\n\(logs)")
    }

    /// Kills every member (by pid) and removes the data directories. Idempotent.
    public func shutdown() {
        for index in self.members.indices { self.kill(index) }
        try? FileManager.default.removeItem(atPath: self.directory)
    }
}
