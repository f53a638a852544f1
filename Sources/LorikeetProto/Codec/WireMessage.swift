import CLorikeetProto

/// A top-level message that can be serialized on its own (a channel envelope, or the
/// adapter table in the state file). Bytes are standard protobuf: any protobuf
/// library decodes them with the schemas in `proto/`.
package protocol WireMessage: Sendable {
    /// The protobuf serialization of this message.
    func serializedBytes() -> [UInt8]
    /// Parses a protobuf serialization; throws on bytes that are not this message.
    init(serializedBytes: some Collection<UInt8>) throws(ProtoDecodingError)
}

protocol DescribedWireMessage: WireMessage, CMessageConvertible {
    static var cDescriptor: UnsafePointer<ProtobufCMessageDescriptor> { get }
}

extension DescribedWireMessage {
    package func serializedBytes() -> [UInt8] {
        CMessageCodec.encode(self, descriptor: Self.cDescriptor)
    }

    package init(serializedBytes: some Collection<UInt8>) throws(ProtoDecodingError) {
        self = try CMessageCodec.decode(Self.self, from: serializedBytes, descriptor: Self.cDescriptor)
    }
}
