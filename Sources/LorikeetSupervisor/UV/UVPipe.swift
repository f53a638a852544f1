import CLibUV
import Glibc
import LorikeetProto

/// A byte stream over a Unix socket fd (a control socketpair end or an accepted admin
/// connection). Reads are delivered as byte arrays; writes copy their bytes.
final class UVPipe: UVHandle {
    private var onData: (([UInt8]) -> Void)?
    private var onEnd: ((UVError?) -> Void)?

    private var stream: UnsafeMutablePointer<uv_stream_t> { self.raw.assumingMemoryBound(to: uv_stream_t.self) }
    private var pipe: UnsafeMutablePointer<uv_pipe_t> { self.raw.assumingMemoryBound(to: uv_pipe_t.self) }

    init(loop: UVLoop) {
        super.init(type: UV_NAMED_PIPE)
        uv_pipe_init(loop.loop, self.pipe, 0)
        self.register()
    }

    /// Wraps an existing connected socket fd (takes ownership).
    convenience init(loop: UVLoop, fd: Int32) throws(UVError) {
        self.init(loop: loop)
        let result = uv_pipe_open(self.pipe, fd)
        if result < 0 {
            self.close()
            throw UVError(code: result, call: "uv_pipe_open")
        }
    }

    /// Starts reading; `onEnd` gets nil at EOF, or the error.
    func startReading(onData: @escaping ([UInt8]) -> Void, onEnd: @escaping (UVError?) -> Void) {
        self.onData = onData
        self.onEnd = onEnd
        uv_read_start(
            self.stream,
            { _, suggested, buffer in
                buffer?.pointee.base = malloc(suggested)?.assumingMemoryBound(to: CChar.self)
                buffer?.pointee.len = buffer?.pointee.base == nil ? 0 : suggested
            },
            { stream, count, buffer in
                defer { free(buffer?.pointee.base) }
                guard let pipe = UVHandle.wrapper(UnsafeMutableRawPointer(stream), as: UVPipe.self) else { return }
                if count > 0, let base = buffer?.pointee.base {
                    pipe.onData?(Array(UnsafeRawBufferPointer(start: base, count: count)))
                } else if count < 0 {
                    pipe.finish(count == Int(UV_EOF.rawValue) ? nil : UVError(code: Int32(count), call: "read"))
                }
            })
    }

    private func finish(_ error: UVError?) {
        let onEnd = self.onEnd
        self.onData = nil
        self.onEnd = nil
        if !self.isClosed { uv_read_stop(self.stream) }
        onEnd?(error)
    }

    /// Queues bytes for writing. Failures surface as a read error / EOF on the stream.
    func write(_ bytes: [UInt8]) {
        guard !self.isClosed, !bytes.isEmpty else { return }
        let request = UnsafeMutableRawPointer.allocate(byteCount: uv_req_size(UV_WRITE), alignment: 16)
            .assumingMemoryBound(to: uv_write_t.self)
        let storage = UnsafeMutableRawPointer.allocate(byteCount: bytes.count, alignment: 1)
        bytes.withUnsafeBytes { storage.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        request.pointee.data = storage
        var buffer = uv_buf_init(storage.assumingMemoryBound(to: CChar.self), UInt32(bytes.count))
        let result = uv_write(request, self.stream, &buffer, 1) { request, _ in
            request?.pointee.data.deallocate()
            UnsafeMutableRawPointer(request)?.deallocate()
        }
        if result < 0 {
            storage.deallocate()
            UnsafeMutableRawPointer(request).deallocate()
        }
    }

    override func close() {
        self.onData = nil
        self.onEnd = nil
        super.close()
    }

    /// Accepts a pending connection from a listening pipe into this (fresh) pipe.
    fileprivate func accept(from server: UnsafeMutablePointer<uv_stream_t>) -> Bool {
        uv_accept(server, self.stream) == 0
    }

    /// The connected socket's fd.
    var fileDescriptor: Int32 {
        var fd: uv_os_fd_t = -1
        uv_fileno(self.handle, &fd)
        return fd
    }
}

/// A listening Unix socket (the admin socket).
final class UVPipeServer: UVHandle {
    private let loop: UVLoop
    private var onConnection: ((UVPipe) -> Void)?

    /// Binds `path` with `mode` set at creation (bind under `umask(~mode)`, no chmod
    /// after bind), after removing a stale socket of ours there; anything else at `path`
    /// (a file, a symlink, someone else's socket) is refused (`UnixSocket.removeStaleSocket`).
    init(loop: UVLoop, path: String, mode: mode_t) throws(any Error) {
        self.loop = loop
        super.init(type: UV_NAMED_PIPE)
        uv_pipe_init(loop.loop, self.raw.assumingMemoryBound(to: uv_pipe_t.self), 0)
        self.register()
        do {
            try UnixSocket.removeStaleSocket(path: path)
        } catch {
            self.close()
            throw error
        }
        let bound = UnixSocket.withUmask(for: UInt32(mode)) {
            uv_pipe_bind(self.raw.assumingMemoryBound(to: uv_pipe_t.self), path)
        }
        if bound < 0 {
            self.close()
            throw UVError(code: bound, call: "bind \(path)")
        }
    }

    func listen(_ onConnection: @escaping (UVPipe) -> Void) throws(UVError) {
        self.onConnection = onConnection
        try UVError.check(
            uv_listen(self.raw.assumingMemoryBound(to: uv_stream_t.self), 64) { server, status in
                guard status == 0, let server = UVHandle.wrapper(UnsafeMutableRawPointer(server), as: UVPipeServer.self)
                else { return }
                let client = UVPipe(loop: server.loop)
                if client.accept(from: server.raw.assumingMemoryBound(to: uv_stream_t.self)) {
                    server.onConnection?(client)
                } else {
                    client.close()
                }
            }, "listen")
    }

    override func close() {
        self.onConnection = nil
        super.close()
    }
}
