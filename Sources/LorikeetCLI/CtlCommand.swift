import ArgumentParser
import Foundation
import LorikeetProto

/// `lorikeet ctl`: the admin socket client. Exit codes: 0 success, 1 the call was
/// refused (message printed), 3 cannot reach the supervisor, 4 permission denied,
/// 64 usage error.
struct CtlCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ctl",
        abstract: "Operate a running server through its admin socket.",
        subcommands: [
            CtlStatus.self, CtlWorkers.self, CtlAdapters.self, CtlLoad.self, CtlUnload.self, CtlBatch.self, CtlRestart.self,
            CtlScale.self, CtlDrain.self, CtlStop.self, CtlMetrics.self, CtlNodes.self,
        ]
    )
}

/// Options every `ctl` verb takes.
struct CtlOptions: ParsableArguments {
    @Option(help: "Admin socket path (default: <state dir>/admin.sock).") var socket: String?
    @Option(help: "State directory of the server.") var stateDir = "./lorikeet-state"
    @Flag(help: "Print JSON for scripts.") var json = false
    @Option(help: "Seconds to wait for the reply.") var timeout: Double = 60

    var socketPath: String { self.socket ?? (self.stateDir + "/admin.sock") }

    /// Why an admin call did not get a reply: a message and the exit code it maps to.
    struct CallFailure: Error {
        var message: String
        var code: LorikeetExitCode
    }

    /// Sends one request and returns the reply body; prints and exits on failure.
    func call(_ body: AdminEnvelope.Body) throws -> AdminEnvelope.Body {
        switch self.attempt(body) {
        case .success(let reply): return reply
        case .failure(let failure): Self.fail(failure.message, code: failure.code)
        }
    }

    /// Sends one request; the reply body, or why there is none.
    func attempt(_ body: AdminEnvelope.Body) -> Result<AdminEnvelope.Body, CallFailure> {
        let fd: Int32
        do {
            fd = try UnixSocket.connect(path: self.socketPath)
        } catch {
            if case .system(_, let code) = error, code == EACCES {
                return .failure(
                    CallFailure(
                        message: "permission denied on \(self.socketPath): run as the server's user or root", code: .permissionDenied))
            }
            return .failure(
                CallFailure(
                    message:
                        "cannot reach the supervisor at \(self.socketPath): \(error) (is `lorikeet serve` running with this --state-dir?)",
                    code: .unreachable))
        }
        var timeout = timeval(tv_sec: Int(self.timeout), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        // The supervisor's limit: a request over it fails here, with a message, instead of
        // being sent and dropping the connection.
        let connection = FramedConnection<AdminEnvelope>(fd: fd, maximumFrameSize: Limits.channelFrameBytes)
        defer { connection.close() }
        do {
            try connection.send(AdminEnvelope(callID: 1, body: body))
            guard let reply = try connection.receive() else {
                return .failure(
                    CallFailure(message: "the supervisor closed the connection (peer refused? see the server log)", code: .permissionDenied)
                )
            }
            return .success(reply.body ?? .result(CallResult()))
        } catch {
            return .failure(CallFailure(message: "admin call failed: \(error)", code: .unreachable))
        }
    }

    static func fail(_ message: String, code: LorikeetExitCode) -> Never {
        FileHandle.standardError.write(Data("lorikeet ctl: \(message)\n".utf8))
        code.exit()
    }

    func printJSON(_ value: Any) {
        let data = (try? JSONSerialization.data(withJSONObject: value, options: [.prettyPrinted, .sortedKeys])) ?? Data()
        print(String(decoding: data, as: UTF8.self))
    }

    /// Prints a call result; exits 1 when refused.
    func finish(_ status: Status, success: String) {
        if self.json {
            self.printJSON(Self.json(status))
        } else if status.isOK {
            print(success)
        }
        if !status.isOK {
            if !self.json { FileHandle.standardError.write(Data("lorikeet ctl: \(status.code): \(status.message)\n".utf8)) }
            LorikeetExitCode.failure.exit()
        }
    }

    static func json(_ status: Status) -> [String: Any] {
        ["code": status.code.description, "message": status.message, "param": status.param]
    }

    static func json(_ adapter: AdapterRecord) -> [String: Any] {
        [
            "name": adapter.name, "id": adapter.intID, "path": adapter.path, "base_model": adapter.baseModel,
            "pinned": adapter.pinned, "loaded_at_unix_ms": adapter.loadedAtUnixMs,
        ]
    }

    static func json(_ reply: AdapterMutationReply) -> [String: Any] {
        var object: [String: Any] = ["status": json(reply.status), "table_version": reply.tableVersion]
        if let adapter = reply.adapter { object["adapter"] = json(adapter) }
        return object
    }

    static func table(_ rows: [[String]]) {
        guard let header = rows.first else { return }
        let widths = header.indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
        for row in rows {
            print(
                row.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }.joined(
                    separator: "  "))
        }
    }
}

func unexpected(_ body: AdminEnvelope.Body) -> Never {
    if case .result(let result) = body { CtlOptions.fail("\(result.status.code): \(result.status.message)", code: .failure) }
    CtlOptions.fail("unexpected reply from the supervisor", code: .unreachable)
}

struct CtlStatus: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Version, uptime, leader epoch, table version, engine state.")
    @OptionGroup var options: CtlOptions
    func run() throws {
        let reply = try self.options.call(.status)
        guard case .statusReply(let status) = reply else { unexpected(reply) }
        if self.options.json {
            self.options.printJSON([
                "version": status.version, "uptime_ms": status.uptimeMs, "epoch": status.epoch, "table_version": status.tableVersion,
                "engine_state": status.engine.name, "workers": status.workers, "ready_workers": status.readyWorkers,
                "leader_slot": status.leaderSlot,
            ])
        } else {
            print("version        \(status.version)")
            print("uptime         \(status.uptimeMs / 1000) s")
            print("workers        \(status.readyWorkers)/\(status.workers) ready, leader slot \(status.leaderSlot), epoch \(status.epoch)")
            print("adapter table  version \(status.tableVersion)")
            print("engine         \(status.engine.name)")
        }
    }
}

struct CtlWorkers: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "workers", abstract: "List worker slots.")
    @OptionGroup var options: CtlOptions
    func run() throws {
        let reply = try self.options.call(.listWorkers)
        guard case .workerList(let list) = reply else { unexpected(reply) }
        if self.options.json {
            self.options.printJSON(
                list.workers.map {
                    [
                        "slot": $0.slot, "pid": $0.pid, "role": $0.role == .leader ? "leader" : "follower", "state": $0.phase.name,
                        "restarts": $0.restarts, "last_exit": $0.lastExit, "heartbeat_age_ms": $0.heartbeatAgeMs,
                        "requests_served": $0.requestsServed,
                    ] as [String: Any]
                })
        } else {
            CtlOptions.table(
                [["SLOT", "PID", "ROLE", "STATE", "RESTARTS", "HEARTBEAT", "REQUESTS", "LAST EXIT"]]
                    + list.workers.map {
                        [
                            "\($0.slot)", "\($0.pid)", $0.role == .leader ? "leader" : "follower", $0.phase.name, "\($0.restarts)",
                            "\($0.heartbeatAgeMs) ms", "\($0.requestsServed)", $0.lastExit.isEmpty ? "-" : $0.lastExit,
                        ]
                    })
        }
    }
}

struct CtlAdapters: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "adapters", abstract: "List the committed adapter table.")
    @OptionGroup var options: CtlOptions
    func run() throws {
        let reply = try self.options.call(.listAdapters)
        guard case .adapterTable(let table) = reply else { unexpected(reply) }
        if self.options.json {
            self.options.printJSON(["version": table.version, "next_id": table.nextIntID, "adapters": table.adapters.map(CtlOptions.json)])
        } else {
            print("table version \(table.version), next id \(table.nextIntID)")
            CtlOptions.table(
                [["ID", "NAME", "PATH", "PINNED"]] + table.adapters.map { ["\($0.intID)", $0.name, $0.path, $0.pinned ? "yes" : "no"] })
        }
    }
}

struct CtlLoad: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "load", abstract: "Load an adapter on every worker.")
    @OptionGroup var options: CtlOptions
    @Argument(help: "Adapter name (the `model` clients use).") var name: String
    @Argument(help: "Absolute adapter directory under an allowed prefix.") var path: String
    @Flag(help: "Reload weights of an already loaded adapter, keeping its id.") var inplace = false
    @Flag(help: "Never evict this adapter from the engine.") var pinned = false
    func run() throws {
        let reply = try self.options.call(
            .load(LoadAdapterRequest(name: self.name, path: self.path, loadInplace: self.inplace, pinned: self.pinned)))
        guard case .mutationReply(let result) = reply else { unexpected(reply) }
        if self.options.json { self.options.printJSON(CtlOptions.json(result)) }
        self.finishMutation(result, verb: "loaded")
    }

    func finishMutation(_ result: AdapterMutationReply, verb: String) {
        if !self.options.json {
            if result.status.isOK {
                print("adapter '\(self.name)' \(verb) (id \(result.adapter?.intID ?? 0), table version \(result.tableVersion))")
            } else {
                FileHandle.standardError.write(Data("lorikeet ctl: \(result.status.code): \(result.status.message)\n".utf8))
            }
        }
        if !result.status.isOK { LorikeetExitCode.failure.exit() }
    }
}

struct CtlUnload: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "unload", abstract: "Unload an adapter from every worker.")
    @OptionGroup var options: CtlOptions
    @Argument var name: String
    @Option(help: "Refuse unless the adapter has this id.") var id: UInt64 = 0
    func run() throws {
        let reply = try self.options.call(.unload(UnloadAdapterRequest(name: self.name, intID: self.id)))
        guard case .mutationReply(let result) = reply else { unexpected(reply) }
        if self.options.json {
            self.options.printJSON(CtlOptions.json(result))
        } else if result.status.isOK {
            print("adapter '\(self.name)' unloaded (table version \(result.tableVersion))")
        } else {
            FileHandle.standardError.write(Data("lorikeet ctl: \(result.status.code): \(result.status.message)\n".utf8))
        }
        if !result.status.isOK { LorikeetExitCode.failure.exit() }
    }
}

struct CtlBatch: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "batch",
        abstract: "Run many loads/unloads in order, one result each.",
        discussion: """
            FILE (or - for stdin) is JSON: [{"load": {"lora_name": "a", "lora_path": "/x"}}, {"unload": {"lora_name": "b"}}].
            Items are not all-or-nothing: each runs in order and reports its own result; exit 1 if any failed.
            """
    )
    @OptionGroup var options: CtlOptions
    @Argument var file: String
    func run() throws {
        let data = self.file == "-" ? FileHandle.standardInput.readDataToEndOfFile() : try Data(contentsOf: URL(fileURLWithPath: self.file))
        guard let items = try? JSONSerialization.jsonObject(with: data) as? [[String: [String: Any]]] else {
            CtlOptions.fail("batch file must be a JSON array of {\"load\": {...}} / {\"unload\": {...}} objects", code: .usage)
        }
        var batch: [BatchItem] = []
        for (index, item) in items.enumerated() {
            if let load = item["load"], let name = load["lora_name"] as? String, let path = load["lora_path"] as? String {
                batch.append(.load(LoadAdapterRequest(name: name, path: path, loadInplace: load["load_inplace"] as? Bool ?? false)))
            } else if let unload = item["unload"], let name = unload["lora_name"] as? String {
                batch.append(.unload(UnloadAdapterRequest(name: name, intID: (unload["lora_int_id"] as? NSNumber)?.uint64Value ?? 0)))
            } else {
                CtlOptions.fail("batch item \(index) needs load {lora_name, lora_path} or unload {lora_name}", code: .usage)
            }
        }
        let reply = try self.options.call(.batch(BatchRequest(items: batch)))
        guard case .batchReply(let results) = reply else { unexpected(reply) }
        if self.options.json {
            self.options.printJSON(results.results.map(CtlOptions.json))
        } else {
            for (index, result) in results.results.enumerated() {
                print("\(index): \(result.status.isOK ? "ok" : "\(result.status.code): \(result.status.message)")")
            }
        }
        if results.results.contains(where: { !$0.status.isOK }) { LorikeetExitCode.failure.exit() }
    }
}

/// Verbs that only report success or failure.
protocol CtlSimpleVerb: ParsableCommand {
    var options: CtlOptions { get }
    var body: AdminEnvelope.Body { get }
    var success: String { get }
}

extension CtlSimpleVerb {
    func run() throws {
        let reply = try self.options.call(self.body)
        guard case .result(let result) = reply else { unexpected(reply) }
        self.options.finish(result.status, success: self.success)
    }
}

struct CtlRestart: CtlSimpleVerb {
    static let configuration = CommandConfiguration(commandName: "restart", abstract: "Rolling restart of every worker (as SIGHUP).")
    @OptionGroup var options: CtlOptions
    var body: AdminEnvelope.Body { .rollingRestart }
    var success: String { "rolling restart started" }
}

struct CtlScale: CtlSimpleVerb {
    static let configuration = CommandConfiguration(commandName: "scale", abstract: "Set the number of workers.")
    @OptionGroup var options: CtlOptions
    @Argument var workers: UInt32
    var body: AdminEnvelope.Body { .scale(ScaleRequest(workers: self.workers)) }
    var success: String { "scaling to \(self.workers) workers" }
}

struct CtlDrain: CtlSimpleVerb {
    static let configuration = CommandConfiguration(commandName: "drain", abstract: "Replace the worker in one slot (drain, then respawn).")
    @OptionGroup var options: CtlOptions
    @Argument var slot: UInt32
    var body: AdminEnvelope.Body { .drainWorker(DrainWorkerRequest(slot: self.slot)) }
    var success: String { "slot \(self.slot) is being replaced" }
}

struct CtlStop: CtlSimpleVerb {
    static let configuration = CommandConfiguration(commandName: "stop", abstract: "Stop the server (graceful unless --fast).")
    @OptionGroup var options: CtlOptions
    @Flag(help: "Do not wait for in-flight requests.") var fast = false
    var body: AdminEnvelope.Body { .stop(StopRequest(fast: self.fast)) }
    var success: String { "stopping" }
}

/// `lorikeet ctl nodes`: the fleet's nodes as their etcd keys show them (fleet mode only).
struct CtlNodes: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nodes", abstract: "Fleet mode: list every node with its state, applied etcd revision and lease.")
    @OptionGroup var options: CtlOptions
    func run() throws {
        let reply = try self.options.call(.nodes(ClusterNodesRequest()))
        guard case .nodesReply(let nodes) = reply else { unexpected(reply) }
        guard nodes.status.isOK else { CtlOptions.fail("\(nodes.status.code): \(nodes.status.message)", code: .failure) }
        if self.options.json {
            self.options.printJSON(
                [
                    "revision": nodes.revision,
                    "nodes": nodes.nodes.map {
                        [
                            "name": $0.name, "state": $0.state, "applied_revision": $0.appliedRevision, "lease": "\($0.leaseID)",
                            "version": $0.version, "started_unix_ms": $0.startedUnixMs,
                        ] as [String: Any]
                    },
                ] as [String: Any])
        } else {
            print("etcd revision \(nodes.revision)")
            CtlOptions.table(
                [["NODE", "STATE", "APPLIED", "LEASE", "VERSION"]]
                    + nodes.nodes.map { [$0.name, $0.state, "\($0.appliedRevision)", String($0.leaseID, radix: 16), $0.version] })
        }
    }
}
