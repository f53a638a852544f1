import Foundation
package import Logging
package import LorikeetEngine
package import LorikeetProto
import Synchronization

/// Serves the engine channel (`proto/lorikeet/v1/engine.proto`) for an `EngineCore`.
///
/// Several clients (workers) may be connected at once. Each connection gets a reader
/// thread, which decodes envelopes and dispatches them, and a writer thread, which owns
/// all writes to the socket, so a slow client never blocks the scheduler thread that
/// produces its tokens. Only a broken frame (bad flag, length over
/// `Limits.channelFrameBytes`, undecodable protobuf) closes a connection (with a logged
/// reason; its requests are aborted). A well-framed call that breaks a limit
/// (`EngineRequestLimits`) gets INVALID_ARGUMENT for that call alone, and the other
/// streams of the connection go on.
///
/// Nothing that reads adapter files runs on a reader thread or the scheduler thread:
/// `add_adapter`, `remove_adapter`, `pin_adapter` and `list_adapters` run one at a time,
/// in arrival order, on the adapter queue (so mutations stay serialized and a list sees
/// every mutation sent before it), and a `generate` whose adapter was evicted (or whose
/// prompt is large enough to take a while to tokenize) is submitted from another queue. Meanwhile `generate`, `abort` and `health` on the same
/// connection are answered; replies carry `call_id`, so they may complete out of order.
///
/// Call mapping (each reply carries the request's `call_id`):
/// - `generate` → a stream of `chunk`s, the last with `finish_reason`; a refused request
///   gets one `chunk` with `finish_reason = "error"` and the status;
/// - `abort` → `result` (OK even when the request already finished);
/// - `add_adapter` / `remove_adapter` / `pin_adapter` → `result` with the gRPC status
///   (FAILED_PRECONDITION for a stale epoch; DEADLINE_EXCEEDED, without applying it, for
///   a call whose deadline passed while it waited for the adapter queue);
/// - `list_adapters` → `adapter_list`; `health` → `health_reply`; `model_info` →
///   `model_info_reply`.
package final class EngineServer: Sendable {
    /// Frames queued for one slow client before it is disconnected.
    package static let maxQueuedFrames = 65_536

    private let core: EngineCore
    private let logger: Logger
    private let connections = Mutex<[UInt64: EngineConnection]>([:])
    private let nextConnectionID = Atomic<UInt64>(1)
    /// Adapter mutations and lists, one at a time in arrival order.
    private let adapterQueue = DispatchQueue(label: "lorikeet.engine.adapters")
    /// Submissions that do slow work first: reload an evicted adapter from disk, or
    /// tokenize a prompt larger than `deferredPromptBytes`.
    private let submitQueue = DispatchQueue(label: "lorikeet.engine.deferred-submit", attributes: .concurrent)
    /// Prompts (text, or all messages' contents) above this size are tokenized off the
    /// connection's reader thread.
    package static let deferredPromptBytes = 256 * 1024

    /// Creates a server for `core`.
    package init(core: EngineCore, logger: Logger) {
        self.core = core
        self.logger = logger
    }

    /// Accepts connections on a listening socket until it fails (e.g. is closed).
    /// Blocks the calling thread; connections run on threads of their own.
    ///
    /// Each peer's credentials are checked first (`SO_PEERCRED`): a process running as
    /// another user than `allowedUID` (default: this process's) is disconnected at once,
    /// with a log line, before a byte is read.
    ///
    /// With `supervisor` (the supervisor's pid, when the engine is supervised), only a
    /// peer in the supervisor's lineage — the supervisor itself or a process it spawned (a
    /// worker) — may raise the leader epoch: any other same-user process (a stray script,
    /// a test tool) can still list, generate and mutate at the current epoch, but cannot
    /// fence the real leader out by jumping the epoch.
    package func serve(listener: Int32, allowedUID: UInt32 = getuid(), supervisor: Int32? = nil) throws(TransportError) {
        while true {
            let fd = try UnixSocket.accept(listener: listener)
            guard self.peerIsAllowed(fd, allowedUID: allowedUID) else {
                close(fd)
                continue
            }
            var mayRaiseEpoch = true
            if let supervisor {
                let peer = (try? UnixSocket.peerCredentials(fd))?.pid ?? -1
                mayRaiseEpoch = peer == supervisor || Self.parentPID(of: peer) == supervisor
            }
            self.start(FramedConnection<EngineEnvelope>(fd: fd), mayRaiseEpoch: mayRaiseEpoch)
        }
    }

    /// The parent pid of `pid` (from `/proc/<pid>/stat`), or nil.
    static func parentPID(of pid: Int32) -> Int32? {
        guard pid > 0, let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 1 ? Int32(fields[1]) : nil
    }

    /// Whether the process at the other end of `fd` runs as `allowedUID` (logs why not).
    package func peerIsAllowed(_ fd: Int32, allowedUID: UInt32) -> Bool {
        do {
            let peer = try UnixSocket.peerCredentials(fd)
            guard peer.uid == allowedUID else {
                self.logger.warning(
                    "refused an engine client running as another user",
                    metadata: ["peer.uid": "\(peer.uid)", "peer.pid": "\(peer.pid)", "allowed.uid": "\(allowedUID)"])
                return false
            }
            return true
        } catch {
            self.logger.warning("refused an engine client whose credentials cannot be read: \(error)")
            return false
        }
    }

    /// Serves one already-connected socket on new threads (also the in-process twin for
    /// tests: pass one end of a `socketpair`).
    package func start(_ transport: FramedConnection<EngineEnvelope>, mayRaiseEpoch: Bool = true) {
        let id = self.nextConnectionID.wrappingAdd(1, ordering: .relaxed).oldValue
        let connection = EngineConnection(id: id, transport: transport, logger: self.logger, mayRaiseEpoch: mayRaiseEpoch)
        self.connections.withLock { $0[id] = connection }
        connection.startWriter()
        let thread = Thread { [self] in
            self.readLoop(connection)
        }
        thread.name = "lorikeet-engine-conn-\(id)"
        thread.start()
    }

    /// Number of open connections.
    package var connectionCount: Int { self.connections.withLock { $0.count } }

    /// Closes every connection (their requests are aborted).
    package func closeAll() {
        for c in self.connections.withLock({ Array($0.values) }) { c.close() }
    }

    /// FAILED_PRECONDITION when a peer outside the supervisor's lineage tries to raise the
    /// leader epoch; nil otherwise.
    private func epochJumpRefusal(_ epoch: UInt64, _ connection: EngineConnection) -> Status? {
        guard !connection.mayRaiseEpoch, epoch > self.core.adapters.maxEpoch else { return nil }
        self.logger.warning(
            "refused an epoch raise from a process outside the supervisor's lineage",
            metadata: ["connection.id": "\(connection.id)", "epoch": "\(epoch)", "epoch.current": "\(self.core.adapters.maxEpoch)"])
        return Status(
            code: .failedPrecondition,
            message: "epoch \(epoch) is newer than the current leader epoch; only the supervisor's workers may raise it")
    }

    private func readLoop(_ connection: EngineConnection) {
        var logger = self.logger
        logger[metadataKey: "connection.id"] = "\(connection.id)"
        while true {
            let envelope: EngineEnvelope?
            do {
                envelope = try connection.transport.receive()
            } catch {
                logger.warning("closing engine connection: \(error)")
                break
            }
            guard let envelope else { break }
            self.dispatch(envelope, connection)
        }
        connection.close()
        self.connections.withLock { _ = $0.removeValue(forKey: connection.id) }
        let orphans = connection.takeRequests()
        for id in orphans { self.core.abort(id) }
        if !orphans.isEmpty { logger.info("connection closed; aborted \(orphans.count) request(s)") }
    }

    private static func deadlinePassed(_ deadlineUnixMs: UInt64) -> Bool {
        deadlineUnixMs != 0 && deadlineUnixMs < UInt64(Date().timeIntervalSince1970 * 1000)
    }

    private func dispatch(_ envelope: EngineEnvelope, _ c: EngineConnection) {
        let callID = envelope.callID
        let deadline = envelope.deadlineUnixMs
        func reply(_ body: EngineEnvelope.Body) { c.enqueue(EngineEnvelope(callID: callID, body: body)) }
        func result(_ status: Status) { reply(.result(CallResult(status: status))) }
        if Self.deadlinePassed(deadline) {
            if case .generate(let g) = envelope.body {
                reply(
                    .chunk(
                        GenerateChunk(
                            requestID: g.requestID, finishReason: "error",
                            status: Status(code: .deadlineExceeded, message: "deadline passed before the request was read"))))
            } else {
                result(Status(code: .deadlineExceeded, message: "deadline passed before the call was read"))
            }
            return
        }
        switch envelope.body {
        case .generate(let g):
            if let problem = EngineRequestLimits.problem(g) {
                self.logger.info(
                    "generate refused: \(problem.message)",
                    metadata: ["connection.id": "\(c.id)", "request.id": "\(g.requestID.echoed(limit: 128))"])
                reply(.chunk(GenerateChunk(requestID: g.requestID, finishReason: "error", status: problem)))
                return
            }
            self.generate(g, callID: callID, c)
        case .abort(let a):
            c.markAborted(a.requestID)
            self.core.abort(a.requestID)
            result(.ok)
        case .addAdapter(let a):
            if let problem = EngineRequestLimits.problem(a) ?? self.epochJumpRefusal(a.epoch, c) {
                result(problem)
                return
            }
            self.onAdapterQueue(callID: callID, deadline: deadline, c) { () throws(EngineError) -> EngineEnvelope.Body in
                _ = try self.core.adapters.add(
                    name: a.name, intID: a.intID, path: a.path, pinned: a.pinned, replace: a.replace, epoch: a.epoch)
                return .result(CallResult(status: .ok))
            }
        case .removeAdapter(let r):
            if let problem = self.epochJumpRefusal(r.epoch, c) {
                result(problem)
                return
            }
            self.onAdapterQueue(callID: callID, deadline: deadline, c) { () throws(EngineError) -> EngineEnvelope.Body in
                try self.core.adapters.remove(intID: r.intID, epoch: r.epoch)
                return .result(CallResult(status: .ok))
            }
        case .pinAdapter(let p):
            if let problem = self.epochJumpRefusal(p.epoch, c) {
                result(problem)
                return
            }
            self.onAdapterQueue(callID: callID, deadline: deadline, c) { () throws(EngineError) -> EngineEnvelope.Body in
                try self.core.adapters.pin(intID: p.intID, pinned: p.pinned, epoch: p.epoch)
                return .result(CallResult(status: .ok))
            }
        case .listAdapters:
            self.onAdapterQueue(callID: callID, deadline: 0, c) { () throws(EngineError) -> EngineEnvelope.Body in
                .adapterList(
                    EngineAdapterList(
                        adapters: self.core.adapters.list().map {
                            EngineAdapter(
                                name: $0.name, intID: $0.intID, path: $0.path, pinned: $0.pinned, active: $0.active,
                                rank: UInt32($0.rank))
                        }))
            }
        case .health:
            reply(
                .healthReply(
                    HealthReply(
                        status: .ok, maxEpoch: self.core.adapters.maxEpoch, runningRequests: UInt32(self.core.runningRequests))))
        case .modelInfo:
            let i = self.core.info
            reply(
                .modelInfoReply(
                    ModelInfo(
                        modelName: i.modelName, architecture: i.architecture, vocabSize: UInt32(i.vocabSize),
                        contextLength: UInt32(i.contextLength), maxLoras: UInt32(i.maxLoras), maxCPULoras: UInt32(i.maxCpuLoras),
                        maxLoraRank: UInt32(i.maxLoraRank), eosTokenIDs: i.eosTokenIDs)))
        case .chunk, .adapterList, .healthReply, .modelInfoReply, .result:
            result(Status(code: .invalidArgument, message: "the engine does not accept reply messages"))
        case .none:
            result(Status(code: .invalidArgument, message: "empty engine envelope"))
        }
    }

    /// Runs an adapter call on the adapter queue (after every call queued before it) and
    /// replies from there; a call whose deadline passed while it waited is not run.
    private func onAdapterQueue(
        callID: UInt64, deadline: UInt64, _ c: EngineConnection,
        _ body: @escaping @Sendable () throws(EngineError) -> EngineEnvelope.Body
    ) {
        self.adapterQueue.async {
            let reply: EngineEnvelope.Body
            if Self.deadlinePassed(deadline) {
                reply = .result(
                    CallResult(status: Status(code: .deadlineExceeded, message: "deadline passed while waiting for earlier adapter calls")))
            } else {
                do throws(EngineError) {
                    reply = try body()
                } catch {
                    self.log(error, c)
                    reply = .result(CallResult(status: Self.status(error)))
                }
            }
            c.enqueue(EngineEnvelope(callID: callID, body: reply))
        }
    }

    /// Logs an adapter refusal with the details kept from the client.
    private func log(_ error: EngineError, _ c: EngineConnection) {
        var metadata: Logger.Metadata = ["connection.id": "\(c.id)", "code": "\(error.code)"]
        if let detail = error.logDetail { metadata["detail"] = "\(detail)" }
        self.logger.info("adapter call refused: \(error.message)", metadata: metadata)
    }

    private func generate(_ g: GenerateRequest, callID: UInt64, _ c: EngineConnection) {
        let prompt: PromptInput
        if g.promptTokens.isEmpty && g.messages.isEmpty && g.promptText.isEmpty {
            let status = Status(
                code: .invalidArgument, message: "one of prompt_tokens, prompt_text or messages is required", param: "prompt")
            c.enqueue(
                EngineEnvelope(callID: callID, body: .chunk(GenerateChunk(requestID: g.requestID, finishReason: "error", status: status))))
            return
        } else if !g.promptTokens.isEmpty {
            prompt = .tokens(g.promptTokens)
        } else if !g.messages.isEmpty {
            prompt = .chat(g.messages.map { ChatTurn(role: $0.role, content: $0.content) })
        } else {
            prompt = .text(g.promptText)
        }
        let s = g.sampling
        let adapterID = g.adapter.flatMap { $0.intID == 0 ? nil : $0.intID }
        let request = GenerationRequest(
            id: g.requestID, prompt: prompt, adapterID: adapterID,
            params: LorikeetEngine.SamplingParams(
                maxTokens: Int(s.maxTokens == 0 ? 16 : s.maxTokens), temperature: s.temperature,
                topP: s.topP == 0 ? 1 : s.topP, topK: Int(s.topK), seed: s.seed, stop: s.stop,
                stopTokenIDs: s.stopTokenIDs, ignoreEOS: s.ignoreEOS))
        c.track(g.requestID)
        let promptBytes = g.promptText.utf8.count + g.messages.reduce(0) { $0 + $1.content.utf8.count }
        if promptBytes > Self.deferredPromptBytes || adapterID.map({ self.core.adapters.needsReload($0) }) == true {
            // Reading the adapter again (file I/O) or tokenizing megabytes: not on this
            // reader thread, so the connection's other calls are served meanwhile.
            self.submitQueue.async {
                guard !c.shouldAbort(g.requestID) else {
                    c.untrack(g.requestID)
                    c.enqueue(EngineEnvelope(callID: callID, body: .chunk(GenerateChunk(requestID: g.requestID, finishReason: "abort"))))
                    return
                }
                self.submit(request, callID: callID, c)
                // An abort (or a disconnect) that came while the adapter was read missed
                // the scheduler; now that the request is there, apply it.
                if c.shouldAbort(g.requestID) { self.core.abort(g.requestID) }
            }
            return
        }
        self.submit(request, callID: callID, c)
    }

    private func submit(_ request: GenerationRequest, callID: UInt64, _ c: EngineConnection) {
        do {
            try self.core.submit(request) { [weak c] event in
                guard let c else { return }
                var chunk = GenerateChunk(requestID: event.requestID, tokens: event.tokens, text: event.text)
                if let reason = event.finishReason {
                    chunk.finishReason = reason.rawValue
                    chunk.usage = event.usage.map {
                        LorikeetProto.Usage(promptTokens: UInt32($0.promptTokens), completionTokens: UInt32($0.completionTokens))
                    }
                    if let error = event.error { chunk.status = Self.status(error) }
                    c.untrack(event.requestID)
                }
                c.enqueue(EngineEnvelope(callID: callID, body: .chunk(chunk)))
            }
        } catch {
            if error.logDetail != nil { self.log(error, c) }
            c.untrack(request.id)
            c.enqueue(
                EngineEnvelope(
                    callID: callID, body: .chunk(GenerateChunk(requestID: request.id, finishReason: "error", status: Self.status(error)))))
        }
    }

    /// The wire status for an engine error.
    package static func status(_ error: EngineError) -> Status {
        Status(code: StatusCode(wireValue: Int32(error.code.grpcStatusCode)), message: error.message)
    }
}

/// One client connection: its transport, its outbound queue (drained by a writer
/// thread) and the ids of its running requests.
final class EngineConnection: Sendable {
    private struct Outbound {
        var queue: [EngineEnvelope] = []
        var closed = false
    }

    let id: UInt64
    let transport: FramedConnection<EngineEnvelope>
    private let logger: Logger
    private let outbound = Mutex(Outbound())
    private let ready = DispatchSemaphore(value: 0)
    /// Requests in flight (for aborting them on disconnect) and the ids aborted while
    /// their submission was still pending on the deferred-submit queue.
    private let requests = Mutex<(running: Set<String>, aborted: Set<String>)>(([], []))

    /// Whether this peer may send a leader epoch newer than any seen (see `serve`).
    let mayRaiseEpoch: Bool

    init(id: UInt64, transport: FramedConnection<EngineEnvelope>, logger: Logger, mayRaiseEpoch: Bool = true) {
        self.mayRaiseEpoch = mayRaiseEpoch
        self.id = id
        self.transport = transport
        self.logger = logger
    }

    func startWriter() {
        let thread = Thread { [self] in self.writeLoop() }
        thread.name = "lorikeet-engine-writer-\(self.id)"
        thread.start()
    }

    /// Queues a frame; never blocks. A client that lets the queue grow past the limit is
    /// disconnected.
    func enqueue(_ envelope: EngineEnvelope) {
        let overflow = self.outbound.withLock { o -> Bool in
            guard !o.closed else { return false }
            o.queue.append(envelope)
            return o.queue.count > EngineServer.maxQueuedFrames
        }
        if overflow {
            self.logger.warning("engine client is not reading; closing", metadata: ["connection.id": "\(self.id)"])
            self.close()
        }
        self.ready.signal()
    }

    func close() {
        self.outbound.withLock { $0.closed = true }
        self.transport.close()
        self.ready.signal()
    }

    func track(_ requestID: String) { self.requests.withLock { _ = $0.running.insert(requestID) } }
    func untrack(_ requestID: String) {
        self.requests.withLock {
            _ = $0.running.remove(requestID)
            _ = $0.aborted.remove(requestID)
        }
    }
    /// Records an abort of a request of this connection (kept until it finishes).
    func markAborted(_ requestID: String) {
        self.requests.withLock { if $0.running.contains(requestID) { _ = $0.aborted.insert(requestID) } }
    }
    /// Whether a request whose submission was deferred must not run (aborted, or the
    /// connection is gone).
    func shouldAbort(_ requestID: String) -> Bool {
        let closed = self.outbound.withLock { $0.closed }
        return closed || self.requests.withLock { $0.aborted.contains(requestID) }
    }
    func takeRequests() -> [String] {
        self.requests.withLock { r in
            defer { r = ([], []) }
            return Array(r.running)
        }
    }

    private static func tooLarge(_ body: EngineEnvelope.Body?) -> EngineEnvelope.Body {
        let status = Status(code: .resourceExhausted, message: "the engine's reply is larger than the channel's frame limit")
        if case .chunk(let c) = body {
            return .chunk(GenerateChunk(requestID: c.requestID, finishReason: "error", status: status))
        }
        return .result(CallResult(status: status))
    }

    private func writeLoop() {
        while true {
            self.ready.wait()
            let (batch, closed) = self.outbound.withLock { o -> ([EngineEnvelope], Bool) in
                defer { o.queue = [] }
                return (o.queue, o.closed)
            }
            if closed { return }
            for envelope in batch {
                do {
                    try self.transport.send(envelope)
                } catch .frame(.frameTooLarge(let length, let maximum)) {
                    // The reply alone is too large for the channel: answer the call with
                    // an error instead, and keep the connection.
                    self.logger.error(
                        "engine reply over the frame limit replaced by an error",
                        metadata: ["connection.id": "\(self.id)", "bytes": "\(length)", "limit": "\(maximum)"])
                    try? self.transport.send(EngineEnvelope(callID: envelope.callID, body: Self.tooLarge(envelope.body)))
                } catch {
                    self.logger.info("engine client went away: \(error)", metadata: ["connection.id": "\(self.id)"])
                    self.close()
                    return
                }
            }
        }
    }
}
