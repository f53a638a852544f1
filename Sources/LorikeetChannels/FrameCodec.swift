package import LorikeetProto
package import NIOCore

/// SwiftNIO decoder of the channels' frame format (`Frame`: 1 flag byte 0 + 4-byte
/// big-endian length + one envelope), yielding parsed envelopes.
///
/// Frames may be split across reads and many may arrive in one; the header is checked
/// (`Frame.payloadLength`, the rules `FrameDecoder` uses) before the payload is buffered,
/// so memory stays bounded by the limit. A bad frame (flag, length, protobuf) throws a
/// `FrameError`: `ByteToMessageHandler` then fires it as an error and stops decoding, and
/// `FramedCallHandler` closes the channel with the reason logged. A stream that ends inside
/// a frame is `FrameError.truncated`.
package struct FrameMessageDecoder<Message: WireMessage>: ByteToMessageDecoder {
    package typealias InboundOut = Message

    /// Largest payload accepted (`Limits.channelFrameBytes` unless a test says otherwise).
    package let maximumFrameSize: Int

    package init(maximumFrameSize: Int = Frame.defaultMaximumSize) {
        self.maximumFrameSize = maximumFrameSize
    }

    package mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let message = try self.next(from: &buffer) else { return .needMoreData }
        context.fireChannelRead(NIOAny(message))
        return .continue
    }

    package mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        if let message = try self.next(from: &buffer) {
            context.fireChannelRead(NIOAny(message))
            return .continue
        }
        if buffer.readableBytes > 0 { throw FrameError.truncated(bufferedBytes: buffer.readableBytes) }
        return .needMoreData
    }

    /// The next complete message in `buffer` (consumed), or nil when more bytes are needed.
    /// Pure: usable on a plain `ByteBuffer` without a channel.
    package func next(from buffer: inout ByteBuffer) throws(FrameError) -> Message? {
        let start = buffer.readerIndex
        guard let flag = buffer.getInteger(at: start, as: UInt8.self),
            let length = buffer.getInteger(at: start + 1, as: UInt32.self)
        else { return nil }
        let payloadLength = try Frame.payloadLength(flag: flag, length: length, maximumFrameSize: self.maximumFrameSize)
        guard buffer.readableBytes >= Frame.headerSize + payloadLength else { return nil }
        buffer.moveReaderIndex(forwardBy: Frame.headerSize)
        let payload = buffer.readSlice(length: payloadLength)!
        do {
            return try Message(serializedBytes: payload.readableBytesView)
        } catch {
            throw .invalidMessage(error)
        }
    }
}

/// SwiftNIO encoder of the channels' frame format: one envelope, one frame.
///
/// A message whose payload exceeds the limit is never written: the write's promise fails
/// with `FrameError.frameTooLarge` and nothing else happens, so the channel (and every
/// other call on it) carries on. This is a plain outbound handler rather than a
/// `MessageToByteEncoder` because `MessageToByteHandler` turns any encoding error into a
/// permanent error state for the channel, and here an oversized message is the caller's
/// error alone.
package final class FrameMessageEncoder<Message: WireMessage>: ChannelOutboundHandler {
    package typealias OutboundIn = Message
    package typealias OutboundOut = ByteBuffer

    /// Largest payload written (the same limit as the peer's decoder).
    package let maximumFrameSize: Int

    package init(maximumFrameSize: Int = Frame.defaultMaximumSize) {
        self.maximumFrameSize = maximumFrameSize
    }

    package func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let message = Self.unwrapOutboundIn(data)
        do {
            let frame = try Self.encode(message, maximumFrameSize: self.maximumFrameSize, allocator: context.channel.allocator)
            context.write(Self.wrapOutboundOut(frame), promise: promise)
        } catch {
            promise?.fail(error)
        }
    }

    /// The frame carrying `message`; throws `.frameTooLarge` above the limit. Pure.
    package static func encode(_ message: Message, maximumFrameSize: Int, allocator: ByteBufferAllocator) throws(FrameError) -> ByteBuffer {
        let payload = message.serializedBytes()
        guard payload.count <= maximumFrameSize else {
            throw .frameTooLarge(length: UInt32(clamping: payload.count), maximum: maximumFrameSize)
        }
        var buffer = allocator.buffer(capacity: Frame.headerSize + payload.count)
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(UInt32(payload.count))
        buffer.writeBytes(payload)
        return buffer
    }
}

@available(*, unavailable)
extension FrameMessageEncoder: Sendable {}
