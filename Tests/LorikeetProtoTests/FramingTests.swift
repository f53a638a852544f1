import LorikeetProto
import Testing

@Suite("Frame decoder")
struct FramingTests {
    static let messages = Array(Samples.controlEnvelopes.prefix(3).dropFirst()) + [Samples.controlEnvelopes[5]]
    static var stream: [UInt8] { Self.messages.flatMap { Frame.encode($0) } }

    @Test("a 3-frame stream split at every byte boundary decodes to the same frames")
    func everySplit() throws {
        let stream = Self.stream
        for split in 0...stream.count {
            var decoder = MessageDecoder<ControlEnvelope>()
            var decoded: [ControlEnvelope] = []
            decoder.feed(stream[0..<split])
            while let message = try decoder.next() { decoded.append(message) }
            decoder.feed(stream[split...])
            while let message = try decoder.next() { decoded.append(message) }
            try decoder.finish()
            #expect(decoded == Self.messages, "split at \(split)")
        }
    }

    @Test("a stream fed one byte at a time decodes")
    func byteAtATime() throws {
        var decoder = MessageDecoder<ControlEnvelope>()
        var decoded: [ControlEnvelope] = []
        for byte in Self.stream {
            decoder.feed([byte])
            while let message = try decoder.next() { decoded.append(message) }
        }
        #expect(decoded == Self.messages)
    }

    @Test("1000 frames in one buffer")
    func thousandFrames() throws {
        var bytes: [UInt8] = []
        for index in 0..<1000 {
            bytes += Frame.encode(ControlEnvelope(callID: UInt64(index), body: .heartbeat(Heartbeat(seq: UInt64(index)))))
        }
        var decoder = MessageDecoder<ControlEnvelope>()
        decoder.feed(bytes)
        var seqs: [UInt64] = []
        while let message = try decoder.next() {
            guard case .heartbeat(let beat) = message.body else {
                Issue.record("wrong body")
                continue
            }
            seqs.append(beat.seq)
        }
        #expect(seqs == Array(0..<1000))
        #expect(decoder.bufferedByteCount == 0)
    }

    @Test("a zero-length frame is an empty message")
    func emptyFrame() throws {
        var decoder = MessageDecoder<ControlEnvelope>()
        decoder.feed([0, 0, 0, 0, 0])
        #expect(try decoder.next() == ControlEnvelope(body: nil))
    }

    @Test("length = max + 1 is rejected before reading the body")
    func tooLarge() {
        var decoder = FrameDecoder(maximumFrameSize: 1024)
        decoder.feed([0, 0, 0, 0x04, 0x01])
        #expect(throws: FrameError.frameTooLarge(length: 1025, maximum: 1024)) { try decoder.nextPayload() }
        // The decoder stays failed.
        decoder.feed([1, 2, 3])
        #expect(throws: FrameError.frameTooLarge(length: 1025, maximum: 1024)) { try decoder.nextPayload() }
    }

    @Test("length = 0xFFFFFFFF with the default maximum is rejected without allocating")
    func hugeLength() {
        var decoder = FrameDecoder()
        decoder.feed([0, 0xFF, 0xFF, 0xFF, 0xFF])
        #expect(throws: FrameError.frameTooLarge(length: 0xFFFF_FFFF, maximum: Frame.defaultMaximumSize)) {
            try decoder.nextPayload()
        }
        #expect(decoder.bufferedByteCount == 0)
    }

    @Test("length = max is accepted")
    func exactlyMax() throws {
        var decoder = FrameDecoder(maximumFrameSize: 4)
        decoder.feed([0, 0, 0, 0, 4, 9, 9, 9, 9])
        #expect(try decoder.nextPayload() == [9, 9, 9, 9])
    }

    @Test("unknown flags are rejected", arguments: [UInt8(1), 2, 128, 255])
    func flags(_ flag: UInt8) {
        var decoder = FrameDecoder()
        decoder.feed([flag, 0, 0, 0, 1, 0])
        #expect(throws: FrameError.unsupportedFlag(flag)) { try decoder.nextPayload() }
    }

    @Test("a garbage payload is an invalid-message error")
    func garbagePayload() {
        var decoder = MessageDecoder<EngineEnvelope>()
        decoder.feed(Frame.encode([0xFF, 0xFF, 0xFF]))
        #expect {
            try decoder.next()
        } throws: { error in
            guard case FrameError.invalidMessage = error else { return false }
            return true
        }
    }

    @Test("EOF mid-header and mid-body are truncation errors")
    func truncated() throws {
        let frame = Frame.encode(Samples.controlEnvelopes[4])
        for cut in [1, 3, 4, 5, frame.count - 1] {
            var decoder = MessageDecoder<ControlEnvelope>()
            decoder.feed(frame[0..<cut])
            #expect(try decoder.next() == nil)
            #expect(throws: FrameError.truncated(bufferedBytes: cut)) { try decoder.finish() }
        }
        var clean = MessageDecoder<ControlEnvelope>()
        clean.feed(frame)
        _ = try clean.next()
        try clean.finish()
    }

    @Test("frame errors have messages that say what was wrong")
    func messages() {
        #expect(FrameError.frameTooLarge(length: 9, maximum: 4).description.contains("exceeds the maximum of 4 bytes"))
        #expect(FrameError.unsupportedFlag(3).description.contains("unsupported frame flag 3"))
    }
}
