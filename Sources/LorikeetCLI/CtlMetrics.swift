import ArgumentParser
import Foundation
import LorikeetProto
import Prometheus

/// `lorikeet ctl metrics`: the supervisor's figures as Prometheus text, for node_exporter's
/// textfile collector (or any scraper that runs a command).
///
/// Workers expose their own figures at `GET /metrics`; what only the supervisor knows
/// (restarts, worker states, leader epoch, committed table version) comes from its admin
/// socket, rendered here with swift-prometheus. When the supervisor cannot be reached the
/// output still parses: `lorikeet_supervisor_up 0`, and the exit code is 3.
struct CtlMetrics: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "metrics",
        abstract: "Print the supervisor's figures in Prometheus text format (for a textfile collector).",
        discussion: """
            Example (node_exporter --collector.textfile.directory=/var/lib/node_exporter):
              lorikeet ctl metrics --state-dir /var/lib/lorikeet > /var/lib/node_exporter/lorikeet.prom.$$ \\
                && mv /var/lib/node_exporter/lorikeet.prom.$$ /var/lib/node_exporter/lorikeet.prom
            """
    )
    @OptionGroup var options: CtlOptions

    func run() throws {
        let registry = PrometheusCollectorRegistry()
        let up = registry.makeGauge(
            descriptor: Self.describe("lorikeet_supervisor_up", "1 when the supervisor answered on its admin socket."))
        let statusResult = self.options.attempt(.status)
        // A supervisor that did not answer the first call is not asked again (one timeout, not two).
        let workersResult = statusResult.flatMap { _ in self.options.attempt(.listWorkers) }
        guard case .success(.statusReply(let status)) = statusResult, case .success(.workerList(let list)) = workersResult else {
            up.set(to: 0)
            print(registry.emitToString(), terminator: "")
            if case .failure(let failure) = statusResult {
                FileHandle.standardError.write(Data("lorikeet ctl: \(failure.message)\n".utf8))
                failure.code.exit()
            }
            LorikeetExitCode.unreachable.exit()
        }
        up.set(to: 1)
        Self.render(status: status, workers: list.workers, into: registry)
        print(registry.emitToString(), terminator: "")
    }

    /// A descriptor whose full name is `name` (swift-prometheus joins the parts with `_`).
    static func describe(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    /// Every supervisor series, from a status reply and a worker list.
    static func render(status: StatusReply, workers: [WorkerInfo], into registry: PrometheusCollectorRegistry) {
        registry.makeGauge(descriptor: Self.describe("lorikeet_supervisor_uptime_seconds", "Seconds since the supervisor started."))
            .set(to: Double(status.uptimeMs) / 1000)
        registry.makeGauge(descriptor: Self.describe("lorikeet_leader_epoch", "Current leader epoch (grows at every leader change)."))
            .set(to: Double(status.epoch))
        registry.makeGauge(descriptor: Self.describe("lorikeet_leader_slot", "Worker slot of the leader, -1 when there is none."))
            .set(to: Double(status.leaderSlot))
        registry.makeGauge(descriptor: Self.describe("lorikeet_committed_table_version", "Version of the committed adapter table."))
            .set(to: Double(status.tableVersion))
        registry.makeGauge(descriptor: Self.describe("lorikeet_engine_running", "1 when the engine process is running."))
            .set(to: status.engine == .running ? 1 : 0)
        registry.makeGauge(descriptor: Self.describe("lorikeet_workers", "Worker slots configured.")).set(to: Double(status.workers))
        registry.makeGauge(descriptor: Self.describe("lorikeet_workers_ready", "Worker slots whose worker serves traffic."))
            .set(to: Double(status.readyWorkers))
        let phases = WorkerPhase.allCases.filter { $0 != .unspecified }
        var seen = Set<UInt32>()
        // A slot mid-rolling-restart lists its current worker first, then the replacement.
        for worker in workers where seen.insert(worker.slot).inserted {
            let slot = ("slot", "\(worker.slot)")
            registry.makeCounter(
                descriptor: Self.describe(
                    "lorikeet_worker_restarts_total", "Restarts of the worker in this slot since the supervisor started."), labels: [slot]
            ).increment(by: Int64(worker.restarts))
            registry.makeCounter(
                descriptor: Self.describe(
                    "lorikeet_worker_requests_served_total", "Requests answered by the slot's current worker (resets when it restarts)."),
                labels: [slot]
            ).increment(by: Int64(clamping: worker.requestsServed))
            registry.makeGauge(
                descriptor: Self.describe("lorikeet_worker_heartbeat_age_seconds", "Seconds since the worker's last control message."),
                labels: [slot]
            ).set(to: Double(worker.heartbeatAgeMs) / 1000)
            registry.makeGauge(descriptor: Self.describe("lorikeet_worker_leader", "1 for the leader's slot."), labels: [slot])
                .set(to: worker.role == .leader ? 1 : 0)
            for phase in phases {
                registry.makeGauge(
                    descriptor: Self.describe("lorikeet_worker_state", "1 for the state the slot's worker is in."),
                    labels: [slot, ("state", phase.name)]
                ).set(to: phase == worker.phase ? 1 : 0)
            }
        }
    }
}
