import Glibc
import HTTPTypes
package import Logging
import LorikeetJSON
import LorikeetProto
import Synchronization

/// Settings of vLLM's LoRA filesystem resolver (`vllm/plugins/lora_resolvers/
/// filesystem_resolver.py`): a request naming an unknown model `X` loads `DIR/X` when it
/// holds a LoRA adapter for this base model.
///
/// Read from the environment (`fromEnvironment`):
/// - `LORIKEET_LORA_RESOLVER_DIR=DIR` turns it on;
/// - else vLLM's `VLLM_LORA_RESOLVER_CACHE_DIR=DIR`, when `VLLM_PLUGINS` is unset or
///   lists `lora_filesystem_resolver` (vLLM loads every installed plugin when the
///   variable is unset);
/// - only with runtime LoRA updating on, as in vLLM (`_check_model` resolves only under
///   `VLLM_ALLOW_RUNTIME_LORA_UPDATING`);
/// - `DIR` must be an existing directory lying under the allowed path prefixes
///   (`LORIKEET_RUNTIME_LORA_ALLOWED_PATH_PREFIXES`): the resolved adapter is loaded by
///   the leader and opened by the engine under the same policy as a manual load.
/// - `LORIKEET_LORA_RESOLVER_MISS_TTL_MS` (default 10000): how long a miss is remembered.
package struct LoraResolverConfiguration: Sendable, Equatable {
    /// The resolver directory, canonical.
    package var directory: String
    /// How long a failed resolution is remembered (no disk access meanwhile).
    package var missTTL: Duration = .seconds(10)
    /// Most names remembered as misses (oldest dropped first).
    package var missCapacity = 10_000
    /// The worker's path policy (the directory lies under its prefixes).
    package var pathPolicy: PathPolicy

    package init(directory: String, pathPolicy: PathPolicy, missTTL: Duration = .seconds(10), missCapacity: Int = 10_000) {
        self.directory = directory
        self.pathPolicy = pathPolicy
        self.missTTL = missTTL
        self.missCapacity = missCapacity
    }

    /// vLLM's plugin name in `VLLM_PLUGINS`.
    package static let pluginName = "lora_filesystem_resolver"

    /// What the environment asks for: nothing, a resolver, or a resolver that cannot run
    /// (the reason is logged at startup and nothing is resolved).
    package enum Setup: Sendable, Equatable {
        case off
        case on(LoraResolverConfiguration)
        case refused(String)
    }

    /// Reads the variables listed on the type.
    package static func fromEnvironment(
        _ environment: [String: String], runtimeUpdating: Bool, pathPolicy: PathPolicy
    ) -> Setup {
        let directory: String
        if let value = environment["LORIKEET_LORA_RESOLVER_DIR"], !value.isEmpty {
            directory = value
        } else if let value = environment["VLLM_LORA_RESOLVER_CACHE_DIR"], !value.isEmpty {
            if let plugins = environment["VLLM_PLUGINS"],
                !plugins.split(separator: ",").contains(where: { $0.trimmingSpaces == Self.pluginName })
            {
                return .off
            }
            directory = value
        } else {
            return .off
        }
        guard runtimeUpdating else {
            return .refused(
                "the LoRA resolver needs runtime LoRA updating: set VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 "
                    + "(or LORIKEET_ALLOW_RUNTIME_LORA_UPDATING)")
        }
        var info = stat()
        guard directory.hasPrefix("/"), !directory.utf8.contains(0), let canonical = PathPolicy.realPath(directory),
            stat(canonical, &info) == 0, info.st_mode & S_IFMT == S_IFDIR
        else {
            return .refused("VLLM_LORA_RESOLVER_CACHE_DIR must be set to a valid directory for Filesystem Resolver plugin to function")
        }
        guard pathPolicy.allowedPrefixes.contains(where: { PathPolicy.isUnder(canonical, prefix: $0) }) else {
            return .refused(
                "the LoRA resolver directory '\(canonical.echoed(limit: 1024))' is not under the allowed adapter path prefixes "
                    + "(LORIKEET_RUNTIME_LORA_ALLOWED_PATH_PREFIXES / VLLM_RUNTIME_LORA_ALLOWED_PATH_PREFIXES)")
        }
        var configuration = LoraResolverConfiguration(directory: canonical, pathPolicy: pathPolicy)
        if let value = environment["LORIKEET_LORA_RESOLVER_MISS_TTL_MS"], let ms = Int64(value), ms >= 0 {
            configuration.missTTL = .milliseconds(ms)
        }
        return .on(configuration)
    }
}

extension Substring {
    fileprivate var trimmingSpaces: Substring {
        var text = self
        while text.first == " " { text.removeFirst() }
        while text.last == " " { text.removeLast() }
        return text
    }
}

/// Loads an adapter the first time a request names it, from the resolver directory
/// (vLLM's `lora_filesystem_resolver`, made consistent across workers).
///
/// - **Name rules first, no disk access before them**: `AdapterFieldRules`, and one path
///   component (no `/`, no leading `.`: so no `..`, no hidden files). Stricter than vLLM,
///   which accepts `org/name` and `a/../b` when they stay inside.
/// - **Path policy**: `DIR/<name>` goes through `PathPolicy.canonicalize` (absolute, under
///   the allowed prefixes, symlinks resolved) and its canonical form must still lie
///   strictly below `DIR` (a symlink out of `DIR` is a miss, as vLLM's `commonpath` check).
/// - **Adapter check**: `adapter_config.json` (regular file, at most 1 MiB) with
///   `peft_type` `LORA` and `base_model_name_or_path` equal to a served base name or the
///   engine's model name (vLLM: the `--model` string only). Unreadable, malformed or
///   foreign configs are misses (vLLM answers 500 or 400 for some).
/// - **One load**: through the worker's mutator (the leader's commit path: every worker
///   serves it, it is in the committed table, `--max-adapters` applies). Concurrent
///   first requests on this worker wait for the same load; a load racing one from another
///   worker ends as ALREADY_EXISTS at the leader, which counts as success.
/// - **Misses are remembered** for `missTTL` (bounded to `missCapacity` names), so
///   unknown names do not reach the disk or the leader again meanwhile; engine refusals
///   too. A name that appears in the table later is served from the table first anyway.
package final class LoraFilesystemResolver: Sendable {
    /// What one resolution ended with.
    enum Outcome: Sendable {
        case loaded
        case miss
        case failed(APIError)
    }

    private struct State {
        var misses: [String: ContinuousClock.Instant] = [:]
        var inFlight: [String: [CheckedContinuation<Outcome, Never>]] = [:]
    }

    package let configuration: LoraResolverConfiguration
    private let slot: Int32
    private let logger: Logger
    private let state = Mutex(State())
    private let now: @Sendable () -> ContinuousClock.Instant
    /// Disk lookups done (tests: a remembered miss does none).
    private let lookups = Atomic<Int>(0)
    static let maximumConfigBytes = 1 << 20

    package init(
        configuration: LoraResolverConfiguration, slot: Int32, logger: Logger,
        now: @escaping @Sendable () -> ContinuousClock.Instant = { .now }
    ) {
        self.configuration = configuration
        self.slot = slot
        self.logger = logger
        self.now = now
    }

    /// The resolver a worker's routes use: nil when off, or (logged) when it cannot run.
    static func make(_ setup: LoraResolverConfiguration.Setup?, slot: Int32, logger: Logger)
        -> LoraFilesystemResolver?
    {
        switch setup {
        case .none, .off?: return nil
        case .refused(let reason)?:
            logger.error("LoRA resolver disabled: \(reason)")
            return nil
        case .on(let configuration)?:
            logger.info("LoRA resolver on", metadata: ["resolver.dir": "\(configuration.directory)"])
            return LoraFilesystemResolver(configuration: configuration, slot: slot, logger: logger)
        }
    }

    /// Disk lookups done so far.
    package var diskLookups: Int { self.lookups.load(ordering: .relaxed) }

    /// Whether `name` may be looked up at all (see the type's comment).
    package static func acceptsName(_ name: String) -> Bool {
        guard !name.isEmpty, !name.hasPrefix("."), !name.contains("/"), !name.contains("\\"),
            name.utf8.count <= PathPolicy.maximumComponentBytes,
            LoadAdapterRequest(name: name, path: "/").fieldProblem == nil
        else { return false }
        return true
    }

    /// Resolves `model` (not in the table): loads it and returns the table's answer, nil
    /// for a miss (the caller's model-not-found), or throws the load's failure.
    func resolve(
        model: String, replica: AdapterTableReplica, mutator: any AdapterMutator,
        engineModelName: @escaping @Sendable () async -> String?
    ) async throws(APIError) -> (base: String, adapter: AdapterRecord?)? {
        guard Self.acceptsName(model), !replica.baseModels.contains(model) else { return nil }
        enum Role {
            case answer(Outcome)
            case wait
            case lead
        }
        let role = self.state.withLock { state -> Role in
            if let expiry = state.misses[model] {
                if self.now() < expiry { return .answer(.miss) }
                state.misses[model] = nil
            }
            if state.inFlight[model] != nil { return .wait }
            state.inFlight[model] = []
            return .lead
        }
        let outcome: Outcome
        switch role {
        case .answer(let answer):
            outcome = answer
        case .wait:
            outcome = await withCheckedContinuation { continuation in
                let joined = self.state.withLock { state -> Bool in
                    guard state.inFlight[model] != nil else { return false }
                    state.inFlight[model]?.append(continuation)
                    return true
                }
                // The load ended between our check and here: the table has the answer.
                if !joined { continuation.resume(returning: .loaded) }
            }
        case .lead:
            outcome = await self.lookUpAndLoad(model, replica: replica, mutator: mutator, engineModelName: engineModelName)
            let waiters = self.state.withLock { state -> [CheckedContinuation<Outcome, Never>] in
                let waiters = state.inFlight.removeValue(forKey: model) ?? []
                if case .loaded = outcome { return waiters }
                if case .failed(let error) = outcome, error.status.code >= 500 { return waiters }
                self.remember(model, in: &state)
                return waiters
            }
            for waiter in waiters { waiter.resume(returning: outcome) }
        }
        switch outcome {
        case .loaded: return replica.resolve(model: model)
        case .miss: return nil
        case .failed(let error): throw error
        }
    }

    private func remember(_ name: String, in state: inout State) {
        let now = self.now()
        if state.misses.count >= self.configuration.missCapacity {
            state.misses = state.misses.filter { $0.value > now }
            while state.misses.count >= self.configuration.missCapacity, let oldest = state.misses.min(by: { $0.value < $1.value }) {
                state.misses[oldest.key] = nil
            }
        }
        state.misses[name] = now + self.configuration.missTTL
    }

    private func lookUpAndLoad(
        _ name: String, replica: AdapterTableReplica, mutator: any AdapterMutator,
        engineModelName: @Sendable () async -> String?
    ) async -> Outcome {
        var logger = self.logger
        logger[metadataKey: "adapter.name"] = "\(name.echoed())"
        self.lookups.add(1, ordering: .relaxed)
        let candidate = self.configuration.directory + "/" + name
        let path: String
        do {
            path = try self.configuration.pathPolicy.canonicalize(candidate, logger: logger)
        } catch {
            logger.debug("resolver: no adapter directory", metadata: ["reason": "\(error.message)"])
            return .miss
        }
        guard path != self.configuration.directory, PathPolicy.isUnder(path, prefix: self.configuration.directory) else {
            logger.info("resolver: the adapter directory resolves outside the resolver directory; ignored")
            return .miss
        }
        guard let config = Self.readConfig(path + "/adapter_config.json"), config["peft_type"] == .string("LORA"),
            case .string(let base)? = config["base_model_name_or_path"]
        else {
            logger.info("resolver: no LoRA adapter_config.json in the adapter directory")
            return .miss
        }
        var bases = replica.baseModels
        if !bases.contains(base), let engineModel = await engineModelName() { bases.append(engineModel) }
        guard bases.contains(base) else {
            logger.info("resolver: no LoRA adapter for this base model in the resolver directory")
            return .miss
        }
        let request = LoadAdapterRequest(name: name, path: path, originSlot: self.slot, caller: "lora-resolver")
        let reply = await mutator.load(request)
        switch reply.status.code {
        case .ok:
            logger.info("Resolved and loaded LoRA adapter using the filesystem resolver", metadata: ["adapter.path": "\(path)"])
            return .loaded
        case .alreadyExists:
            return .loaded
        case .failedPrecondition, .unavailable, .deadlineExceeded, .resourceExhausted:
            // Table full, no leader, busy: the table's answer, as for a manual load.
            return .failed(APIError(Status(code: reply.status.code, message: reply.status.message, param: "model")))
        default:
            logger.warning("resolver: the adapter was found but could not be loaded", metadata: ["reason": "\(reply.status.message)"])
            return .failed(
                APIError(
                    status: .badRequest, kind: .invalidRequest,
                    message: "LoRA adapter '\(name)' was found but could not be loaded.", param: "model"))
        }
    }

    /// `adapter_config.json` parsed, or nil (absent, not a regular file, too large, not JSON).
    static func readConfig(_ path: String) -> JSONValue? {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_size <= Self.maximumConfigBytes else { return nil }
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size))
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + offset, $0.count - offset) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            offset += count
        }
        guard offset == bytes.count else { return nil }
        return try? JSONParser.parse(bytes, maximumValues: 100_000)
    }
}

extension WorkerRoutes {
    /// The model a generation request names (absent or "" is the first served model): the
    /// table's answer, else (runtime updating and the resolver on) the LoRA resolver's,
    /// else model-not-found. The one place where a generation route decides that a model
    /// does not exist.
    func resolveGenerationModel(_ requested: String?) async throws(APIError) -> (
        name: String, resolved: (base: String, adapter: AdapterRecord?)
    ) {
        let model = self.modelName(requested)
        if let resolved = self.replica.resolve(model: model) {
            try self.checkFence(resolved.adapter)
            return (model, resolved)
        }
        guard let resolver = self.loraResolver, self.configuration.allowRuntimeLoraUpdating else { throw APIError.modelNotFound(model) }
        let status = self.status
        let found = try await resolver.resolve(model: model, replica: self.replica, mutator: self.mutator) {
            try? await status.modelInfo().modelName
        }
        guard let found else { throw APIError.modelNotFound(model) }
        try self.checkFence(found.adapter)
        return (model, found)
    }
}
