import ArgumentParser
import Foundation
import Logging
import LorikeetEngine
import LorikeetEngineServer
import LorikeetProto
import LorikeetSupervisor
import NIOCore
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
    import Glibc
#endif

/// `lorikeet engine`: the built-in reference engine process, serving the engine channel
/// on a Unix socket (started by the supervisor; runnable by hand for debugging).
///
/// The process is a `ServiceGroup` of the engine server (`EngineService`) and, when
/// supervised, the parent watch: SIGTERM drains (stop accepting, let running generations
/// finish within `--drain-grace-ms`, exit 0), SIGINT/SIGQUIT stop at once.
struct EngineCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "engine",
        abstract: "Run the built-in Llama engine on a Unix socket (engine channel).",
        discussion: """
            Signals: TERM = drain (stop accepting, let running generations finish, exit 0), INT/QUIT = stop at once.
            Exit code 78: the model cannot be loaded or the socket cannot be bound; 1: the supervisor (--parent-pid) is gone.
            """
    )

    /// CPUs this process may run on, at least 1: on Linux the bits of its `sched_getaffinity`
    /// mask (taskset, cpusets), as llama.cpp counts them; elsewhere the active processors.
    /// Glibc's module hides `sched_getaffinity` (a `_GNU_SOURCE` function), so it is looked up
    /// with `dlsym`.
    static func usableCPUs() -> Int {
        #if os(Linux)
            typealias GetAffinity = @convention(c) (pid_t, Int, UnsafeMutableRawPointer) -> Int32
            if let symbol = dlsym(nil, "sched_getaffinity") {
                var mask = [UInt64](repeating: 0, count: 16)  // 1,024 CPUs, glibc's cpu_set_t
                let status = mask.withUnsafeMutableBytes { unsafeBitCast(symbol, to: GetAffinity.self)(0, $0.count, $0.baseAddress!) }
                let count = mask.reduce(0) { $0 + $1.nonzeroBitCount }
                if status == 0 && count > 0 { return count }
            }
        #endif
        return max(1, ProcessInfo.processInfo.activeProcessorCount)
    }

    @Option(
        help:
            "Model: a directory (config.json + model.safetensors) or a .gguf file; default: SmolLM2-135M-Instruct, downloaded on first use."
    ) var model: String?
    @Option(help: "Unix socket path to serve on (mode 0600).") var socket: String
    @Option(help: "Maximum adapters used by running requests at once; 0 turns LoRA off (every load is refused).") var maxLoras = 4
    @Option(help: "Maximum adapters cached in memory (at least --max-loras).") var maxCpuLoras: Int?
    @Option(help: "Largest LoRA rank accepted.") var maxLoraRank = 16
    @Option(help: "Compute threads (default: the CPUs this process may run on, as llama.cpp picks).") var threads: Int?
    @Option(help: "Sequences stepped together at most.") var maxBatchSize = 32
    @Option(
        help: ArgumentHelp(
            "Memory for finished sequences' KV caches reused by prompts that start the same way (prefix caching); 0 turns it off.",
            valueName: "MiB")
    ) var prefixCacheMib = EngineOptions.defaultPrefixCacheMiB
    @Option(help: "Prompt tokens one step reads at most while no stream decodes.")
    var prefillChunk = EngineOptions.defaultPrefillChunk
    @Option(
        help: "Prompt tokens one step reads at most while streams decode (smaller: steadier streams; larger: sooner first tokens).")
    var prefillChunkDecoding = EngineOptions.defaultPrefillChunkWhileDecoding
    @Option(help: "Exit when this process (the supervisor) is gone.") var parentPid: Int32?
    @Option(help: "Log format: text or json.") var logFormat = "text"
    @Option(name: .customLong("drain-grace-ms"), help: "How long running generations may finish after SIGTERM (as the workers' drain).")
    var drainGraceMs: Int = 30_000
    @Option(
        help: ArgumentHelp(
            "An operator-trusted adapter directory (repeatable; `serve` passes each --lora-modules path): allowed besides the runtime prefixes.",
            valueName: "dir")
    ) var trustedAdapterDir: [String] = []

    func validate() throws {
        guard self.maxLoras >= 0 else { throw ValidationError("--max-loras must be 0 (LoRA off) or more, got \(self.maxLoras)") }
        guard self.prefixCacheMib >= 0, self.prefixCacheMib <= 1 << 20 else {
            throw ValidationError("--prefix-cache-mib must be between 0 (off) and 1048576, got \(self.prefixCacheMib)")
        }
        for (flag, value) in [("--prefill-chunk", self.prefillChunk), ("--prefill-chunk-decoding", self.prefillChunkDecoding)]
        where !(1...EngineOptions.maxPrefillChunk).contains(value) {
            throw ValidationError("\(flag) must be between 1 and \(EngineOptions.maxPrefillChunk), got \(value)")
        }
    }

    func run() async throws {
        let logger = ParentWatch.prepareChild(label: "lorikeet.engine", logFormat: self.logFormat, parentPID: self.parentPid)
        // The same allowed prefixes as the workers (the supervisor's environment is
        // inherited): the engine re-checks every adapter directory against them itself.
        let prefixes = AdapterPathPrefixes.fromEnvironment(ProcessInfo.processInfo.environment)
        if !prefixes.ignored.isEmpty {
            logger.warning(
                "ignoring adapter path prefixes that are not absolute or do not exist",
                metadata: ["prefixes": "\(prefixes.ignored.map { $0.echoed() })"])
        }
        // Startup adapters (--lora-modules) are the operator's: allowed whether or not they
        // lie under the runtime prefixes. Each is one more allowed prefix for the walk.
        let trusted = AdapterPathPrefixes(self.trustedAdapterDir)
        if !trusted.ignored.isEmpty {
            logger.warning(
                "ignoring trusted adapter directories that do not exist", metadata: ["dirs": "\(trusted.ignored.map { $0.echoed() })"])
        }
        let allowedPrefixes = prefixes.allowed + trusted.allowed.filter { !prefixes.allowed.contains($0) }
        let options = EngineOptions(
            maxLoras: self.maxLoras, maxCpuLoras: self.maxCpuLoras, maxLoraRank: self.maxLoraRank,
            threads: self.threads ?? Self.usableCPUs(),
            maxBatchSize: self.maxBatchSize, allowedAdapterPathPrefixes: allowedPrefixes, prefixCacheMiB: self.prefixCacheMib,
            prefillChunk: self.prefillChunk, prefillChunkWhileDecoding: self.prefillChunkDecoding)
        let core: EngineCore
        do {
            // No --model: the default SmolLM2-135M-Instruct, downloaded into the cache on first use.
            core = try EngineCore.open(modelOption: self.model, options: options)
        } catch {
            logger.critical("cannot load the model: \(error.message)")
            throw ExitCode(LorikeetExitCode.cannotBoot)
        }
        // Bind under a temporary name and rename, so clients never see a socket file
        // that is not listening yet.
        let temporary = self.socket + ".\(getpid()).tmp"
        let listener: Int32
        do {
            listener = try UnixSocket.listen(path: temporary, mode: 0o600)
            guard rename(temporary, self.socket) == 0 else {
                throw TransportError.system(call: "rename \(temporary) -> \(self.socket)", errno: errno)
            }
        } catch {
            unlink(temporary)
            logger.critical("cannot serve on \(self.socket): \(error)")
            throw ExitCode(LorikeetExitCode.cannotBoot)
        }
        logger.info(
            "engine ready",
            metadata: [
                "socket": "\(self.socket)", "model": "\(core.info.modelName)", "vocab": "\(core.info.vocabSize)",
                "max_loras": "\(options.adapters.maxLoras)", "max_cpu_loras": "\(options.adapters.maxCpuLoras)",
                "max_lora_rank": "\(options.adapters.maxLoraRank)", "threads": "\(options.threads)", "kernels": "\(EngineCore.kernels)",
                "prefix_cache_mib": "\(options.prefixCacheBytes >> 20)", "prefill_chunk": "\(options.prefillChunk)",
                "prefill_chunk_decoding": "\(options.prefillChunkWhileDecoding)",
                "adapter_prefixes":
                    "\(prefixes.allowed.isEmpty ? "(none: adapter paths are walked from /)" : prefixes.allowed.joined(separator: ":"))",
            ])
        if let problem = EngineCore.kernelLimitProblem { logger.warning("\(problem)") }
        let eventLoops = EngineServer.makeEventLoopGroup()
        let server = EngineServer(core: core, logger: logger, group: eventLoops)
        let engine = EngineService(
            server: server, listener: listener, supervisor: self.parentPid, drainGrace: .milliseconds(self.drainGraceMs))
        // The parent watch first: the group shuts services down in reverse order, so it
        // keeps watching while the engine drains.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let parentPid { services.append(.init(service: ParentWatchService(parentPID: parentPid))) }
        services.append(.init(service: engine, successTerminationBehavior: .gracefullyShutdownGroup))
        let group = ServiceGroup(
            configuration: .init(
                services: services, gracefulShutdownSignals: [.sigterm], cancellationSignals: [.sigint, .sigquit], logger: logger))
        var failure: (any Error)?
        do {
            try await group.run()
        } catch {
            failure = error
        }
        core.shutdown()
        try? await eventLoops.shutdownGracefully()
        if let failure {
            logger.critical("engine stopped: \(failure)")
            throw ExitCode(LorikeetExitCode.failure)
        }
        logger.info("engine stopped")
    }
}
