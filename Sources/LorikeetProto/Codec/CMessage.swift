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
    let observer: ProtoFieldObserver?

    init(descriptor: UnsafePointer<ProtobufCMessageDescriptor>, arena: CArena, observer: ProtoFieldObserver? = nil) {
        self.arena = arena
        self.descriptor = descriptor
        self.observer = observer
        self.message = arena.allocate(bytes: Int(descriptor.pointee.sizeof_message))
        protobuf_c_message_init(descriptor, self.message)
    }

    /// The field `name`, checked to be stored as `kind` (`ProtoFieldAccess.check`); nil (and
    /// the access skipped) only when an observer collects the mismatch.
    private func field(_ name: String, _ kind: ProtoFieldKind, repeated: Bool = false) -> UnsafePointer<ProtobufCFieldDescriptor>? {
        ProtoFieldAccess.lookUp(name, in: self.descriptor, kind, repeated: repeated, direction: .write, observer: self.observer)
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
        guard let field = self.field(name, .uint64) else { return }
        self.slot(field, UInt64.self).pointee = value
    }

    func set(_ name: String, _ value: Int64) {
        guard let field = self.field(name, .int64) else { return }
        self.slot(field, Int64.self).pointee = value
    }

    func set(_ name: String, _ value: UInt32) {
        guard let field = self.field(name, .uint32) else { return }
        self.slot(field, UInt32.self).pointee = value
    }

    /// Sets an `int32` or enum field.
    func set(_ name: String, _ value: Int32) {
        guard let field = self.field(name, .int32) else { return }
        self.slot(field, Int32.self).pointee = value
    }

    func set(_ name: String, _ value: Float) {
        guard let field = self.field(name, .float) else { return }
        self.slot(field, Float.self).pointee = value
    }

    func set(_ name: String, _ value: Bool) {
        guard let field = self.field(name, .bool) else { return }
        self.slot(field, protobuf_c_boolean.self).pointee = value ? 1 : 0
    }

    func set(_ name: String, _ value: String) {
        guard !value.isEmpty else { return }
        guard let field = self.field(name, .string) else { return }
        self.slot(field, UnsafeMutablePointer<CChar>?.self).pointee = self.arena.duplicate(value)
        self.markOneof(field)
    }

    func set(_ name: String, _ value: (some CMessageConvertible)?) {
        guard let value else { return }
        guard let field = self.field(name, .message) else { return }
        self.slot(field, UnsafeMutableRawPointer?.self).pointee = self.build(value, field: field)
        self.markOneof(field)
    }

    func set(_ name: String, _ values: [String]) {
        guard !values.isEmpty else { return }
        guard let field = self.field(name, .string, repeated: true) else { return }
        let array = self.arena.allocate(bytes: MemoryLayout<UnsafeMutablePointer<CChar>?>.stride * values.count)
            .assumingMemoryBound(to: UnsafeMutablePointer<CChar>?.self)
        for (index, value) in values.enumerated() { array[index] = self.arena.duplicate(value) }
        self.setRepeated(field, count: values.count, array: UnsafeMutableRawPointer(array))
    }

    func set(_ name: String, _ values: [UInt32]) {
        guard !values.isEmpty else { return }
        guard let field = self.field(name, .uint32, repeated: true) else { return }
        let array = self.arena.allocate(bytes: MemoryLayout<UInt32>.stride * values.count)
            .assumingMemoryBound(to: UInt32.self)
        for (index, value) in values.enumerated() { array[index] = value }
        self.setRepeated(field, count: values.count, array: UnsafeMutableRawPointer(array))
    }

    func set(_ name: String, _ values: [some CMessageConvertible]) {
        guard !values.isEmpty else { return }
        guard let field = self.field(name, .message, repeated: true) else { return }
        let array = self.arena.allocate(bytes: MemoryLayout<UnsafeMutableRawPointer?>.stride * values.count)
            .assumingMemoryBound(to: UnsafeMutableRawPointer?.self)
        for (index, value) in values.enumerated() { array[index] = self.build(value, field: field) }
        self.setRepeated(field, count: values.count, array: UnsafeMutableRawPointer(array))
    }

    private func setRepeated(_ field: UnsafePointer<ProtobufCFieldDescriptor>, count: Int, array: UnsafeMutableRawPointer) {
        (self.message + Int(field.pointee.quantifier_offset)).assumingMemoryBound(to: Int.self).pointee = count
        self.slot(field, UnsafeMutableRawPointer?.self).pointee = array
    }

    private func build(_ value: some CMessageConvertible, field: UnsafePointer<ProtobufCFieldDescriptor>) -> UnsafeMutableRawPointer {
        let descriptor = field.pointee.descriptor.assumingMemoryBound(to: ProtobufCMessageDescriptor.self)
        let writer = CMessageWriter(descriptor: descriptor, arena: self.arena, observer: self.observer)
        value.write(to: writer)
        return writer.message
    }
}

/// Reads Swift values out of one decoded C message, looking fields up by proto name.
final class CMessageReader {
    let descriptor: UnsafePointer<ProtobufCMessageDescriptor>
    let message: UnsafeRawPointer
    let observer: ProtoFieldObserver?

    init(descriptor: UnsafePointer<ProtobufCMessageDescriptor>, message: UnsafeRawPointer, observer: ProtoFieldObserver? = nil) {
        self.descriptor = descriptor
        self.message = message
        self.observer = observer
    }

    /// The field `name`, checked to be stored as `kind` (`ProtoFieldAccess.check`); nil (and
    /// the access skipped) only when an observer collects the mismatch.
    private func field(_ name: String, _ kind: ProtoFieldKind, repeated: Bool = false) -> UnsafePointer<ProtobufCFieldDescriptor>? {
        ProtoFieldAccess.lookUp(name, in: self.descriptor, kind, repeated: repeated, direction: .read, observer: self.observer)
    }

    private func value<T>(_ name: String, _ kind: ProtoFieldKind, _ type: T.Type, default value: T) -> T {
        guard let field = self.field(name, kind) else { return value }
        return (self.message + Int(field.pointee.offset)).assumingMemoryBound(to: T.self).pointee
    }

    func uint64(_ name: String) -> UInt64 { self.value(name, .uint64, UInt64.self, default: 0) }
    func int64(_ name: String) -> Int64 { self.value(name, .int64, Int64.self, default: 0) }
    func uint32(_ name: String) -> UInt32 { self.value(name, .uint32, UInt32.self, default: 0) }
    func int32(_ name: String) -> Int32 { self.value(name, .int32, Int32.self, default: 0) }
    func float(_ name: String) -> Float { self.value(name, .float, Float.self, default: 0) }
    func bool(_ name: String) -> Bool { self.value(name, .bool, protobuf_c_boolean.self, default: 0) != 0 }

    func string(_ name: String) -> String {
        guard let pointer = self.value(name, .string, UnsafePointer<CChar>?.self, default: nil) else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: pointer, count: strlen(pointer)), as: UTF8.self)
    }

    func message<T: CMessageConvertible>(_ name: String, as type: T.Type = T.self) throws(ProtoDecodingError) -> T? {
        guard let field = self.field(name, .message) else { return nil }
        guard let pointer = (self.message + Int(field.pointee.offset)).assumingMemoryBound(to: UnsafeRawPointer?.self).pointee
        else { return nil }
        return try T(from: self.subReader(field, pointer))
    }

    /// The proto name of the oneof member that is set, given any member of the oneof.
    func oneofCase(_ anyMemberName: String) -> String? {
        guard let member = protobuf_c_message_descriptor_get_field_by_name(self.descriptor, anyMemberName) else {
            preconditionFailure("no field \(anyMemberName) in \(String(cString: self.descriptor.pointee.name))")
        }
        let caseNumber = (self.message + Int(member.pointee.quantifier_offset)).assumingMemoryBound(to: UInt32.self).pointee
        guard caseNumber != 0,
            let field = protobuf_c_message_descriptor_get_field(self.descriptor, UInt32(caseNumber))
        else { return nil }
        let name = String(cString: field.pointee.name)
        // Naming the case reads the member (empty messages are read by nothing else).
        if field.pointee.type == PROTOBUF_C_TYPE_MESSAGE { _ = self.field(name, .message) }
        return name
    }

    private func repeated<T>(
        _ name: String, _ kind: ProtoFieldKind, element: T.Type
    ) -> (UnsafePointer<ProtobufCFieldDescriptor>, UnsafeBufferPointer<T>)? {
        guard let field = self.field(name, kind, repeated: true) else { return nil }
        let count = (self.message + Int(field.pointee.quantifier_offset)).assumingMemoryBound(to: Int.self).pointee
        let start = (self.message + Int(field.pointee.offset)).assumingMemoryBound(to: UnsafePointer<T>?.self).pointee
        return (field, UnsafeBufferPointer(start: count > 0 ? start : nil, count: start == nil ? 0 : count))
    }

    func strings(_ name: String) -> [String] {
        (self.repeated(name, .string, element: UnsafePointer<CChar>?.self)?.1 ?? UnsafeBufferPointer(start: nil, count: 0)).map { pointer in
            guard let pointer else { return "" }
            return String(decoding: UnsafeRawBufferPointer(start: pointer, count: strlen(pointer)), as: UTF8.self)
        }
    }

    func uint32s(_ name: String) -> [UInt32] {
        Array(self.repeated(name, .uint32, element: UInt32.self)?.1 ?? UnsafeBufferPointer(start: nil, count: 0))
    }

    func messages<T: CMessageConvertible>(_ name: String, as type: T.Type = T.self) throws(ProtoDecodingError) -> [T] {
        guard let (field, pointers) = self.repeated(name, .message, element: UnsafeRawPointer?.self) else { return [] }
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
            message: pointer, observer: self.observer
        )
    }
}

/// Serializes and parses top-level messages through protobuf-c.
enum CMessageCodec {
    static func encode(
        _ value: some CMessageConvertible, descriptor: UnsafePointer<ProtobufCMessageDescriptor>, observer: ProtoFieldObserver? = nil
    ) -> [UInt8] {
        let arena = CArena()
        let writer = CMessageWriter(descriptor: descriptor, arena: arena, observer: observer)
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
        descriptor: UnsafePointer<ProtobufCMessageDescriptor>,
        observer: ProtoFieldObserver? = nil
    ) throws(ProtoDecodingError) -> T {
        let contiguous = Array(bytes)
        let unpacked = contiguous.withUnsafeBufferPointer { buffer in
            protobuf_c_message_unpack(descriptor, nil, buffer.count, buffer.baseAddress)
        }
        guard let unpacked else {
            throw .invalidMessage("\(contiguous.count) bytes are not a valid \(String(cString: descriptor.pointee.name))")
        }
        defer { protobuf_c_message_free_unpacked(unpacked, nil) }
        return try T(from: CMessageReader(descriptor: descriptor, message: UnsafeRawPointer(unpacked), observer: observer))
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
