import Foundation
import LorikeetProto
import Testing

@Suite("Framed connections over a real Unix socket")
struct TransportTests {
    @Test("messages cross a socket both ways; garbage closes the reader with a typed error")
    func socketRoundTrip() throws {
        let path = NSTemporaryDirectory() + "lk-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let listener = try UnixSocket.listen(path: path)
        defer {
            close(listener)
            unlink(path)
        }
        var info = stat()
        #expect(stat(path, &info) == 0 && info.st_mode & 0o777 == 0o600)

        let client = FramedConnection<EngineEnvelope>(fd: try UnixSocket.connect(path: path))
        let server = FramedConnection<EngineEnvelope>(fd: try UnixSocket.accept(listener: listener))
        #expect(try UnixSocket.peerUID(server.fd) == getuid())
        for envelope in Samples.engineEnvelopes { try client.send(envelope) }
        for envelope in Samples.engineEnvelopes { #expect(try server.receive() == envelope) }
        try server.send(Samples.engineEnvelopes[2])
        #expect(try client.receive() == Samples.engineEnvelopes[2])

        // A raw peer writes a frame with a bad flag: the reader gets a typed error.
        let raw = try UnixSocket.connect(path: path)
        let victim = FramedConnection<EngineEnvelope>(fd: try UnixSocket.accept(listener: listener))
        _ = [UInt8]([7, 0, 0, 0, 0]).withUnsafeBytes { write(raw, $0.baseAddress, $0.count) }
        #expect(throws: TransportError.frame(.unsupportedFlag(7))) { try victim.receive() }
        close(raw)

        client.close()
        #expect(try server.receive() == nil)
    }
}
