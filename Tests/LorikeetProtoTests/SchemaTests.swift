import LorikeetProto
import Testing

/// The Swift mirrors of the `.proto` messages (`Sources/LorikeetProto/Messages`) are
/// hand-written and the protobuf-c codec looks fields up by name: these tests walk every
/// message descriptor of the generated C code and hold the Swift side to it, so a `.proto`
/// change the mirrors do not follow fails here with the field's name instead of corrupting
/// memory or dropping data at run time.
@Suite("Swift mirrors against the protobuf-c descriptors")
struct SchemaTests {
    /// The samples (every field set, every oneof case) traced through the codec.
    static func traced() -> ProtoFieldObserver {
        let observer = ProtoFieldObserver()
        for envelope in Samples.controlEnvelopes { try? ProtoSchema.trace(envelope, observer: observer) }
        for envelope in Samples.adminEnvelopes { try? ProtoSchema.trace(envelope, observer: observer) }
        for envelope in Samples.engineEnvelopes { try? ProtoSchema.trace(envelope, observer: observer) }
        for envelope in Samples.clusterEnvelopes { try? ProtoSchema.trace(envelope, observer: observer) }
        try? ProtoSchema.trace(Samples.table, observer: observer)
        return observer
    }

    @Test("every field the Swift codec touches exists with the type, label and presence it assumes")
    func accessesMatchDescriptors() {
        let traced = Self.traced()
        #expect(traced.mismatches.isEmpty, "\(Set(traced.mismatches).sorted().joined(separator: "\n"))")
        #expect(traced.accesses.count > 50)
    }

    @Test("every field of every message is written and read by the Swift codec")
    func everyFieldIsMirrored() {
        let messages = ProtoSchema.messages()
        #expect(messages.count >= 20, "walked \(messages.count) messages")
        let accesses = Self.traced().accesses
        for (message, fields) in messages.sorted(by: { $0.key < $1.key }) {
            for field in fields {
                for direction in [ProtoFieldAccess.Direction.write, .read] {
                    let touched = accesses.contains { $0.message == message && $0.field == field.name && $0.direction == direction }
                    #expect(
                        touched,
                        """
                        \(message).\(field.name) (#\(field.number), \(field.labelName) \(field.typeName)) is in the .proto but \
                        the Swift codec never \(direction == .write ? "writes" : "reads") it (or Tests/LorikeetProtoTests/Samples.swift \
                        does not set it): mirror it in Sources/LorikeetProto/Messages
                        """)
                }
            }
        }
    }

    @Test("field numbers are unique per message and every type is one the codec can store")
    func descriptorsAreSupported() {
        let storable: Set<String> = [
            "uint64", "fixed64", "int64", "sint64", "sfixed64", "uint32", "fixed32", "int32", "sint32", "sfixed32", "enum", "float", "bool",
            "string", "message",
        ]
        for (message, fields) in ProtoSchema.messages() {
            #expect(Set(fields.map(\.number)).count == fields.count, "\(message) reuses a field number")
            for field in fields {
                #expect(
                    storable.contains(field.typeName),
                    "\(message).\(field.name) is \(field.typeName): the Swift codec has no accessor for it")
            }
        }
    }
}
