import Glibc
import Synchronization

/// A blocking, thread-safe framed connection over a socket fd, carrying one envelope
/// type. Sends may come from any thread (serialized by a lock); `receive()` is meant
/// for one reader thread.
package final class FramedConnection<Message: WireMessage>: Sendable {
    package let fd: Int32
    private let writeLock = Mutex<Void>(())
    private let decoder: Mutex<MessageDecoder<Message>>
    private let isClosed = Atomic<Bool>(false)
    /// Largest payload accepted and sent (the channel's limit, the same at both ends).
    package let maximumFrameSize: Int

    /// Takes ownership of `fd`.
    package init(fd: Int32, maximumFrameSize: Int = Frame.defaultMaximumSize) {
        self.fd = fd
        self.maximumFrameSize = maximumFrameSize
        self.decoder = Mutex(MessageDecoder(maximumFrameSize: maximumFrameSize))
    }

    deinit { Glibc.close(self.fd) }

    /// Sends one message as one frame. A message larger than the channel's limit is not
    /// sent at all (`.frame(.frameTooLarge)`): the peer would have to drop the connection,
    /// so the error belongs to this message alone and the connection stays usable.
    package func send(_ message: Message) throws(TransportError) {
        let payload = message.serializedBytes()
        guard payload.count <= self.maximumFrameSize else {
            throw .frame(.frameTooLarge(length: UInt32(clamping: payload.count), maximum: self.maximumFrameSize))
        }
        let bytes = Frame.encode(payload)
        let result: TransportError? = self.writeLock.withLock { _ in
            var offset = 0
            while offset < bytes.count {
                let written = bytes.withUnsafeBytes { raw in
                    Glibc.send(self.fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                }
                if written < 0 {
                    if errno == EINTR { continue }
                    return .system(call: "send", errno: errno)
                }
                offset += written
            }
            return nil
        }
        if let result { throw result }
    }

    /// The next message; nil at a clean end of stream. Throws on a bad frame or a
    /// stream that ends inside a frame.
    package func receive() throws(TransportError) -> Message? {
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let next: Result<Message?, FrameError> = self.decoder.withLock { decoder in
                Result { () throws(FrameError) -> Message? in try decoder.next() }
            }
            switch next {
            case .success(.some(let message)): return message
            case .failure(let error): throw .frame(error)
            case .success(.none): break
            }
            let count = chunk.withUnsafeMutableBytes { recv(self.fd, $0.baseAddress, $0.count, 0) }
            if count < 0 {
                if errno == EINTR { continue }
                if self.isClosed.load(ordering: .relaxed) { return nil }
                throw .system(call: "recv", errno: errno)
            }
            if count == 0 {
                let finished: FrameError? = self.decoder.withLock { decoder in
                    Result { () throws(FrameError) in try decoder.finish() }.error
                }
                if let finished { throw .frame(finished) }
                return nil
            }
            self.decoder.withLock { $0.feed(chunk[0..<count]) }
        }
    }

    /// Shuts the socket down, waking a blocked reader (which then returns nil). The fd
    /// itself is closed when the connection is released, so it is never reused under a
    /// reader that still holds it.
    package func close() {
        if self.isClosed.exchange(true, ordering: .acquiringAndReleasing) == false {
            shutdown(self.fd, Int32(SHUT_RDWR))
        }
    }
}

extension Result {
    fileprivate var error: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}
