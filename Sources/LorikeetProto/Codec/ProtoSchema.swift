import CLorikeetProto

/// How the Swift codec stores one proto field in protobuf-c's C struct: the C type it reads
/// or writes at the field's offset.
package enum ProtoFieldKind: String, Sendable, Hashable, CaseIterable {
    /// `uint64_t`: proto `uint64`, `fixed64`.
    case uint64
    /// `int64_t`: proto `int64`, `sint64`, `sfixed64`.
    case int64
    /// `uint32_t`: proto `uint32`, `fixed32`.
    case uint32
    /// `int32_t`: proto `int32`, `sint32`, `sfixed32` and enums.
    case int32
    /// `float`.
    case float
    /// `protobuf_c_boolean`.
    case bool
    /// `char *`.
    case string
    /// A pointer to a sub-message.
    case message

    /// Whether a field of protobuf-c type `type` is stored this way (no allocation: the
    /// codec asks for every field it touches).
    func accepts(_ type: ProtobufCType) -> Bool {
        switch self {
        case .uint64: type == PROTOBUF_C_TYPE_UINT64 || type == PROTOBUF_C_TYPE_FIXED64
        case .int64: type == PROTOBUF_C_TYPE_INT64 || type == PROTOBUF_C_TYPE_SINT64 || type == PROTOBUF_C_TYPE_SFIXED64
        case .uint32: type == PROTOBUF_C_TYPE_UINT32 || type == PROTOBUF_C_TYPE_FIXED32
        case .int32:
            type == PROTOBUF_C_TYPE_INT32 || type == PROTOBUF_C_TYPE_SINT32 || type == PROTOBUF_C_TYPE_SFIXED32
                || type == PROTOBUF_C_TYPE_ENUM
        case .float: type == PROTOBUF_C_TYPE_FLOAT
        case .bool: type == PROTOBUF_C_TYPE_BOOL
        case .string: type == PROTOBUF_C_TYPE_STRING
        case .message: type == PROTOBUF_C_TYPE_MESSAGE
        }
    }
}

/// One field access of the Swift codec (`Messages/*.swift` through `CMessageWriter` /
/// `CMessageReader`): which field of which message it writes or reads, and how.
package struct ProtoFieldAccess: Hashable, Sendable, CustomStringConvertible {
    /// Encoding (`write(to:)`) or decoding (`init(from:)`).
    package enum Direction: String, Sendable, Hashable {
        case write, read
    }

    /// Full proto name of the message, e.g. `lorikeet.v1.Hello`.
    package var message: String
    /// Proto field name.
    package var field: String
    /// The C storage the codec uses.
    package var kind: ProtoFieldKind
    /// Whether the codec treats the field as `repeated`.
    package var repeated: Bool
    /// Encoding or decoding.
    package var direction: Direction

    package var description: String {
        "\(self.message).\(self.field) (\(self.repeated ? "repeated " : "")\(self.kind.rawValue), \(self.direction.rawValue))"
    }

    /// Why `field` cannot be accessed as `kind`, or nil when it can.
    ///
    /// Checked on every lookup, so a `.proto` change the Swift mirrors do not follow fails
    /// loudly instead of reading or writing the wrong C type: the type must be stored as
    /// `kind`, `repeated` must match the label, and a single field must have proto3 implicit
    /// presence (`LABEL_NONE`; an `optional` scalar needs a `has_` flag the codec never
    /// sets). The writer marks oneof members only for strings and messages, so a scalar
    /// oneof member is refused too.
    static func check(
        _ field: UnsafePointer<ProtobufCFieldDescriptor>, _ kind: ProtoFieldKind, repeated: Bool
    ) -> String? {
        let f = field.pointee
        guard kind.accepts(f.type) else {
            return "is \(ProtoSchema.Field(f).typeName) in the .proto, but the Swift codec accesses it as \(kind.rawValue)"
        }
        if repeated {
            guard f.label == PROTOBUF_C_LABEL_REPEATED else {
                return "is \(ProtoSchema.Field(f).labelName) in the .proto, but the Swift codec accesses it as repeated"
            }
        } else {
            guard f.label == PROTOBUF_C_LABEL_NONE else {
                return "is \(ProtoSchema.Field(f).labelName) in the .proto, but the Swift codec accesses it as a single proto3 field"
            }
            let oneof = f.flags & UInt32(PROTOBUF_C_FIELD_FLAG_ONEOF.rawValue) != 0
            if oneof && kind != .string && kind != .message {
                return "is a scalar oneof member, which the Swift codec cannot mark as set"
            }
        }
        return nil
    }

    /// Looks `name` up in `descriptor` and checks it (`check`). A missing field or a mismatch
    /// traps, naming the field, unless `observer` is given: then it is recorded there and
    /// nil returned so the caller skips the access.
    static func lookUp(
        _ name: String, in descriptor: UnsafePointer<ProtobufCMessageDescriptor>, _ kind: ProtoFieldKind, repeated: Bool,
        direction: Direction, observer: ProtoFieldObserver?
    ) -> UnsafePointer<ProtobufCFieldDescriptor>? {
        let field = protobuf_c_message_descriptor_get_field_by_name(descriptor, name)
        // The hot path (every field of every message on every channel) allocates nothing:
        // names are built only for the tests' observer and for a mismatch.
        if observer == nil, let field, Self.check(field, kind, repeated: repeated) == nil { return field }
        let messageName = String(cString: descriptor.pointee.name)
        observer?.accesses.insert(ProtoFieldAccess(message: messageName, field: name, kind: kind, repeated: repeated, direction: direction))
        let problem: String
        if let field {
            guard let mismatch = Self.check(field, kind, repeated: repeated) else { return field }
            problem = "proto field \(messageName).\(name) (#\(field.pointee.id)) \(mismatch)"
        } else {
            problem = "the Swift codec accesses field \(name), which \(messageName) does not have"
        }
        guard let observer else {
            preconditionFailure("\(problem): make Sources/LorikeetProto/Messages follow the .proto (bin/gen-proto)")
        }
        observer.mismatches.append(problem)
        return nil
    }
}

/// Collects the Swift codec's field accesses and schema mismatches instead of trapping on
/// them (`ProtoSchema.trace`): the test that checks the mirrors against the descriptors.
///
/// Not thread-safe: one observer per synchronous encode/decode.
package final class ProtoFieldObserver {
    /// Every distinct field access seen.
    package var accesses: Set<ProtoFieldAccess> = []
    /// Every mismatch seen, as a sentence naming the field.
    package var mismatches: [String] = []

    /// An empty observer.
    package init() {}
}

/// The message descriptors of the generated C code, as Swift values, and a traced round trip
/// of the Swift codec: together they show whether the hand-written Swift mirrors
/// (`Messages/*.swift`) follow the `.proto` files.
package enum ProtoSchema {
    /// One field of a message descriptor.
    package struct Field: Hashable, Sendable {
        /// Proto field name.
        package var name: String
        /// Field number.
        package var number: UInt32
        /// `none` (proto3 implicit presence), `optional`, `required` or `repeated`.
        package var labelName: String
        /// Proto type name (`uint64`, `string`, `message`, ...).
        package var typeName: String
        /// Full name of the message type for `message` fields.
        package var messageType: String?
        /// Set when the field is a member of a oneof.
        package var inOneof: Bool

        init(_ f: ProtobufCFieldDescriptor) {
            self.name = String(cString: f.name)
            self.number = f.id
            self.labelName =
                switch f.label {
                case PROTOBUF_C_LABEL_REQUIRED: "required"
                case PROTOBUF_C_LABEL_OPTIONAL: "optional"
                case PROTOBUF_C_LABEL_REPEATED: "repeated"
                default: "none"
                }
            let names: [ProtobufCType: String] = [
                PROTOBUF_C_TYPE_INT32: "int32", PROTOBUF_C_TYPE_SINT32: "sint32", PROTOBUF_C_TYPE_SFIXED32: "sfixed32",
                PROTOBUF_C_TYPE_INT64: "int64", PROTOBUF_C_TYPE_SINT64: "sint64", PROTOBUF_C_TYPE_SFIXED64: "sfixed64",
                PROTOBUF_C_TYPE_UINT32: "uint32", PROTOBUF_C_TYPE_FIXED32: "fixed32", PROTOBUF_C_TYPE_UINT64: "uint64",
                PROTOBUF_C_TYPE_FIXED64: "fixed64", PROTOBUF_C_TYPE_FLOAT: "float", PROTOBUF_C_TYPE_DOUBLE: "double",
                PROTOBUF_C_TYPE_BOOL: "bool", PROTOBUF_C_TYPE_ENUM: "enum", PROTOBUF_C_TYPE_STRING: "string",
                PROTOBUF_C_TYPE_BYTES: "bytes", PROTOBUF_C_TYPE_MESSAGE: "message",
            ]
            self.typeName = names[f.type] ?? "type \(f.type.rawValue)"
            self.messageType =
                f.type == PROTOBUF_C_TYPE_MESSAGE
                ? String(cString: f.descriptor.assumingMemoryBound(to: ProtobufCMessageDescriptor.self).pointee.name) : nil
            self.inOneof = f.flags & UInt32(PROTOBUF_C_FIELD_FLAG_ONEOF.rawValue) != 0
        }
    }

    /// Every message reachable from the five top-level messages (the four channel envelopes
    /// and the adapter table), by full name, with its fields.
    package static func messages() -> [String: [Field]] {
        var result: [String: [Field]] = [:]
        var pending = [
            lorikeet_control_envelope_descriptor(), lorikeet_admin_envelope_descriptor(),
            lorikeet_engine_envelope_descriptor(), lorikeet_adapter_table_descriptor(),
            lorikeet_cluster_envelope_descriptor(),
        ].compactMap { $0 }
        while let descriptor = pending.popLast() {
            let name = String(cString: descriptor.pointee.name)
            guard result[name] == nil else { continue }
            let fields = UnsafeBufferPointer(start: descriptor.pointee.fields, count: Int(descriptor.pointee.n_fields))
            result[name] = fields.map(Field.init)
            for f in fields where f.type == PROTOBUF_C_TYPE_MESSAGE {
                pending.append(f.descriptor.assumingMemoryBound(to: ProtobufCMessageDescriptor.self))
            }
        }
        return result
    }

    /// Encodes `value` and decodes the bytes again with every field access and mismatch of
    /// the Swift codec reported to `observer` (mismatched accesses are skipped, not trapped).
    package static func trace(_ value: some WireMessage, observer: ProtoFieldObserver) throws(ProtoDecodingError) {
        guard let described = value as? any DescribedWireMessage else {
            preconditionFailure("\(type(of: value)) is not encoded through protobuf-c descriptors")
        }
        try Self.trace(described, observer: observer)
    }

    private static func trace<M: DescribedWireMessage>(_ value: M, observer: ProtoFieldObserver) throws(ProtoDecodingError) {
        let bytes = CMessageCodec.encode(value, descriptor: M.cDescriptor, observer: observer)
        _ = try CMessageCodec.decode(M.self, from: bytes, descriptor: M.cDescriptor, observer: observer)
    }
}
