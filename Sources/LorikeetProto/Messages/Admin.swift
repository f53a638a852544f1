import CLorikeetProto

/// Empty request bodies of the admin and engine channels.
package struct EmptyRequest: Sendable, Equatable, CMessageConvertible {
    package init() {}
    func write(to writer: CMessageWriter) {}
    init(from reader: CMessageReader) {}
}

/// The engine process as the supervisor sees it (`lorikeet.v1.EnginePhase`).
package enum EnginePhase: Int32, Sendable, Equatable, CaseIterable {
    case unspecified = 0
    case starting = 1
    case running = 2
    case down = 3
    case upstream = 4

    /// The name `lorikeet ctl` prints (and its JSON carries).
    package var name: String {
        switch self {
        case .unspecified: "unknown"
        case .starting: "starting"
        case .running: "running"
        case .down: "down"
        case .upstream: "upstream"
        }
    }
}

/// A worker slot's process as the supervisor sees it (`lorikeet.v1.WorkerPhase`).
package enum WorkerPhase: Int32, Sendable, Equatable, CaseIterable {
    case unspecified = 0
    case starting = 1
    case booting = 2
    case prepared = 3
    case ready = 4
    case draining = 5
    case restarting = 6
    case crashLoop = 7

    /// The name `lorikeet ctl` prints (and its JSON carries).
    package var name: String {
        switch self {
        case .unspecified: "unknown"
        case .starting: "starting"
        case .booting: "booting"
        case .prepared: "prepared"
        case .ready: "ready"
        case .draining: "draining"
        case .restarting: "restarting"
        case .crashLoop: "crash-loop"
        }
    }
}

/// Supervisor status (`lorikeet.v1.StatusReply`).
package struct StatusReply: Sendable, Equatable {
    package var version: String
    package var uptimeMs: UInt64
    package var epoch: UInt64
    package var tableVersion: UInt64
    package var engine: EnginePhase
    package var workers: UInt32
    package var leaderSlot: Int32
    package var readyWorkers: UInt32

    package init(
        version: String = "", uptimeMs: UInt64 = 0, epoch: UInt64 = 0, tableVersion: UInt64 = 0, engine: EnginePhase = .unspecified,
        workers: UInt32 = 0, leaderSlot: Int32 = -1, readyWorkers: UInt32 = 0
    ) {
        self.version = version
        self.uptimeMs = uptimeMs
        self.epoch = epoch
        self.tableVersion = tableVersion
        self.engine = engine
        self.workers = workers
        self.leaderSlot = leaderSlot
        self.readyWorkers = readyWorkers
    }
}

extension StatusReply: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("version", self.version)
        writer.set("uptime_ms", self.uptimeMs)
        writer.set("epoch", self.epoch)
        writer.set("table_version", self.tableVersion)
        writer.set("engine", self.engine.rawValue)
        writer.set("workers", self.workers)
        writer.set("leader_slot", self.leaderSlot)
        writer.set("ready_workers", self.readyWorkers)
    }
    init(from reader: CMessageReader) {
        self.init(
            version: reader.string("version"), uptimeMs: reader.uint64("uptime_ms"), epoch: reader.uint64("epoch"),
            tableVersion: reader.uint64("table_version"), engine: EnginePhase(rawValue: reader.int32("engine")) ?? .unspecified,
            workers: reader.uint32("workers"), leaderSlot: reader.int32("leader_slot"),
            readyWorkers: reader.uint32("ready_workers")
        )
    }
}

/// One worker slot as the supervisor sees it.
package struct WorkerInfo: Sendable, Equatable {
    package var slot: UInt32
    package var pid: Int32
    package var role: WorkerRole
    package var phase: WorkerPhase
    package var restarts: UInt32
    package var lastExit: String
    package var heartbeatAgeMs: UInt64
    package var requestsServed: UInt64

    package init(
        slot: UInt32 = 0, pid: Int32 = 0, role: WorkerRole = .follower, phase: WorkerPhase = .unspecified, restarts: UInt32 = 0,
        lastExit: String = "", heartbeatAgeMs: UInt64 = 0, requestsServed: UInt64 = 0
    ) {
        self.slot = slot
        self.pid = pid
        self.role = role
        self.phase = phase
        self.restarts = restarts
        self.lastExit = lastExit
        self.heartbeatAgeMs = heartbeatAgeMs
        self.requestsServed = requestsServed
    }
}

extension WorkerInfo: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("slot", self.slot)
        writer.set("pid", self.pid)
        writer.set("role", self.role.rawValue)
        writer.set("phase", self.phase.rawValue)
        writer.set("restarts", self.restarts)
        writer.set("last_exit", self.lastExit)
        writer.set("heartbeat_age_ms", self.heartbeatAgeMs)
        writer.set("requests_served", self.requestsServed)
    }
    init(from reader: CMessageReader) {
        self.init(
            slot: reader.uint32("slot"), pid: reader.int32("pid"), role: WorkerRole(rawValue: reader.int32("role")) ?? .follower,
            phase: WorkerPhase(rawValue: reader.int32("phase")) ?? .unspecified, restarts: reader.uint32("restarts"),
            lastExit: reader.string("last_exit"),
            heartbeatAgeMs: reader.uint64("heartbeat_age_ms"), requestsServed: reader.uint64("requests_served")
        )
    }
}

/// The supervisor's worker slots.
package struct WorkerList: Sendable, Equatable {
    package var workers: [WorkerInfo]
    package init(workers: [WorkerInfo] = []) { self.workers = workers }
}

extension WorkerList: CMessageConvertible {
    func write(to writer: CMessageWriter) { writer.set("workers", self.workers) }
    init(from reader: CMessageReader) throws(ProtoDecodingError) { self.init(workers: try reader.messages("workers")) }
}

/// One operation of a batch.
package enum BatchItem: Sendable, Equatable {
    case load(LoadAdapterRequest)
    case unload(UnloadAdapterRequest)
}

extension BatchItem: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        switch self {
        case .load(let value): writer.set("load", value)
        case .unload(let value): writer.set("unload", value)
        }
    }
    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        switch reader.oneofCase("load") {
        case "load": self = .load(try reader.member("load"))
        case "unload": self = .unload(try reader.member("unload"))
        default: throw .invalidValue(field: "op", reason: "batch item has no operation")
        }
    }
}

/// Loads and unloads run in order; each gets its own result (not all-or-nothing).
package struct BatchRequest: Sendable, Equatable {
    package var items: [BatchItem]
    package init(items: [BatchItem] = []) { self.items = items }
}

extension BatchRequest: CMessageConvertible {
    func write(to writer: CMessageWriter) { writer.set("items", self.items) }
    init(from reader: CMessageReader) throws(ProtoDecodingError) { self.init(items: try reader.messages("items")) }
}

/// One result per batch item, in order.
package struct BatchReply: Sendable, Equatable {
    package var results: [AdapterMutationReply]
    package init(results: [AdapterMutationReply] = []) { self.results = results }
}

extension BatchReply: CMessageConvertible {
    func write(to writer: CMessageWriter) { writer.set("results", self.results) }
    init(from reader: CMessageReader) throws(ProtoDecodingError) { self.init(results: try reader.messages("results")) }
}

/// Scale the worker pool to `workers` slots.
package struct ScaleRequest: Sendable, Equatable {
    package var workers: UInt32
    package init(workers: UInt32 = 0) { self.workers = workers }
}

extension ScaleRequest: CMessageConvertible {
    func write(to writer: CMessageWriter) { writer.set("workers", self.workers) }
    init(from reader: CMessageReader) { self.init(workers: reader.uint32("workers")) }
}

/// Drain (and replace) the worker in one slot.
package struct DrainWorkerRequest: Sendable, Equatable {
    package var slot: UInt32
    package init(slot: UInt32 = 0) { self.slot = slot }
}

extension DrainWorkerRequest: CMessageConvertible {
    func write(to writer: CMessageWriter) { writer.set("slot", self.slot) }
    init(from reader: CMessageReader) { self.init(slot: reader.uint32("slot")) }
}

/// Stop the whole server (graceful unless `fast`).
package struct StopRequest: Sendable, Equatable {
    package var fast: Bool
    package init(fast: Bool = false) { self.fast = fast }
}

extension StopRequest: CMessageConvertible {
    func write(to writer: CMessageWriter) { writer.set("fast", self.fast) }
    init(from reader: CMessageReader) { self.init(fast: reader.bool("fast")) }
}

/// Reply to calls that only report success or failure (admin and engine channels).
package struct CallResult: Sendable, Equatable {
    package var status: Status
    package init(status: Status = .ok) { self.status = status }
}

extension CallResult: CMessageConvertible {
    func write(to writer: CMessageWriter) { writer.set("status", self.status) }
    init(from reader: CMessageReader) throws(ProtoDecodingError) { self.init(status: try reader.message("status") ?? .ok) }
}

/// One frame of the admin channel (`lorikeet.v1.AdminEnvelope`).
package struct AdminEnvelope: Sendable, Equatable {
    package var callID: UInt64
    package var deadlineUnixMs: UInt64
    package var body: Body?

    /// The message the envelope carries.
    package enum Body: Sendable, Equatable {
        case status
        case statusReply(StatusReply)
        case listWorkers
        case workerList(WorkerList)
        case listAdapters
        case adapterTable(AdapterTable)
        case load(LoadAdapterRequest)
        case unload(UnloadAdapterRequest)
        case mutationReply(AdapterMutationReply)
        case batch(BatchRequest)
        case batchReply(BatchReply)
        case rollingRestart
        case scale(ScaleRequest)
        case drainWorker(DrainWorkerRequest)
        case stop(StopRequest)
        case result(CallResult)
        /// Fleet mode: list the fleet's nodes (answered by the cluster agent).
        case nodes(ClusterNodesRequest)
        case nodesReply(ClusterNodesReply)
    }

    package init(callID: UInt64 = 0, deadlineUnixMs: UInt64 = 0, body: Body?) {
        self.callID = callID
        self.deadlineUnixMs = deadlineUnixMs
        self.body = body
    }
}

extension AdminEnvelope: DescribedWireMessage {
    static var cDescriptor: UnsafePointer<ProtobufCMessageDescriptor> { lorikeet_admin_envelope_descriptor() }

    func write(to writer: CMessageWriter) {
        writer.set("call_id", self.callID)
        writer.set("deadline_unix_ms", self.deadlineUnixMs)
        switch self.body {
        case .none: break
        case .status: writer.set("status", EmptyRequest())
        case .statusReply(let value): writer.set("status_reply", value)
        case .listWorkers: writer.set("list_workers", EmptyRequest())
        case .workerList(let value): writer.set("worker_list", value)
        case .listAdapters: writer.set("list_adapters", EmptyRequest())
        case .adapterTable(let value): writer.set("adapter_table", value)
        case .load(let value): writer.set("load", value)
        case .unload(let value): writer.set("unload", value)
        case .mutationReply(let value): writer.set("mutation_reply", value)
        case .batch(let value): writer.set("batch", value)
        case .batchReply(let value): writer.set("batch_reply", value)
        case .rollingRestart: writer.set("rolling_restart", EmptyRequest())
        case .scale(let value): writer.set("scale", value)
        case .drainWorker(let value): writer.set("drain_worker", value)
        case .stop(let value): writer.set("stop", value)
        case .result(let value): writer.set("result", value)
        case .nodes(let value): writer.set("nodes", value)
        case .nodesReply(let value): writer.set("nodes_reply", value)
        }
    }

    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        let body: Body?
        switch reader.oneofCase("status") {
        case "status": body = .status
        case "status_reply": body = .statusReply(try reader.member("status_reply"))
        case "list_workers": body = .listWorkers
        case "worker_list": body = .workerList(try reader.member("worker_list"))
        case "list_adapters": body = .listAdapters
        case "adapter_table": body = .adapterTable(try reader.member("adapter_table"))
        case "load": body = .load(try reader.member("load"))
        case "unload": body = .unload(try reader.member("unload"))
        case "mutation_reply": body = .mutationReply(try reader.member("mutation_reply"))
        case "batch": body = .batch(try reader.member("batch"))
        case "batch_reply": body = .batchReply(try reader.member("batch_reply"))
        case "rolling_restart": body = .rollingRestart
        case "scale": body = .scale(try reader.member("scale"))
        case "drain_worker": body = .drainWorker(try reader.member("drain_worker"))
        case "stop": body = .stop(try reader.member("stop"))
        case "result": body = .result(try reader.member("result"))
        case "nodes": body = .nodes(try reader.member("nodes"))
        case "nodes_reply": body = .nodesReply(try reader.member("nodes_reply"))
        default: body = nil
        }
        self.init(callID: reader.uint64("call_id"), deadlineUnixMs: reader.uint64("deadline_unix_ms"), body: body)
    }
}
