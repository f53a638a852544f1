// The thin libuv layer: the only code that touches libuv handles and pointers.
// Every wrapper keeps itself alive through `handle->data` (a retained Unmanaged
// reference) from the moment the handle is initialized until libuv's close callback,
// where the retain is balanced and the handle memory freed.

import CLibUV
import Glibc

/// A libuv error code with libuv's message.
struct UVError: Error, CustomStringConvertible {
    let code: Int32
    let call: String
    var description: String { "\(self.call): \(String(cString: uv_strerror(self.code)))" }

    static func check(_ code: Int32, _ call: String) throws(UVError) {
        if code < 0 { throw UVError(code: code, call: call) }
    }
}

/// The event loop. Single-threaded: every wrapper is used on the thread that runs it.
final class UVLoop {
    let loop: UnsafeMutablePointer<uv_loop_t>

    init() {
        self.loop = UnsafeMutablePointer<uv_loop_t>.allocate(capacity: 1)
        uv_loop_init(self.loop)
    }

    /// Runs until no active handle remains or `stop()` is called.
    func run() { uv_run(self.loop, UV_RUN_DEFAULT) }

    func stop() { uv_stop(self.loop) }

    /// Milliseconds of the loop's monotonic clock.
    var nowMs: UInt64 { uv_now(self.loop) }

    /// Refreshes the loop's clock (`nowMs` is cached per loop iteration; before the loop
    /// runs, it is the time the loop was created).
    func updateTime() { uv_update_time(self.loop) }

    /// Closes all handles still open (used at exit) and runs their close callbacks.
    func closeAll() {
        uv_walk(
            self.loop,
            { handle, _ in
                guard let handle, uv_is_closing(handle) == 0, let data = handle.pointee.data else { return }
                Unmanaged<UVHandle>.fromOpaque(data).takeUnretainedValue().close()
            }, nil)
        uv_run(self.loop, UV_RUN_DEFAULT)
    }
}

/// Base class of the handle wrappers.
class UVHandle {
    let raw: UnsafeMutableRawPointer
    private(set) var isClosed = false
    private var isRegistered = false
    var onClose: (() -> Void)?

    init(type: uv_handle_type) {
        let size = uv_handle_size(type)
        self.raw = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        self.raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
    }

    var handle: UnsafeMutablePointer<uv_handle_t> { self.raw.assumingMemoryBound(to: uv_handle_t.self) }

    /// Call once the handle is initialized (or re-initialized by uv_spawn).
    func register() {
        if !self.isRegistered {
            self.isRegistered = true
            self.handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
        } else {
            self.handle.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        }
    }

    /// Closes the handle; memory is freed and the retain dropped in the close callback.
    func close() {
        guard !self.isClosed else { return }
        self.isClosed = true
        guard self.isRegistered else {
            self.raw.deallocate()
            return
        }
        uv_close(self.handle) { handle in
            guard let handle, let data = handle.pointee.data else { return }
            let wrapper = Unmanaged<UVHandle>.fromOpaque(data).takeRetainedValue()
            wrapper.onClose?()
            wrapper.onClose = nil
            wrapper.raw.deallocate()
        }
    }

    static func wrapper<T: UVHandle>(_ pointer: UnsafeMutableRawPointer?, as type: T.Type) -> T? {
        guard let pointer else { return nil }
        guard let data = pointer.assumingMemoryBound(to: uv_handle_t.self).pointee.data else { return nil }
        return Unmanaged<UVHandle>.fromOpaque(data).takeUnretainedValue() as? T
    }
}

/// A one-shot or repeating timer.
final class UVTimer: UVHandle {
    private var callback: (() -> Void)?

    init(loop: UVLoop) {
        super.init(type: UV_TIMER)
        uv_timer_init(loop.loop, self.raw.assumingMemoryBound(to: uv_timer_t.self))
        self.register()
    }

    /// Fires after `timeoutMs`, then every `repeatMs` if non-zero. Restarting replaces the callback.
    func start(timeoutMs: UInt64, repeatMs: UInt64 = 0, _ callback: @escaping () -> Void) {
        guard !self.isClosed else { return }
        self.callback = callback
        uv_timer_start(
            self.raw.assumingMemoryBound(to: uv_timer_t.self),
            { timer in UVHandle.wrapper(UnsafeMutableRawPointer(timer), as: UVTimer.self)?.fire() },
            timeoutMs, repeatMs)
    }

    func stop() {
        guard !self.isClosed else { return }
        uv_timer_stop(self.raw.assumingMemoryBound(to: uv_timer_t.self))
    }

    private func fire() { self.callback?() }

    override func close() {
        self.callback = nil
        super.close()
    }

    /// A one-shot timer that closes itself after firing.
    static func after(_ loop: UVLoop, ms: UInt64, _ callback: @escaping () -> Void) {
        let timer = UVTimer(loop: loop)
        timer.start(timeoutMs: ms) { [unowned timer] in
            timer.close()
            callback()
        }
    }
}

/// A signal watcher (the only way the supervisor handles signals).
final class UVSignal: UVHandle {
    private var callback: ((Int32) -> Void)?

    init(loop: UVLoop) {
        super.init(type: UV_SIGNAL)
        uv_signal_init(loop.loop, self.raw.assumingMemoryBound(to: uv_signal_t.self))
        self.register()
    }

    func start(signal: Int32, _ callback: @escaping (Int32) -> Void) {
        self.callback = callback
        uv_signal_start(
            self.raw.assumingMemoryBound(to: uv_signal_t.self),
            { handle, signal in UVHandle.wrapper(UnsafeMutableRawPointer(handle), as: UVSignal.self)?.callback?(signal) },
            signal)
    }

    override func close() {
        self.callback = nil
        super.close()
    }
}
