// The only file that touches protobuf-c memory. Every message type of this module
// is written into and read out of protobuf-c's C structs through the message
// descriptors, field by field, by name — so no per-message marshalling of
// strings, arrays or sub-messages exists anywhere else.

import CLorikeetProto
import Glibc

/// A message type that maps onto one protobuf-c generated message.
///
/// Conformers describe their fields once, by proto field name, in `write(to:)` and
/// `init(from:)`; `CMessageWriter` / `CMessageReader` do the C marshalling.
protocol CMessageConvertible: Sendable {
    /// Fills the fields of a freshly initialized C message.
    func write(to writer: CMessageWriter)
    /// Reads the fields of a decoded C message.
    init(from reader: CMessageReader) throws(ProtoDecodingError)
}

/// Owns every C allocation made while building one message tree; frees them together.
final class CArena {
    private var allocations: [UnsafeMutableRawPointer] = []

    func allocate(bytes: Int) -> UnsafeMutableRawPointer {
        guard let pointer = calloc(1, max(bytes, 1)) else { fatalError("out of memory") }
        self.allocations.append(pointer)
        return pointer
    }

    func duplicate(_ string: String) -> UnsafeMutablePointer<CChar> {
        let utf8 = Array(string.utf8)
        let pointer = self.allocate(bytes: utf8.count + 1).assumingMemoryBound(to: CChar.self)
        utf8.withUnsafeBufferPointer { source in
            for (index, byte) in source.enumerated() { pointer[index] = CChar(bitPattern: byte) }
        }
        pointer[utf8.count] = 0
        return pointer
    }

    deinit {
        for pointer in self.allocations { free(pointer) }
    }
}

/// Writes Swift values into one C message, looking fields up by proto name.
///
/// A field name or type that does not match the schema is a programming error in this
/// module (caught by the round-trip tests), so it traps rather than throws.
final class CMessageWriter {
    let arena: CArena
    let descriptor: UnsafePointer<ProtobufCMessageDescriptor>
    let message: UnsafeMutableRawPointer

    init(descriptor: UnsafePointer<ProtobufCMessageDescriptor>, arena: CArena) {
        self.arena = arena
        self.descriptor = descriptor
        self.message = arena.allocate(bytes: Int(descriptor.pointee.sizeof_message))
        protobuf_c_message_init(descriptor, self.message)
    }

    private func field(_ name: String) -> UnsafePointer<ProtobufCFieldDescriptor> {
        guard let field = protobuf_c_message_descriptor_get_field_by_name(self.descriptor, name) else {
            preconditionFailure("no field \(name) in \(String(cString: self.descriptor.pointee.name))")
        }
        return field
    }

    private func slot<T>(_ field: UnsafePointer<ProtobufCFieldDescriptor>, _ type: T.Type) -> UnsafeMutablePointer<T> {
        (self.message + Int(field.pointee.offset)).assumingMemoryBound(to: T.self)
    }

    private func markOneof(_ field: UnsafePointer<ProtobufCFieldDescriptor>) {
        if field.pointee.flags & UInt32(PROTOBUF_C_FIELD_FLAG_ONEOF.rawValue) != 0 {
            (self.message + Int(field.pointee.quantifier_offset))
                .assumingMemoryBound(to: UInt32.self).pointee = field.pointee.id
        }
    }

    func set(_ name: String, _ value: UInt64) {
        let field = self.field(name)
        self.slot(field, UInt64.self).pointee = value
    }

    func set(_ name: String, _ value: Int64) {
        let field = self.field(name)
        self.slot(field, Int64.self).pointee = value
    }

    func set(_ name: String, _ value: UInt32) {
        let field = self.field(name)
        self.slot(field, UInt32.self).pointee = value
    }

    /// Sets an `int32` or enum field.
    func set(_ name: String, _ value: Int32) {
        let field = self.field(name)
        self.slot(field, Int32.self).pointee = value
    }

    func set(_ name: String, _ value: Float) {
        let field = self.field(name)
        self.slot(field, Float.self).pointee = value
    }

    func set(_ name: String, _ value: Bool) {
        let field = self.field(name)
        self.slot(field, protobuf_c_boolean.self).pointee = value ? 1 : 0
    }

    func set(_ name: String, _ value: String) {
        guard !value.isEmpty else { return }
        let field = self.field(name)
        self.slot(field, UnsafeMutablePointer<CChar>?.self).pointee = self.arena.duplicate(value)
        self.markOneof(field)
    }

    func set(_ name: String, _ value: (some CMessageConvertible)?) {
        guard let value else { return }
        let field = self.field(name)
        self.slot(field, UnsafeMutableRawPointer?.self).pointee = self.build(value, field: field)
        self.markOneof(field)
    }

    func set(_ name: String, _ values: [String]) {
        guard !values.isEmpty else { return }
        let field = self.field(name)
        let array = self.arena.allocate(bytes: MemoryLayout<UnsafeMutablePointer<CChar>?>.stride * values.count)
            .assumingMemoryBound(to: UnsafeMutablePointer<CChar>?.self)
        for (index, value) in values.enumerated() { array[index] = self.arena.duplicate(value) }
        self.setRepeated(field, count: values.count, array: UnsafeMutableRawPointer(array))
    }

    func set(_ name: String, _ values: [UInt32]) {
        guard !values.isEmpty else { return }
        let field = self.field(name)
        let array = self.arena.allocate(bytes: MemoryLayout<UInt32>.stride * values.count)
            .assumingMemoryBound(to: UInt32.self)
        for (index, value) in values.enumerated() { array[index] = value }
        self.setRepeated(field, count: values.count, array: UnsafeMutableRawPointer(array))
    }

    func set(_ name: String, _ values: [some CMessageConvertible]) {
        guard !values.isEmpty else { return }
        let field = self.field(name)
        let array = self.arena.allocate(bytes: MemoryLayout<UnsafeMutableRawPointer?>.stride * values.count)
            .assumingMemoryBound(to: UnsafeMutableRawPointer?.self)
        for (index, value) in values.enumerated() { array[index] = self.build(value, field: field) }
        self.setRepeated(field, count: values.count, array: UnsafeMutableRawPointer(array))
    }

    private func setRepeated(_ field: UnsafePointer<ProtobufCFieldDescriptor>, count: Int, array: UnsafeMutableRawPointer) {
        precondition(field.pointee.label == PROTOBUF_C_LABEL_REPEATED, "field is not repeated")
        (self.message + Int(field.pointee.quantifier_offset)).assumingMemoryBound(to: Int.self).pointee = count
        self.slot(field, UnsafeMutableRawPointer?.self).pointee = array
    }

    private func build(_ value: some CMessageConvertible, field: UnsafePointer<ProtobufCFieldDescriptor>) -> UnsafeMutableRawPointer {
        precondition(field.pointee.type == PROTOBUF_C_TYPE_MESSAGE, "field is not a message")
        let descriptor = field.pointee.descriptor.assumingMemoryBound(to: ProtobufCMessageDescriptor.self)
        let writer = CMessageWriter(descriptor: descriptor, arena: self.arena)
        value.write(to: writer)
        return writer.message
    }
}

/// Reads Swift values out of one decoded C message, looking fields up by proto name.
final class CMessageReader {
    let descriptor: UnsafePointer<ProtobufCMessageDescriptor>
    let message: UnsafeRawPointer

    init(descriptor: UnsafePointer<ProtobufCMessageDescriptor>, message: UnsafeRawPointer) {
        self.descriptor = descriptor
        self.message = message
    }

    private func field(_ name: String) -> UnsafePointer<ProtobufCFieldDescriptor> {
        guard let field = protobuf_c_message_descriptor_get_field_by_name(self.descriptor, name) else {
            preconditionFailure("no field \(name) in \(String(cString: self.descriptor.pointee.name))")
        }
        return field
    }

    private func value<T>(_ name: String, _ type: T.Type) -> T {
        let field = self.field(name)
        return (self.message + Int(field.pointee.offset)).assumingMemoryBound(to: T.self).pointee
    }

    func uint64(_ name: String) -> UInt64 { self.value(name, UInt64.self) }
    func int64(_ name: String) -> Int64 { self.value(name, Int64.self) }
    func uint32(_ name: String) -> UInt32 { self.value(name, UInt32.self) }
    func int32(_ name: String) -> Int32 { self.value(name, Int32.self) }
    func float(_ name: String) -> Float { self.value(name, Float.self) }
    func bool(_ name: String) -> Bool { self.value(name, protobuf_c_boolean.self) != 0 }

    func string(_ name: String) -> String {
        guard let pointer = self.value(name, UnsafePointer<CChar>?.self) else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: pointer, count: strlen(pointer)), as: UTF8.self)
    }

    func message<T: CMessageConvertible>(_ name: String, as type: T.Type = T.self) throws(ProtoDecodingError) -> T? {
        let field = self.field(name)
        guard let pointer = (self.message + Int(field.pointee.offset)).assumingMemoryBound(to: UnsafeRawPointer?.self).pointee
        else { return nil }
        return try T(from: self.subReader(field, pointer))
    }

    /// The proto name of the oneof member that is set, given any member of the oneof.
    func oneofCase(_ anyMemberName: String) -> String? {
        let member = self.field(anyMemberName)
        let caseNumber = (self.message + Int(member.pointee.quantifier_offset)).assumingMemoryBound(to: UInt32.self).pointee
        guard caseNumber != 0,
            let field = protobuf_c_message_descriptor_get_field(self.descriptor, UInt32(caseNumber))
        else { return nil }
        return String(cString: field.pointee.name)
    }

    private func repeated<T>(_ name: String, element: T.Type) -> (UnsafePointer<ProtobufCFieldDescriptor>, UnsafeBufferPointer<T>) {
        let field = self.field(name)
        let count = (self.message + Int(field.pointee.quantifier_offset)).assumingMemoryBound(to: Int.self).pointee
        let start = (self.message + Int(field.pointee.offset)).assumingMemoryBound(to: UnsafePointer<T>?.self).pointee
        return (field, UnsafeBufferPointer(start: count > 0 ? start : nil, count: start == nil ? 0 : count))
    }

    func strings(_ name: String) -> [String] {
        self.repeated(name, element: UnsafePointer<CChar>?.self).1.map { pointer in
            guard let pointer else { return "" }
            return String(decoding: UnsafeRawBufferPointer(start: pointer, count: strlen(pointer)), as: UTF8.self)
        }
    }

    func uint32s(_ name: String) -> [UInt32] {
        Array(self.repeated(name, element: UInt32.self).1)
    }

    func messages<T: CMessageConvertible>(_ name: String, as type: T.Type = T.self) throws(ProtoDecodingError) -> [T] {
        let (field, pointers) = self.repeated(name, element: UnsafeRawPointer?.self)
        var result: [T] = []
        result.reserveCapacity(pointers.count)
        for pointer in pointers {
            guard let pointer else { throw .invalidMessage("null element in repeated field \(name)") }
            result.append(try T(from: self.subReader(field, pointer)))
        }
        return result
    }

    private func subReader(_ field: UnsafePointer<ProtobufCFieldDescriptor>, _ pointer: UnsafeRawPointer) -> CMessageReader {
        CMessageReader(
            descriptor: field.pointee.descriptor.assumingMemoryBound(to: ProtobufCMessageDescriptor.self),
            message: pointer
        )
    }
}

/// Serializes and parses top-level messages through protobuf-c.
enum CMessageCodec {
    static func encode(_ value: some CMessageConvertible, descriptor: UnsafePointer<ProtobufCMessageDescriptor>) -> [UInt8] {
        let arena = CArena()
        let writer = CMessageWriter(descriptor: descriptor, arena: arena)
        value.write(to: writer)
        let message = writer.message.assumingMemoryBound(to: ProtobufCMessage.self)
        let size = protobuf_c_message_get_packed_size(message)
        return [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
            initialized = protobuf_c_message_pack(message, buffer.baseAddress)
        }
    }

    static func decode<T: CMessageConvertible>(
        _ type: T.Type,
        from bytes: some Collection<UInt8>,
        descriptor: UnsafePointer<ProtobufCMessageDescriptor>
    ) throws(ProtoDecodingError) -> T {
        let contiguous = Array(bytes)
        let unpacked = contiguous.withUnsafeBufferPointer { buffer in
            protobuf_c_message_unpack(descriptor, nil, buffer.count, buffer.baseAddress)
        }
        guard let unpacked else {
            throw .invalidMessage("\(contiguous.count) bytes are not a valid \(String(cString: descriptor.pointee.name))")
        }
        defer { protobuf_c_message_free_unpacked(unpacked, nil) }
        return try T(from: CMessageReader(descriptor: descriptor, message: UnsafeRawPointer(unpacked)))
    }
}

extension CMessageReader {
    /// The set member of a oneof (present by construction once `oneofCase` named it).
    func member<T: CMessageConvertible>(_ name: String, as type: T.Type = T.self) throws(ProtoDecodingError) -> T {
        guard let value = try self.message(name, as: T.self) else {
            throw .invalidMessage("oneof member \(name) is set but empty")
        }
        return value
    }
}
