import CLorikeetProto

/// gRPC status codes, as carried by `lorikeet.v1.Code` on every channel.
package enum StatusCode: Int32, Sendable, CaseIterable, CustomStringConvertible {
    case ok = 0
    case cancelled = 1
    case unknown = 2
    case invalidArgument = 3
    case deadlineExceeded = 4
    case notFound = 5
    case alreadyExists = 6
    case permissionDenied = 7
    case resourceExhausted = 8
    case failedPrecondition = 9
    case aborted = 10
    case outOfRange = 11
    case unimplemented = 12
    case `internal` = 13
    case unavailable = 14

    /// The code for a wire value; values this version does not know read as `.unknown`.
    package init(wireValue: Int32) { self = StatusCode(rawValue: wireValue) ?? .unknown }

    package var description: String {
        switch self {
        case .ok: "OK"
        case .cancelled: "CANCELLED"
        case .unknown: "UNKNOWN"
        case .invalidArgument: "INVALID_ARGUMENT"
        case .deadlineExceeded: "DEADLINE_EXCEEDED"
        case .notFound: "NOT_FOUND"
        case .alreadyExists: "ALREADY_EXISTS"
        case .permissionDenied: "PERMISSION_DENIED"
        case .resourceExhausted: "RESOURCE_EXHAUSTED"
        case .failedPrecondition: "FAILED_PRECONDITION"
        case .aborted: "ABORTED"
        case .outOfRange: "OUT_OF_RANGE"
        case .unimplemented: "UNIMPLEMENTED"
        case .internal: "INTERNAL"
        case .unavailable: "UNAVAILABLE"
        }
    }
}

/// Outcome of a call (`lorikeet.v1.Status`): a gRPC code, a message for humans and
/// optionally the request field at fault (becomes OpenAI's `param`).
package struct Status: Sendable, Equatable, Error, CustomStringConvertible {
    package var code: StatusCode
    package var message: String
    package var param: String

    package init(code: StatusCode = .ok, message: String = "", param: String = "") {
        self.code = code
        self.message = message
        self.param = param
    }

    package static let ok = Status()
    package var isOK: Bool { self.code == .ok }
    package var description: String { "\(self.code): \(self.message)" }
}

extension Status: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("code", self.code.rawValue)
        writer.set("message", self.message)
        writer.set("param", self.param)
    }

    init(from reader: CMessageReader) {
        self.init(
            code: StatusCode(wireValue: reader.int32("code")),
            message: reader.string("message"),
            param: reader.string("param")
        )
    }
}

/// One entry of the committed adapter table (`lorikeet.v1.Adapter`).
package struct AdapterRecord: Sendable, Equatable {
    package var name: String
    /// vLLM's `lora_int_id`: starts at 1, never reused for another adapter.
    package var intID: UInt64
    /// Canonical absolute path (symlinks resolved).
    package var path: String
    package var baseModel: String
    package var loadInplace: Bool
    package var pinned: Bool
    package var loadedAtUnixMs: Int64

    package init(
        name: String, intID: UInt64, path: String, baseModel: String = "", loadInplace: Bool = false,
        pinned: Bool = false, loadedAtUnixMs: Int64 = 0
    ) {
        self.name = name
        self.intID = intID
        self.path = path
        self.baseModel = baseModel
        self.loadInplace = loadInplace
        self.pinned = pinned
        self.loadedAtUnixMs = loadedAtUnixMs
    }
}

extension AdapterRecord: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("name", self.name)
        writer.set("int_id", self.intID)
        writer.set("path", self.path)
        writer.set("base_model", self.baseModel)
        writer.set("load_inplace", self.loadInplace)
        writer.set("pinned", self.pinned)
        writer.set("loaded_at_unix_ms", self.loadedAtUnixMs)
    }

    init(from reader: CMessageReader) {
        self.init(
            name: reader.string("name"), intID: reader.uint64("int_id"), path: reader.string("path"),
            baseModel: reader.string("base_model"), loadInplace: reader.bool("load_inplace"),
            pinned: reader.bool("pinned"), loadedAtUnixMs: reader.int64("loaded_at_unix_ms")
        )
    }
}

/// The whole adapter table at one version (`lorikeet.v1.AdapterTable`); also the
/// content of the supervisor's state file.
package struct AdapterTable: Sendable, Equatable {
    package var version: UInt64
    package var adapters: [AdapterRecord]
    /// The id the next new adapter gets (ids are never reused).
    package var nextIntID: UInt64

    package init(version: UInt64 = 0, adapters: [AdapterRecord] = [], nextIntID: UInt64 = 1) {
        self.version = version
        self.adapters = adapters
        self.nextIntID = nextIntID
    }
}

extension AdapterTable: DescribedWireMessage {
    static var cDescriptor: UnsafePointer<ProtobufCMessageDescriptor> { lorikeet_adapter_table_descriptor() }

    func write(to writer: CMessageWriter) {
        writer.set("version", self.version)
        writer.set("adapters", self.adapters)
        writer.set("next_int_id", self.nextIntID)
    }

    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        self.init(
            version: reader.uint64("version"), adapters: try reader.messages("adapters"),
            nextIntID: reader.uint64("next_int_id")
        )
    }
}

/// Load an adapter (vLLM `POST /v1/load_lora_adapter`), as routed between processes.
package struct LoadAdapterRequest: Sendable, Equatable {
    package var name: String
    package var path: String
    package var loadInplace: Bool
    package var pinned: Bool
    package var baseModel: String
    /// Worker slot that received the call; -1 for the admin socket.
    package var originSlot: Int32
    /// Caller address, for the audit log.
    package var caller: String
    /// Fleet mode: the id the supervisor reserved in etcd for a new name (0 = none; the
    /// leader then takes the table's next id).
    package var reservedIntID: UInt64

    package init(
        name: String, path: String, loadInplace: Bool = false, pinned: Bool = false, baseModel: String = "",
        originSlot: Int32 = -1, caller: String = "", reservedIntID: UInt64 = 0
    ) {
        self.reservedIntID = reservedIntID
        self.name = name
        self.path = path
        self.loadInplace = loadInplace
        self.pinned = pinned
        self.baseModel = baseModel
        self.originSlot = originSlot
        self.caller = caller
    }
}

extension LoadAdapterRequest: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("name", self.name)
        writer.set("path", self.path)
        writer.set("load_inplace", self.loadInplace)
        writer.set("pinned", self.pinned)
        writer.set("base_model", self.baseModel)
        writer.set("origin_slot", self.originSlot)
        writer.set("caller", self.caller)
        writer.set("reserved_int_id", self.reservedIntID)
    }

    init(from reader: CMessageReader) {
        self.init(
            name: reader.string("name"), path: reader.string("path"), loadInplace: reader.bool("load_inplace"),
            pinned: reader.bool("pinned"), baseModel: reader.string("base_model"),
            originSlot: reader.int32("origin_slot"), caller: reader.string("caller"),
            reservedIntID: reader.uint64("reserved_int_id")
        )
    }
}

/// Fleet mode: until when the node may serve adapters (`lorikeet.v1.Fence`), in
/// `CLOCK_MONOTONIC` milliseconds of the host (the same clock in every process of a node).
package struct Fence: Sendable, Equatable {
    package var validUntilMonotonicMs: Int64
    package init(validUntilMonotonicMs: Int64 = 0) { self.validUntilMonotonicMs = validUntilMonotonicMs }
}

extension Fence: CMessageConvertible {
    func write(to writer: CMessageWriter) { writer.set("valid_until_monotonic_ms", self.validUntilMonotonicMs) }
    init(from reader: CMessageReader) { self.init(validUntilMonotonicMs: reader.int64("valid_until_monotonic_ms")) }
}

/// Unload an adapter (vLLM `POST /v1/unload_lora_adapter`).
package struct UnloadAdapterRequest: Sendable, Equatable {
    package var name: String
    /// 0 = do not check the id.
    package var intID: UInt64
    package var originSlot: Int32
    package var caller: String

    package init(name: String, intID: UInt64 = 0, originSlot: Int32 = -1, caller: String = "") {
        self.name = name
        self.intID = intID
        self.originSlot = originSlot
        self.caller = caller
    }
}

extension UnloadAdapterRequest: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("name", self.name)
        writer.set("int_id", self.intID)
        writer.set("origin_slot", self.originSlot)
        writer.set("caller", self.caller)
    }

    init(from reader: CMessageReader) {
        self.init(
            name: reader.string("name"), intID: reader.uint64("int_id"), originSlot: reader.int32("origin_slot"),
            caller: reader.string("caller")
        )
    }
}

/// Result of one load or unload.
package struct AdapterMutationReply: Sendable, Equatable {
    package var status: Status
    package var adapter: AdapterRecord?
    package var tableVersion: UInt64

    package init(status: Status = .ok, adapter: AdapterRecord? = nil, tableVersion: UInt64 = 0) {
        self.status = status
        self.adapter = adapter
        self.tableVersion = tableVersion
    }
}

extension AdapterMutationReply: CMessageConvertible {
    func write(to writer: CMessageWriter) {
        writer.set("status", self.status)
        writer.set("adapter", self.adapter)
        writer.set("table_version", self.tableVersion)
    }

    init(from reader: CMessageReader) throws(ProtoDecodingError) {
        self.init(
            status: try reader.message("status") ?? .ok, adapter: try reader.message("adapter"),
            tableVersion: reader.uint64("table_version")
        )
    }
}
