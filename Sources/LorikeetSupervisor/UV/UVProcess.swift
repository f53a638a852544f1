import CLibUV
import Glibc

/// A child process spawned through libuv; `onExit` runs on the loop when it ends
/// (libuv reaps it; nothing else may call waitpid).
final class UVProcess: UVHandle {
    private(set) var pid: Int32 = 0
    private(set) var hasExited = false
    private var onExit: ((ProcessExit) -> Void)?

    private init() { super.init(type: UV_PROCESS) }

    /// Spawns `arguments[0]` with `arguments`; stdin/stdout/stderr are inherited and
    /// `extraFDs` become fds 3, 4, ... in the child.
    static func spawn(
        loop: UVLoop, arguments: [String], environment: [String]? = nil, extraFDs: [Int32] = [],
        onExit: @escaping (ProcessExit) -> Void
    ) throws(UVError) -> UVProcess {
        let process = UVProcess()
        process.onExit = onExit
        var cArguments = arguments.map { strdup($0) } + [nil]
        var cEnvironment = environment.map { $0.map { strdup($0) } + [nil] }
        defer {
            for pointer in cArguments { free(pointer) }
            for pointer in cEnvironment ?? [] { free(pointer) }
        }
        let fds: [Int32] = [0, 1, 2] + extraFDs
        var stdio = fds.map { fd -> uv_stdio_container_t in
            var container = uv_stdio_container_t()
            container.flags = UV_INHERIT_FD
            container.data.fd = fd
            return container
        }
        let result: Int32 = cArguments.withUnsafeMutableBufferPointer { args in
            stdio.withUnsafeMutableBufferPointer { stdioBuffer in
                var options = uv_process_options_t()
                options.exit_cb = { handle, status, signal in
                    guard let process = UVHandle.wrapper(UnsafeMutableRawPointer(handle), as: UVProcess.self) else { return }
                    process.hasExited = true
                    let onExit = process.onExit
                    process.onExit = nil
                    process.close()
                    onExit?(ProcessExit(status: status, signal: signal))
                }
                options.file = UnsafePointer(args[0])
                options.args = args.baseAddress
                options.stdio_count = Int32(stdioBuffer.count)
                options.stdio = stdioBuffer.baseAddress
                if cEnvironment != nil {
                    return cEnvironment!.withUnsafeMutableBufferPointer { env in
                        options.env = env.baseAddress
                        return uv_spawn(loop.loop, process.raw.assumingMemoryBound(to: uv_process_t.self), &options)
                    }
                }
                return uv_spawn(loop.loop, process.raw.assumingMemoryBound(to: uv_process_t.self), &options)
            }
        }
        // uv_spawn overwrites the whole handle, data included: register after it.
        process.register()
        guard result == 0 else {
            process.onExit = nil
            process.close()
            throw UVError(code: result, call: "spawn \(arguments.first ?? "")")
        }
        process.pid = uv_process_get_pid(process.raw.assumingMemoryBound(to: uv_process_t.self))
        return process
    }

    /// Sends a signal unless the process has already exited.
    func kill(_ signal: Int32) {
        guard !self.hasExited, !self.isClosed else { return }
        uv_process_kill(self.raw.assumingMemoryBound(to: uv_process_t.self), signal)
    }
}

/// Environments for children: the supervisor's own, with some variables replaced or removed.
enum ChildEnvironment {
    /// `KEY=VALUE` strings of this process's environment, with `setting` applied on top and
    /// the names in `removing` left out.
    static func make(setting: [String: String] = [:], removing: Set<String> = []) -> [String] {
        var result: [String] = []
        var index = 0
        while let entry = environ[index] {
            index += 1
            let text = String(cString: entry)
            let name = text.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? text
            if setting[name] != nil || removing.contains(name) { continue }
            result.append(text)
        }
        for (name, value) in setting.sorted(by: { $0.key < $1.key }) where !removing.contains(name) {
            result.append(name + "=" + value)
        }
        return result
    }
}
