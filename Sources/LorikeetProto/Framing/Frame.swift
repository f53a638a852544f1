/// Why a byte stream is not a valid sequence of frames. Each is fatal for the
/// connection it came from: the reader logs the reason and closes it.
package enum FrameError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The length prefix exceeds the configured maximum frame size.
    case frameTooLarge(length: UInt32, maximum: Int)
    /// The flag byte is not 0 (compression and other flags are not supported).
    case unsupportedFlag(UInt8)
    /// The stream ended inside a frame.
    case truncated(bufferedBytes: Int)
    /// The frame's payload is not a valid message of the channel.
    case invalidMessage(ProtoDecodingError)

    package var description: String {
        switch self {
        case .frameTooLarge(let length, let maximum):
            return "frame of \(length) bytes exceeds the maximum of \(maximum) bytes"
        case .unsupportedFlag(let flag):
            return "unsupported frame flag \(flag) (only 0 = uncompressed is valid)"
        case .truncated(let buffered):
            return "stream ended inside a frame (\(buffered) bytes buffered)"
        case .invalidMessage(let error):
            return "frame payload rejected: \(error)"
        }
    }
}

/// gRPC-style framing shared by every channel: 1 flag byte (0) + 4-byte big-endian
/// length + payload.
package enum Frame {
    /// Bytes before the payload.
    package static let headerSize = 5
    /// Default maximum payload size of every channel (`Limits.channelFrameBytes`).
    package static let defaultMaximumSize = Limits.channelFrameBytes

    /// The frame carrying `payload`.
    package static func encode(_ payload: [UInt8]) -> [UInt8] {
        precondition(payload.count <= Int(UInt32.max), "payload too large to frame")
        var bytes: [UInt8] = []
        bytes.reserveCapacity(payload.count + Self.headerSize)
        let length = UInt32(payload.count)
        bytes.append(0)
        bytes.append(UInt8(truncatingIfNeeded: length >> 24))
        bytes.append(UInt8(truncatingIfNeeded: length >> 16))
        bytes.append(UInt8(truncatingIfNeeded: length >> 8))
        bytes.append(UInt8(truncatingIfNeeded: length))
        bytes.append(contentsOf: payload)
        return bytes
    }

    /// The frame carrying a serialized message.
    package static func encode(_ message: some WireMessage) -> [UInt8] {
        Self.encode(message.serializedBytes())
    }

    /// Checks a frame header (the flag byte and the big-endian length that follows it) and
    /// returns the payload length. Shared by every decoder of the format (the blocking
    /// `FrameDecoder` here, the SwiftNIO decoder in `LorikeetChannels`), so the rules live
    /// in one place: flag 0 only, length at most `maximumFrameSize`.
    package static func payloadLength(flag: UInt8, length: UInt32, maximumFrameSize: Int) throws(FrameError) -> Int {
        guard flag == 0 else { throw .unsupportedFlag(flag) }
        guard UInt64(length) <= UInt64(maximumFrameSize) else {
            throw .frameTooLarge(length: length, maximum: maximumFrameSize)
        }
        return Int(length)
    }
}

/// Incremental frame decoder: feed it bytes as they arrive (frames may be split
/// across reads, many may arrive in one), take complete payloads out.
///
/// Memory is bounded: a length prefix above `maximumFrameSize` is rejected before any
/// allocation, and consumed bytes are discarded.
package struct FrameDecoder: Sendable {
    package let maximumFrameSize: Int
    private var buffer: [UInt8] = []
    private var readIndex = 0
    private var failed: FrameError?

    package init(maximumFrameSize: Int = Frame.defaultMaximumSize) {
        self.maximumFrameSize = maximumFrameSize
    }

    /// Bytes received but not yet returned as a payload.
    package var bufferedByteCount: Int { self.buffer.count - self.readIndex }

    /// Appends received bytes.
    package mutating func feed(_ bytes: some Sequence<UInt8>) {
        self.buffer.append(contentsOf: bytes)
    }

    /// The next complete payload, or nil when more bytes are needed.
    /// After an error the decoder stays failed: the connection must be closed.
    package mutating func nextPayload() throws(FrameError) -> [UInt8]? {
        if let failed = self.failed { throw failed }
        guard self.bufferedByteCount >= Frame.headerSize else { return nil }
        let start = self.readIndex
        var length: UInt32 = 0
        for offset in 1...4 { length = length << 8 | UInt32(self.buffer[start + offset]) }
        let payloadLength: Int
        do {
            payloadLength = try Frame.payloadLength(flag: self.buffer[start], length: length, maximumFrameSize: self.maximumFrameSize)
        } catch {
            return try self.fail(error)
        }
        let total = Frame.headerSize + payloadLength
        guard self.bufferedByteCount >= total else { return nil }
        let payload = Array(self.buffer[(start + Frame.headerSize)..<(start + total)])
        self.readIndex += total
        self.compact()
        return payload
    }

    /// Call at end of stream: throws when the stream ended inside a frame.
    package func finish() throws(FrameError) {
        if let failed = self.failed { throw failed }
        if self.bufferedByteCount > 0 { throw .truncated(bufferedBytes: self.bufferedByteCount) }
    }

    private mutating func fail(_ error: FrameError) throws(FrameError) -> [UInt8]? {
        self.failed = error
        self.buffer = []
        self.readIndex = 0
        throw error
    }

    private mutating func compact() {
        if self.readIndex == self.buffer.count {
            self.buffer.removeAll(keepingCapacity: self.buffer.count <= 64 * 1024)
            self.readIndex = 0
        } else if self.readIndex > 64 * 1024 && self.readIndex * 2 > self.buffer.count {
            self.buffer.removeFirst(self.readIndex)
            self.readIndex = 0
        }
    }
}

/// Frame decoder that also parses each payload as the channel's envelope type.
package struct MessageDecoder<Message: WireMessage>: Sendable {
    private var frames: FrameDecoder

    package init(maximumFrameSize: Int = Frame.defaultMaximumSize) {
        self.frames = FrameDecoder(maximumFrameSize: maximumFrameSize)
    }

    package var bufferedByteCount: Int { self.frames.bufferedByteCount }

    package mutating func feed(_ bytes: some Sequence<UInt8>) { self.frames.feed(bytes) }

    /// The next complete message, or nil when more bytes are needed.
    package mutating func next() throws(FrameError) -> Message? {
        guard let payload = try self.frames.nextPayload() else { return nil }
        do {
            return try Message(serializedBytes: payload)
        } catch {
            throw .invalidMessage(error)
        }
    }

    /// Call at end of stream.
    package func finish() throws(FrameError) { try self.frames.finish() }
}
