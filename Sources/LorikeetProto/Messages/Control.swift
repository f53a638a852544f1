import CLorikeetProto

/// A worker's role, chosen by the supervisor (`lorikeet.v1.Role`).
package enum WorkerRole: Int32, Sendable, Equatable {
    case follower = 0
    case leader = 1
}

/// Worker -> supervisor, the first frame after start.
package struct Hello: Sendable, Equatable {
    package var workerID: UInt32
    package var pid: Int32
    package var version: String
    package init(workerID: UInt32 = 0, pid: Int32 = 0, version: String = "") {
        self.workerID = workerID
        self.pid = pid
        self.version = version
    }
}

extension Hello: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("worker_id", self.workerID)
        writer.set("pid", self.pid)
        writer.set("version", self.version)
    }
    init(from reader: CMessageReader) {
        self.init(workerID: reader.uint32("worker_id"), pid: reader.int32("pid"), version: reader.string("version"))
    }
}

/// Worker -> supervisor: the snapshot is applied and HTTP is being served.
package struct Ready: Sendable, Equatable {
    package var tableVersion: UInt64
    package init(tableVersion: UInt64 = 0) { self.tableVersion = tableVersion }
}

extension Ready: CMessageConvertible {
    func write(to writer: CMessageWriter) { writer.set("table_version", self.tableVersion) }
    init(from reader: CMessageReader) { self.init(tableVersion: reader.uint64("table_version")) }
}

/// Liveness ping, both ways; the reply echoes `seq`.
package struct Heartbeat: Sendable, Equatable {
    package var seq: UInt64
    package var requestsServed: UInt64
    package var inFlight: UInt32
    package init(seq: UInt64 = 0, requestsServed: UInt64 = 0, inFlight: UInt32 = 0) {
        self.seq = seq
        self.requestsServed = requestsServed
        self.inFlight = inFlight
    }
}

extension Heartbeat: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("seq", self.seq)
        writer.set("requests_served", self.requestsServed)
        writer.set("in_flight", self.inFlight)
    }
    init(from reader: CMessageReader) {
        self.init(seq: reader.uint64("seq"), requestsServed: reader.uint64("requests_served"), inFlight: reader.uint32("in_flight"))
    }
}

/// Supervisor -> worker: the worker's role, the leader epoch and the engine to use.
package struct RoleAssignment: Sendable, Equatable {
    package var role: WorkerRole
    package var epoch: UInt64
    package var engineSocket: String
    package init(role: WorkerRole = .follower, epoch: UInt64 = 0, engineSocket: String = "") {
        self.role = role
        self.epoch = epoch
        self.engineSocket = engineSocket
    }
}

extension RoleAssignment: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("role", self.role.rawValue)
        writer.set("epoch", self.epoch)
        writer.set("engine_socket", self.engineSocket)
    }
    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        let rawRole = reader.int32("role")
        guard let role = WorkerRole(rawValue: rawRole) else {
            throw .invalidValue(field: "role", reason: "unknown role \(rawRole)")
        }
        self.init(role: role, epoch: reader.uint64("epoch"), engineSocket: reader.string("engine_socket"))
    }
}

/// Supervisor -> worker: replace the replica with this table.
package struct TableSnapshot: Sendable, Equatable {
    package var table: AdapterTable
    package init(table: AdapterTable = AdapterTable()) { self.table = table }
}

extension TableSnapshot: CMessageConvertible {
    func write(to writer: CMessageWriter) { writer.set("table", self.table) }
    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        self.init(table: try reader.message("table") ?? AdapterTable())
    }
}

/// A change of the adapter table: committed (supervisor -> workers) or proposed
/// (leader -> supervisor inside `CommitRequest`).
package struct TableChange: Sendable, Equatable {
    package var version: UInt64
    package var upserts: [AdapterRecord]
    package var removes: [String]
    package var nextIntID: UInt64
    package init(version: UInt64 = 0, upserts: [AdapterRecord] = [], removes: [String] = [], nextIntID: UInt64 = 0) {
        self.version = version
        self.upserts = upserts
        self.removes = removes
        self.nextIntID = nextIntID
    }
}

extension TableChange: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("version", self.version)
        writer.set("upserts", self.upserts)
        writer.set("removes", self.removes)
        writer.set("next_int_id", self.nextIntID)
    }
    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        self.init(
            version: reader.uint64("version"), upserts: try reader.messages("upserts"), removes: reader.strings("removes"),
            nextIntID: reader.uint64("next_int_id")
        )
    }
}

/// Worker -> supervisor: the change at this version is applied.
package struct TableChangeAck: Sendable, Equatable {
    package var version: UInt64
    package init(version: UInt64 = 0) { self.version = version }
}

extension TableChangeAck: CMessageConvertible {
    func write(to writer: CMessageWriter) { writer.set("version", self.version) }
    init(from reader: CMessageReader) { self.init(version: reader.uint64("version")) }
}

/// Leader -> supervisor: persist and fan out this change.
package struct CommitRequest: Sendable, Equatable {
    package var epoch: UInt64
    package var baseVersion: UInt64
    package var change: TableChange
    package init(epoch: UInt64 = 0, baseVersion: UInt64 = 0, change: TableChange = TableChange()) {
        self.epoch = epoch
        self.baseVersion = baseVersion
        self.change = change
    }
}

extension CommitRequest: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("epoch", self.epoch)
        writer.set("base_version", self.baseVersion)
        writer.set("change", self.change)
    }
    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        self.init(
            epoch: reader.uint64("epoch"), baseVersion: reader.uint64("base_version"),
            change: try reader.message("change") ?? TableChange()
        )
    }
}

/// Supervisor -> leader: the change is durable and applied by every ready worker.
package struct CommitReply: Sendable, Equatable {
    package var status: Status
    package var version: UInt64
    package init(status: Status = .ok, version: UInt64 = 0) {
        self.status = status
        self.version = version
    }
}

extension CommitReply: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("status", self.status)
        writer.set("version", self.version)
    }
    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        self.init(status: try reader.message("status") ?? .ok, version: reader.uint64("version"))
    }
}

/// Supervisor -> worker: stop accepting, finish in-flight work within `graceMs`, exit.
package struct Drain: Sendable, Equatable {
    package var graceMs: UInt32
    /// No process inherits the slot's listener (scale-down): close it at once.
    package var listenerRetired: Bool
    package init(graceMs: UInt32 = 0, listenerRetired: Bool = false) {
        self.graceMs = graceMs
        self.listenerRetired = listenerRetired
    }
}

extension Drain: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("grace_ms", self.graceMs)
        writer.set("listener_retired", self.listenerRetired)
    }
    init(from reader: CMessageReader) {
        self.init(graceMs: reader.uint32("grace_ms"), listenerRetired: reader.bool("listener_retired"))
    }
}

/// Supervisor -> worker: exit now.
package struct Shutdown: Sendable, Equatable {
    package var fast: Bool
    package init(fast: Bool = false) { self.fast = fast }
}

extension Shutdown: CMessageConvertible {
    func write(to writer: CMessageWriter) { writer.set("fast", self.fast) }
    init(from reader: CMessageReader) { self.init(fast: reader.bool("fast")) }
}

/// One frame of the control channel (supervisor <-> worker, `lorikeet.v1.ControlEnvelope`).
package struct ControlEnvelope: Sendable, Equatable {
    /// Correlates a reply with its call; 0 for one-way messages.
    package var callID: UInt64
    /// Unix ms after which the caller no longer waits; 0 = none.
    package var deadlineUnixMs: UInt64
    package var body: Body?

    /// The message the envelope carries.
    package enum Body: Sendable, Equatable {
        case hello(Hello)
        case ready(Ready)
        case heartbeat(Heartbeat)
        case role(RoleAssignment)
        case snapshot(TableSnapshot)
        case change(TableChange)
        case changeAck(TableChangeAck)
        case load(LoadAdapterRequest)
        case unload(UnloadAdapterRequest)
        case mutationReply(AdapterMutationReply)
        case commit(CommitRequest)
        case commitReply(CommitReply)
        case drain(Drain)
        case shutdown(Shutdown)
        /// Fleet mode: until when adapters may be served.
        case fence(Fence)
    }

    package init(callID: UInt64 = 0, deadlineUnixMs: UInt64 = 0, body: Body?) {
        self.callID = callID
        self.deadlineUnixMs = deadlineUnixMs
        self.body = body
    }
}

extension ControlEnvelope: DescribedWireMessage {
    static var cDescriptor: UnsafePointer<ProtobufCMessageDescriptor> { lorikeet_control_envelope_descriptor() }

    func write(to writer: CMessageWriter) {
        writer.set("call_id", self.callID)
        writer.set("deadline_unix_ms", self.deadlineUnixMs)
        switch self.body {
        case .none: break
        case .hello(let value): writer.set("hello", value)
        case .ready(let value): writer.set("ready", value)
        case .heartbeat(let value): writer.set("heartbeat", value)
        case .role(let value): writer.set("role", value)
        case .snapshot(let value): writer.set("snapshot", value)
        case .change(let value): writer.set("change", value)
        case .changeAck(let value): writer.set("change_ack", value)
        case .load(let value): writer.set("load", value)
        case .unload(let value): writer.set("unload", value)
        case .mutationReply(let value): writer.set("mutation_reply", value)
        case .commit(let value): writer.set("commit", value)
        case .commitReply(let value): writer.set("commit_reply", value)
        case .drain(let value): writer.set("drain", value)
        case .shutdown(let value): writer.set("shutdown", value)
        case .fence(let value): writer.set("fence", value)
        }
    }

    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        let body: Body?
        switch reader.oneofCase("hello") {
        case "hello": body = .hello(try reader.member("hello"))
        case "ready": body = .ready(try reader.member("ready"))
        case "heartbeat": body = .heartbeat(try reader.member("heartbeat"))
        case "role": body = .role(try reader.member("role"))
        case "snapshot": body = .snapshot(try reader.member("snapshot"))
        case "change": body = .change(try reader.member("change"))
        case "change_ack": body = .changeAck(try reader.member("change_ack"))
        case "load": body = .load(try reader.member("load"))
        case "unload": body = .unload(try reader.member("unload"))
        case "mutation_reply": body = .mutationReply(try reader.member("mutation_reply"))
        case "commit": body = .commit(try reader.member("commit"))
        case "commit_reply": body = .commitReply(try reader.member("commit_reply"))
        case "drain": body = .drain(try reader.member("drain"))
        case "shutdown": body = .shutdown(try reader.member("shutdown"))
        case "fence": body = .fence(try reader.member("fence"))
        default: body = nil
        }
        self.init(callID: reader.uint64("call_id"), deadlineUnixMs: reader.uint64("deadline_unix_ms"), body: body)
    }
}
