import ArgumentParser
import Foundation
import Logging
import LorikeetClusterAgent
import LorikeetProto
import UnixSignals

#if canImport(Glibc)
    import Glibc
#endif

/// `lorikeet cluster-agent`: the node's etcd client in fleet mode, spawned and restarted by
/// `lorikeet serve --cluster-endpoints ...` (never run by hand: its cluster channel is fd 3).
struct ClusterAgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster-agent",
        abstract: "Fleet mode: hold this node's etcd lease, follow the fleet's adapter table, commit changes (started by serve).",
        shouldDisplay: false
    )

    @Option(name: .customLong("control-fd"), help: "The supervisor's cluster socketpair.") var controlFd: Int32 = 3
    @Option(name: .customLong("cluster-endpoints"), help: "etcd client URLs, comma-separated.") var clusterEndpoints: String
    @Option(name: .customLong("cluster-name"), help: "Key prefix of the fleet.") var clusterName = "lorikeet"
    @Option(name: .customLong("node-name"), help: "This node's name in the fleet.") var nodeName: String
    @Option(name: .customLong("cluster-lease-seconds"), help: "TTL of the node's lease.") var clusterLeaseSeconds: Int64 = 10
    @Option(name: .customLong("incarnation"), help: "The supervisor run's token, kept across agent restarts.")
    var incarnation = NodeStatus.newIncarnation()
    @Option(name: .customLong("parent-pid"), help: "Exit when this process (the supervisor) is gone.") var parentPid: Int32?
    @Option(name: .customLong("log-format"), help: "text or json.") var logFormat = "text"

    func validate() throws {
        // The token is written into the node key and compared: 1-64 hex digits, nothing else.
        let hex = self.incarnation.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
        guard (1...64).contains(self.incarnation.utf8.count), hex else {
            throw ValidationError("--incarnation must be 1-64 lowercase hex digits")
        }
    }

    func run() async throws {
        var logger = ParentWatch.prepareChild(label: "lorikeet.cluster-agent", logFormat: self.logFormat, parentPID: self.parentPid)
        logger[metadataKey: "node"] = "\(self.nodeName)"
        let configuration = ClusterAgentConfiguration(
            endpoints: ClusterOptions.endpoints(self.clusterEndpoints), clusterName: self.clusterName, nodeName: self.nodeName,
            leaseSeconds: self.clusterLeaseSeconds, version: LorikeetVersion.string, incarnation: self.incarnation)
        let agent: ClusterAgent
        do {
            agent = try ClusterAgent(configuration: configuration, controlFD: self.controlFd, logger: logger)
        } catch {
            logger.critical("cannot start the cluster agent: \(error)")
            throw ExitCode(LorikeetExitCode.cannotBoot)
        }
        // Until SIGTERM (the supervisor stopping) or the supervisor's end; either way the
        // lease is given back, so the node key goes at once and no commit elsewhere waits
        // out the lease for a node that left.
        var failure: (any Error)?
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await agent.run() }
                group.addTask {
                    for await _ in await UnixSignalsSequence(trapping: .sigterm) { return }
                }
                try await group.next()
                group.cancelAll()
            }
        } catch {
            failure = error
        }
        await agent.leave()
        if let failure {
            logger.error("cluster agent stopping: \(failure)")
            throw ExitCode(1)
        }
    }
}

/// `serve`'s fleet flags (`--cluster-*`, or env `LORIKEET_CLUSTER_*`), checked once.
enum ClusterOptions {
    static func endpoints(_ list: String) -> [String] {
        list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    /// The cluster name and node name rules: a path segment of an etcd key.
    static func checkName(_ name: String, flag: String) throws {
        let allowed = name.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                || [UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: ":")].contains(byte)
        }
        guard !name.isEmpty, name.utf8.count <= 128, allowed else {
            throw ValidationError("\(flag) must be 1-128 characters of A-Z a-z 0-9 - _ . : (got '\(name.echoed())')")
        }
    }
}
