import LorikeetChannels
import LorikeetProto
import NIOCore
import NIOEmbedded
import Synchronization
import Testing

/// The SwiftNIO frame codec on byte buffers (`EmbeddedChannel`, no sockets).
@Suite struct FrameCodecTests {
    static func envelope(_ id: UInt64, _ text: String = "x") -> EngineEnvelope {
        EngineEnvelope(callID: id, body: .abort(AbortRequest(requestID: text)))
    }

    static func decoderChannel(maximum: Int = Frame.defaultMaximumSize) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(
            ByteToMessageHandler(FrameMessageDecoder<EngineEnvelope>(maximumFrameSize: maximum)))
        return channel
    }

    static func buffer(_ bytes: [UInt8]) -> ByteBuffer { ByteBuffer(bytes: bytes) }

    @Test func frameSplitAcrossReads() throws {
        let channel = try Self.decoderChannel()
        let bytes = Frame.encode(Self.envelope(7, "split"))
        for byte in bytes.dropLast() {
            try channel.writeInbound(Self.buffer([byte]))
            #expect(try channel.readInbound(as: EngineEnvelope.self) == nil)
        }
        try channel.writeInbound(Self.buffer([bytes.last!]))
        #expect(try channel.readInbound(as: EngineEnvelope.self) == Self.envelope(7, "split"))
        #expect(try channel.finish().isClean)
    }

    @Test func manyFramesInOneRead() throws {
        let channel = try Self.decoderChannel()
        let envelopes = (1...50).map { Self.envelope(UInt64($0), "m\($0)") }
        // 50 frames and the first half of a 51st in one read, the rest in the next.
        let next = Frame.encode(Self.envelope(51))
        try channel.writeInbound(Self.buffer(envelopes.flatMap { Frame.encode($0) } + next.prefix(3)))
        for envelope in envelopes { #expect(try channel.readInbound(as: EngineEnvelope.self) == envelope) }
        #expect(try channel.readInbound(as: EngineEnvelope.self) == nil)
        try channel.writeInbound(Self.buffer(Array(next.dropFirst(3))))
        #expect(try channel.readInbound(as: EngineEnvelope.self) == Self.envelope(51))
    }

    @Test func emptyPayloadIsAnEmptyEnvelope() throws {
        let channel = try Self.decoderChannel()
        try channel.writeInbound(Self.buffer([0, 0, 0, 0, 0]))
        #expect(try channel.readInbound(as: EngineEnvelope.self) == EngineEnvelope(body: nil))
    }

    /// Hostile inbound bytes: each is a `FrameError` (the call handler closes the channel on it).
    @Test(
        arguments: [
            ([1, 0, 0, 0, 1, 0], FrameError.unsupportedFlag(1)),
            ([0, 0, 0, 0x10, 0x01], FrameError.frameTooLarge(length: 4097, maximum: 4096)),
            ([0, 0xff, 0xff, 0xff, 0xff], FrameError.frameTooLarge(length: UInt32.max, maximum: 4096)),
        ] as [([UInt8], FrameError)])
    func badHeaderIsRejectedBeforeBuffering(bytes: [UInt8], expected: FrameError) throws {
        let channel = try Self.decoderChannel(maximum: 4096)
        #expect(throws: expected) { try channel.writeInbound(Self.buffer(bytes)) }
    }

    @Test func undecodablePayloadIsRejected() throws {
        let channel = try Self.decoderChannel()
        // Field 1 (call_id) as a varint that never ends.
        let error = #expect(throws: FrameError.self) { try channel.writeInbound(Self.buffer([0, 0, 0, 0, 2, 0x08, 0xff])) }
        guard case .invalidMessage? = error else {
            Issue.record("expected invalidMessage, got \(String(describing: error))")
            return
        }
    }

    @Test func streamEndingInsideAFrameIsTruncated() throws {
        let channel = try Self.decoderChannel()
        try channel.writeInbound(Self.buffer(Array(Frame.encode(Self.envelope(1)).prefix(4))))
        #expect(throws: FrameError.truncated(bufferedBytes: 4)) { _ = try channel.finish() }
    }

    @Test func pureDecoderOnAByteBuffer() throws {
        var buffer = Self.buffer(Frame.encode(Self.envelope(1)) + Frame.encode(Self.envelope(2)))
        let decoder = FrameMessageDecoder<EngineEnvelope>()
        #expect(try decoder.next(from: &buffer) == Self.envelope(1))
        #expect(try decoder.next(from: &buffer) == Self.envelope(2))
        #expect(try decoder.next(from: &buffer) == nil)
        #expect(buffer.readableBytes == 0)
    }

    @Test func encoderWritesTheSameBytesAsFrameEncode() throws {
        let channel = EmbeddedChannel(handler: FrameMessageEncoder<EngineEnvelope>())
        try channel.writeOutbound(Self.envelope(9, "bytes"))
        let written = try channel.readOutbound(as: ByteBuffer.self)
        #expect(written.map { Array($0.readableBytesView) } == Frame.encode(Self.envelope(9, "bytes")))
    }

    /// An oversized message is never written: its write fails, the channel stays open and
    /// carries the next message.
    @Test func oversizedOutboundFailsTheWriteOnly() throws {
        let channel = EmbeddedChannel(handler: FrameMessageEncoder<EngineEnvelope>(maximumFrameSize: 64))
        try channel.connect(to: SocketAddress(unixDomainSocketPath: "/peer")).wait()
        let promise = channel.eventLoop.makePromise(of: Void.self)
        let large = Self.envelope(1, String(repeating: "a", count: 100))
        let length = UInt32(large.serializedBytes().count)
        let failure = Mutex<(any Error)?>(nil)
        promise.futureResult.whenFailure { error in failure.withLock { $0 = error } }
        channel.writeAndFlush(large, promise: promise)
        let error = failure.withLock { $0 } as? FrameError
        #expect(error == .frameTooLarge(length: length, maximum: 64))
        let nothingWritten = try channel.readOutbound(as: ByteBuffer.self) == nil
        #expect(nothingWritten)
        let active = channel.isActive
        #expect(active)
        try channel.writeOutbound(Self.envelope(2))
        #expect(try channel.readOutbound(as: ByteBuffer.self).map { Array($0.readableBytesView) } == Frame.encode(Self.envelope(2)))
    }

    /// Encoder into decoder: what one end writes, the other reads.
    @Test func roundTrip() throws {
        let envelopes: [EngineEnvelope] = [
            EngineEnvelope(callID: 1, deadlineUnixMs: 123, body: .health),
            EngineEnvelope(callID: 2, body: .generate(GenerateRequest(requestID: "r", promptTokens: [1, 2, 3]))),
            EngineEnvelope(callID: 3, body: .chunk(GenerateChunk(requestID: "r", tokens: [4], text: "é"))),
        ]
        var wire = ByteBuffer()
        for envelope in envelopes {
            var frame = try FrameMessageEncoder<EngineEnvelope>.encode(
                envelope, maximumFrameSize: Frame.defaultMaximumSize, allocator: ByteBufferAllocator())
            wire.writeBuffer(&frame)
        }
        let decoder = FrameMessageDecoder<EngineEnvelope>()
        for envelope in envelopes { #expect(try decoder.next(from: &wire) == envelope) }
    }
}
