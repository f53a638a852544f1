import CLorikeetProto

/// Agent -> supervisor: the fleet's committed table at an etcd revision
/// (`lorikeet.v1.ClusterTable`). `table.version` is unused; `table.nextIntID` is the
/// fleet's next id.
package struct ClusterTable: Sendable, Equatable {
    package var revision: Int64
    package var table: AdapterTable
    /// The agent registered its node key and applied everything before it: the node may serve.
    package var caughtUp: Bool
    package init(revision: Int64 = 0, table: AdapterTable = AdapterTable(), caughtUp: Bool = false) {
        self.revision = revision
        self.table = table
        self.caughtUp = caughtUp
    }
}

extension ClusterTable: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("revision", self.revision)
        writer.set("table", self.table)
        writer.set("caught_up", self.caughtUp)
    }
    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        self.init(
            revision: reader.int64("revision"), table: try reader.message("table") ?? AdapterTable(),
            caughtUp: reader.bool("caught_up"))
    }
}

/// Supervisor -> agent: every worker of the node acked the table of this revision
/// (`lorikeet.v1.ClusterApplied`).
package struct ClusterApplied: Sendable, Equatable {
    package var revision: Int64
    package init(revision: Int64 = 0) { self.revision = revision }
}

extension ClusterApplied: CMessageConvertible {
    func write(to writer: CMessageWriter) { writer.set("revision", self.revision) }
    init(from reader: CMessageReader) { self.init(revision: reader.int64("revision")) }
}

/// Supervisor -> agent: reserve a fleet-wide adapter id (`lorikeet.v1.ClusterReserveRequest`).
package struct ClusterReserveRequest: Sendable, Equatable {
    package var name: String
    package init(name: String = "") { self.name = name }
}

extension ClusterReserveRequest: CMessageConvertible {
    func write(to writer: CMessageWriter) { writer.set("name", self.name) }
    init(from reader: CMessageReader) { self.init(name: reader.string("name")) }
}

/// Agent -> supervisor: the reserved id, or why none (`lorikeet.v1.ClusterReserveReply`).
package struct ClusterReserveReply: Sendable, Equatable {
    package var status: Status
    package var intID: UInt64
    package init(status: Status = .ok, intID: UInt64 = 0) {
        self.status = status
        self.intID = intID
    }
}

extension ClusterReserveReply: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("status", self.status)
        writer.set("int_id", self.intID)
    }
    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        self.init(status: try reader.message("status") ?? .ok, intID: reader.uint64("int_id"))
    }
}

/// Supervisor -> agent: commit a change in one etcd transaction
/// (`lorikeet.v1.ClusterCommitRequest`). `previous` holds the records the node saw for
/// the names the change reloads or removes; the transaction compares them byte for byte.
package struct ClusterCommitRequest: Sendable, Equatable {
    package var upserts: [AdapterRecord]
    package var removes: [String]
    package var previous: [AdapterRecord]
    package init(upserts: [AdapterRecord] = [], removes: [String] = [], previous: [AdapterRecord] = []) {
        self.upserts = upserts
        self.removes = removes
        self.previous = previous
    }
}

extension ClusterCommitRequest: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("upserts", self.upserts)
        writer.set("removes", self.removes)
        writer.set("previous", self.previous)
    }
    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        self.init(upserts: try reader.messages("upserts"), removes: reader.strings("removes"), previous: try reader.messages("previous"))
    }
}

/// Agent -> supervisor: a commit's outcome, sent once every live node applied it
/// (`lorikeet.v1.ClusterCommitReply`).
package struct ClusterCommitReply: Sendable, Equatable {
    package var status: Status
    package var revision: Int64
    package init(status: Status = .ok, revision: Int64 = 0) {
        self.status = status
        self.revision = revision
    }
}

extension ClusterCommitReply: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("status", self.status)
        writer.set("revision", self.revision)
    }
    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        self.init(status: try reader.message("status") ?? .ok, revision: reader.int64("revision"))
    }
}

/// The value of the etcd key `nodes/<node>`, attached to the node's lease
/// (`lorikeet.v1.NodeStatus`).
package struct NodeStatus: Sendable, Equatable {
    package var name: String
    package var appliedRevision: Int64
    /// `joining` or `ready`.
    package var state: String
    package var version: String
    package var startedUnixMs: Int64
    package var leaseID: Int64
    /// The supervisor run's token, kept across restarts of its cluster agent.
    package var incarnation: String
    package init(
        name: String = "", appliedRevision: Int64 = 0, state: String = "", version: String = "", startedUnixMs: Int64 = 0,
        leaseID: Int64 = 0, incarnation: String = ""
    ) {
        self.name = name
        self.appliedRevision = appliedRevision
        self.state = state
        self.version = version
        self.startedUnixMs = startedUnixMs
        self.leaseID = leaseID
        self.incarnation = incarnation
    }
}

extension NodeStatus {
    /// A fresh `incarnation`: 128 random bits in hex.
    package static func newIncarnation() -> String {
        (0..<2).map { _ in
            let hex = String(UInt64.random(in: 0...UInt64.max), radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }.joined()
    }
}

extension NodeStatus: DescribedWireMessage {
    static var cDescriptor: UnsafePointer<ProtobufCMessageDescriptor> { lorikeet_node_status_descriptor() }

    func write(to writer: CMessageWriter) {
        writer.set("name", self.name)
        writer.set("applied_revision", self.appliedRevision)
        writer.set("state", self.state)
        writer.set("version", self.version)
        writer.set("started_unix_ms", self.startedUnixMs)
        writer.set("lease_id", self.leaseID)
        writer.set("incarnation", self.incarnation)
    }
    init(from reader: CMessageReader) {
        self.init(
            name: reader.string("name"), appliedRevision: reader.int64("applied_revision"), state: reader.string("state"),
            version: reader.string("version"), startedUnixMs: reader.int64("started_unix_ms"), leaseID: reader.int64("lease_id"),
            incarnation: reader.string("incarnation"))
    }
}

/// Supervisor -> agent: list the fleet's nodes (`lorikeet.v1.ClusterNodesRequest`).
package struct ClusterNodesRequest: Sendable, Equatable {
    package var includeSelf: Bool
    package init(includeSelf: Bool = true) { self.includeSelf = includeSelf }
}

extension ClusterNodesRequest: CMessageConvertible {
    func write(to writer: CMessageWriter) { writer.set("include_self", self.includeSelf) }
    init(from reader: CMessageReader) { self.init(includeSelf: reader.bool("include_self")) }
}

/// Agent -> supervisor: the fleet's nodes (`lorikeet.v1.ClusterNodesReply`).
package struct ClusterNodesReply: Sendable, Equatable {
    package var status: Status
    package var nodes: [NodeStatus]
    package var revision: Int64
    package init(status: Status = .ok, nodes: [NodeStatus] = [], revision: Int64 = 0) {
        self.status = status
        self.nodes = nodes
        self.revision = revision
    }
}

extension ClusterNodesReply: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("status", self.status)
        writer.set("nodes", self.nodes)
        writer.set("revision", self.revision)
    }
    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        self.init(status: try reader.message("status") ?? .ok, nodes: try reader.messages("nodes"), revision: reader.int64("revision"))
    }
}

/// One frame of the cluster channel (supervisor <-> cluster agent, `lorikeet.v1.ClusterEnvelope`).
package struct ClusterEnvelope: Sendable, Equatable {
    /// Correlates a reply with its call; 0 for one-way messages.
    package var callID: UInt64
    package var body: Body?

    /// The message the envelope carries.
    package enum Body: Sendable, Equatable {
        case table(ClusterTable)
        case applied(ClusterApplied)
        case reserve(ClusterReserveRequest)
        case reserveReply(ClusterReserveReply)
        case commit(ClusterCommitRequest)
        case commitReply(ClusterCommitReply)
        case nodes(ClusterNodesRequest)
        case nodesReply(ClusterNodesReply)
        case fence(Fence)
    }

    package init(callID: UInt64 = 0, body: Body?) {
        self.callID = callID
        self.body = body
    }
}

extension ClusterEnvelope: DescribedWireMessage {
    static var cDescriptor: UnsafePointer<ProtobufCMessageDescriptor> { lorikeet_cluster_envelope_descriptor() }

    func write(to writer: CMessageWriter) {
        writer.set("call_id", self.callID)
        switch self.body {
        case .none: break
        case .table(let value): writer.set("table", value)
        case .applied(let value): writer.set("applied", value)
        case .reserve(let value): writer.set("reserve", value)
        case .reserveReply(let value): writer.set("reserve_reply", value)
        case .commit(let value): writer.set("commit", value)
        case .commitReply(let value): writer.set("commit_reply", value)
        case .nodes(let value): writer.set("nodes", value)
        case .nodesReply(let value): writer.set("nodes_reply", value)
        case .fence(let value): writer.set("fence", value)
        }
    }

    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        let body: Body?
        switch reader.oneofCase("table") {
        case "table": body = .table(try reader.member("table"))
        case "applied": body = .applied(try reader.member("applied"))
        case "reserve": body = .reserve(try reader.member("reserve"))
        case "reserve_reply": body = .reserveReply(try reader.member("reserve_reply"))
        case "commit": body = .commit(try reader.member("commit"))
        case "commit_reply": body = .commitReply(try reader.member("commit_reply"))
        case "nodes": body = .nodes(try reader.member("nodes"))
        case "nodes_reply": body = .nodesReply(try reader.member("nodes_reply"))
        case "fence": body = .fence(try reader.member("fence"))
        default: body = nil
        }
        self.init(callID: reader.uint64("call_id"), body: body)
    }
}

/// An adapter record on its own: the value of the etcd key `adapters/<name>` in fleet mode.
extension AdapterRecord: DescribedWireMessage {
    static var cDescriptor: UnsafePointer<ProtobufCMessageDescriptor> { lorikeet_adapter_descriptor() }
}
