import Foundation
package import Logging
import LorikeetChannels
package import LorikeetEngine
package import LorikeetProto
import LorikeetStructured
package import NIOCore
import NIOPosix
import Synchronization

/// Serves the engine channel (`proto/lorikeet/v1/engine.proto`) for an `EngineCore`.
///
/// Several clients (workers) may be connected at once. Every socket is a SwiftNIO channel
/// on the server's event loop group; each connection's pipeline is the channels' frame
/// decoder and encoder (`LorikeetChannels`) and an `EngineChannelHandler` that dispatches
/// decoded envelopes on the event loop. Replies go through the connection's bounded
/// outbound queue (`EngineConnection`), so a slow client never blocks the scheduler
/// thread that produces its tokens: one that lets `maxQueuedFrames` frames pile up is
/// disconnected alone. Only a broken frame (bad flag, length over
/// `Limits.channelFrameBytes`, undecodable protobuf) closes a connection (with a logged
/// reason; its requests are aborted). A well-framed call that breaks a limit
/// (`EngineRequestLimits`) gets INVALID_ARGUMENT for that call alone, and the other
/// streams of the connection go on.
///
/// Nothing that reads adapter files runs on the event loop or the scheduler thread:
/// `add_adapter`, `remove_adapter`, `pin_adapter` and `list_adapters` run one at a time,
/// in arrival order, on the adapter queue (so mutations stay serialized and a list sees
/// every mutation sent before it), and a `generate` whose adapter was evicted (or whose
/// prompt is large enough to take a while to tokenize) is submitted from another queue.
/// Meanwhile `generate`, `abort` and `health` on the same connection are answered;
/// replies carry `call_id`, so they may complete out of order.
///
/// Call mapping (each reply carries the request's `call_id`):
/// - `generate` → a stream of `chunk`s, the last with `finish_reason`; a refused request
///   gets one `chunk` with `finish_reason = "error"` and the status (UNAVAILABLE while
///   the server drains);
/// - `abort` → `result` (OK even when the request already finished);
/// - `add_adapter` / `remove_adapter` / `pin_adapter` → `result` with the gRPC status
///   (FAILED_PRECONDITION for a stale epoch; DEADLINE_EXCEEDED, without applying it, for
///   a call whose deadline passed while it waited for the adapter queue);
/// - `list_adapters` → `adapter_list`; `health` → `health_reply`; `model_info` →
///   `model_info_reply`.
///
/// Why a `ChannelHandler` pipeline and not `NIOAsyncChannel`: the replies are produced by
/// the scheduler thread and dispatch queues, synchronously, and must never wait; a handler
/// lets them hand frames to the event loop directly, with the bound counted where NIO
/// completes each write. `NIOAsyncChannel` would add a task per connection and an async
/// hop (and a second buffer to bound) between those threads and the socket, for no gain:
/// inbound dispatch is non-blocking too.
package final class EngineServer: Sendable {
    /// Frames queued for one slow client (enqueued, not yet written to its socket) before
    /// it is disconnected.
    package static let maxQueuedFrames = 65_536
    /// Prompts (text, or all messages' contents) above this size are tokenized off the
    /// event loop.
    package static let deferredPromptBytes = 256 * 1024

    private enum Condition {
        case noRequests
        case noConnections
    }

    private enum Waiter {
        case waiting(Condition, CheckedContinuation<Void, Never>)
        /// Cancelled before it started waiting.
        case cancelled
    }

    private struct State {
        var connections: [UInt64: EngineConnection] = [:]
        /// Requests in flight on every connection (`EngineConnection.track`).
        var requests = 0
        var draining = false
        var waiters: [UInt64: Waiter] = [:]
        var nextWaiterID: UInt64 = 0

        func holds(_ condition: Condition) -> Bool {
            switch condition {
            case .noRequests: self.requests == 0
            case .noConnections: self.connections.isEmpty
            }
        }

        /// Removes and returns the waiters whose condition now holds.
        mutating func satisfiedWaiters() -> [CheckedContinuation<Void, Never>] {
            var ready: [CheckedContinuation<Void, Never>] = []
            for (id, waiter) in self.waiters {
                if case .waiting(let condition, let continuation) = waiter, self.holds(condition) {
                    self.waiters[id] = nil
                    ready.append(continuation)
                }
            }
            return ready
        }
    }

    private let core: EngineCore
    let logger: Logger
    private let group: any EventLoopGroup
    private let maxQueuedFrames: Int
    private let state = Mutex(State())
    private let nextConnectionID = Atomic<UInt64>(1)
    /// Adapter mutations and lists, one at a time in arrival order.
    private let adapterQueue = DispatchQueue(label: "lorikeet.engine.adapters")
    /// Submissions that do slow work first: reload an evicted adapter from disk, or
    /// tokenize a prompt larger than `deferredPromptBytes`.
    private let submitQueue = DispatchQueue(label: "lorikeet.engine.deferred-submit", attributes: .concurrent)

    /// Creates a server for `core` whose sockets run on `group`'s event loops.
    package init(
        core: EngineCore, logger: Logger, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        maxQueuedFrames: Int = EngineServer.maxQueuedFrames
    ) {
        self.core = core
        self.logger = logger
        self.group = group
        self.maxQueuedFrames = maxQueuedFrames
    }

    /// The engine process's event loops: one thread. The engine serves a handful of
    /// connections (one per worker) and answers every call without blocking (slow work
    /// goes to the adapter and deferred-submit queues, compute to the scheduler thread).
    package static func makeEventLoopGroup() -> any EventLoopGroup {
        MultiThreadedEventLoopGroup(numberOfThreads: 1)
    }

    // MARK: Sockets

    /// Starts accepting connections on a listening socket (NIO takes it over and closes
    /// it); returns the listener, whose `close()` stops accepting.
    ///
    /// Each peer's credentials are checked first (`SO_PEERCRED`, in the child channel's
    /// initializer, before it is registered): a process running as another user than
    /// `allowedUID` (default: this process's) is disconnected at once, with a log line,
    /// before a byte is read.
    ///
    /// With `supervisor` (the supervisor's pid, when the engine is supervised), only a
    /// peer in the supervisor's lineage — the supervisor itself or a process it spawned (a
    /// worker) — may raise the leader epoch: any other same-user process (a stray script,
    /// a test tool) can still list, generate and mutate at the current epoch, but cannot
    /// fence the real leader out by jumping the epoch.
    package func listen(on listener: Int32, allowedUID: UInt32 = getuid(), supervisor: Int32? = nil) async throws(EngineServerError)
        -> EngineListener
    {
        let bootstrap = ServerBootstrap(group: self.group)
            .childChannelInitializer { channel in
                self.admit(channel, allowedUID: allowedUID, supervisor: supervisor)
            }
        do {
            return EngineListener(channel: try await bootstrap.withBoundSocket(listener).get())
        } catch {
            throw .cannotServe("\(error)")
        }
    }

    /// Serves one already-connected socket (the in-process twin for tests: pass one end
    /// of a `socketpair`). No peer check; the peer may raise the epoch.
    package func start(connectedSocket fd: Int32) async throws(EngineServerError) {
        let bootstrap = ClientBootstrap(group: self.group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try self.configure(channel, mayRaiseEpoch: true) }
            }
        do {
            _ = try await bootstrap.withConnectedSocket(fd).get()
        } catch {
            throw .cannotServe("\(error)")
        }
    }

    /// The child channel initializer: checks the peer, then builds the pipeline. A failed
    /// future makes NIO close the accepted socket unregistered, so nothing is read.
    private func admit(_ channel: any Channel, allowedUID: UInt32, supervisor: Int32?) -> EventLoopFuture<Void> {
        guard let options = channel as? any SocketOptionProvider else {
            return channel.eventLoop.makeFailedFuture(EngineServerError.peerCredentialsUnreadable("no socket options"))
        }
        assert(MemoryLayout<PeerCredentials>.size == 12, "struct ucred is three 32-bit fields")
        let credentials: EventLoopFuture<PeerCredentials> = options.unsafeGetSocketOption(
            level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
        return credentials.flatMapErrorThrowing { error in
            self.logger.warning("refused an engine client whose credentials cannot be read: \(error)")
            throw EngineServerError.peerCredentialsUnreadable("\(error)")
        }.flatMapThrowing { peer in
            guard peer.uid == allowedUID else {
                self.logger.warning(
                    "refused an engine client running as another user",
                    metadata: ["peer.uid": "\(peer.uid)", "peer.pid": "\(peer.pid)", "allowed.uid": "\(allowedUID)"])
                throw EngineServerError.peerRefused(uid: peer.uid, pid: peer.pid)
            }
            var mayRaiseEpoch = true
            if let supervisor {
                mayRaiseEpoch = peer.pid == supervisor || ProcessTable.parent(of: peer.pid) == supervisor
            }
            try self.configure(channel, mayRaiseEpoch: mayRaiseEpoch)
        }
    }

    /// The pipeline of one connection: frame decoder, frame encoder, dispatcher.
    private func configure(_ channel: any Channel, mayRaiseEpoch: Bool) throws {
        let id = self.nextConnectionID.wrappingAdd(1, ordering: .relaxed).oldValue
        let connection = EngineConnection(
            id: id, channel: channel, logger: self.logger, maxQueuedFrames: self.maxQueuedFrames, mayRaiseEpoch: mayRaiseEpoch
        ) { [weak self] delta in self?.requestsChanged(by: delta) }
        try channel.pipeline.syncOperations.addHandlers([
            ByteToMessageHandler(FrameMessageDecoder<EngineEnvelope>(maximumFrameSize: Limits.channelFrameBytes)),
            FrameMessageEncoder<EngineEnvelope>(maximumFrameSize: Limits.channelFrameBytes),
            EngineChannelHandler(server: self, connection: connection),
        ])
    }

    // MARK: Connections

    /// Number of open connections.
    package var connectionCount: Int { self.state.withLock { $0.connections.count } }

    /// Closes every connection now (their requests are aborted).
    package func closeAll() {
        for c in self.state.withLock({ Array($0.connections.values) }) { c.close() }
    }

    /// A connection became active (on its event loop).
    func opened(_ connection: EngineConnection) {
        self.state.withLock { $0.connections[connection.id] = connection }
    }

    /// A connection went inactive (on its event loop): its requests are aborted.
    func closed(_ connection: EngineConnection) {
        connection.markClosed()
        let orphans = connection.takeRequests()
        let ready = self.state.withLock { state in
            state.connections[connection.id] = nil
            return state.satisfiedWaiters()
        }
        for id in orphans { self.core.abort(id) }
        if !orphans.isEmpty {
            self.logger.info("connection closed; aborted \(orphans.count) request(s)", metadata: ["connection.id": "\(connection.id)"])
        }
        for continuation in ready { continuation.resume() }
    }

    private func requestsChanged(by delta: Int) {
        let ready = self.state.withLock { state in
            state.requests += delta
            return state.satisfiedWaiters()
        }
        for continuation in ready { continuation.resume() }
    }

    // MARK: Draining

    /// Whether the server is draining (new generations are refused).
    package var isDraining: Bool { self.state.withLock { $0.draining } }

    /// Refuses new generations from now on (UNAVAILABLE); requests in flight go on.
    package func beginDrain() {
        self.state.withLock { $0.draining = true }
    }

    /// Drains: refuses new generations, waits until every request in flight has finished,
    /// then closes each connection once its queued frames are written; returns when no
    /// connection is left. When `grace` runs out first (or the task is cancelled), the
    /// connections left are closed at once and their requests aborted.
    package func drain(grace: Duration) async {
        self.beginDrain()
        self.logger.info(
            "draining: new generations are refused, running ones may finish",
            metadata: ["requests.running": "\(self.state.withLock { $0.requests })", "grace": "\(grace)"])
        let deadline = ContinuousClock.now.advanced(by: grace)
        var finished = await Self.wait(until: deadline) { await self.wait(until: .noRequests) }
        if finished {
            for c in self.state.withLock({ Array($0.connections.values) }) { c.closeWhenWritten() }
            finished = await Self.wait(until: deadline) { await self.wait(until: .noConnections) }
        }
        if !finished || Task.isCancelled {
            let (requests, connections) = self.state.withLock { ($0.requests, $0.connections.count) }
            self.logger.warning(
                "drain cut short: closing the connections left, aborting their requests",
                metadata: ["requests.running": "\(requests)", "connections": "\(connections)", "grace": "\(grace)"])
            self.closeAll()
            // Closed channels go inactive on their event loop right after.
            _ = await Self.wait(until: ContinuousClock.now.advanced(by: .seconds(5))) {
                await self.wait(until: .noConnections)
            }
        } else {
            self.logger.info("drained: every generation finished and was delivered")
        }
    }

    /// Runs `body` until it returns or `deadline` passes; true when `body` returned first.
    private static func wait(
        until deadline: ContinuousClock.Instant, _ body: @escaping @Sendable () async -> Void
    ) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await body()
                return !Task.isCancelled
            }
            group.addTask {
                try? await Task.sleep(until: deadline, clock: .continuous)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
    }

    /// Returns once `condition` holds, or when the task is cancelled.
    private func wait(until condition: Condition) async {
        let id = self.state.withLock { state in
            defer { state.nextWaiterID += 1 }
            return state.nextWaiterID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = self.state.withLock { state -> Bool in
                    if case .cancelled = state.waiters[id] {
                        state.waiters[id] = nil
                        return true
                    }
                    if state.holds(condition) { return true }
                    state.waiters[id] = .waiting(condition, continuation)
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let continuation = self.state.withLock { state -> CheckedContinuation<Void, Never>? in
                switch state.waiters[id] {
                case .waiting(_, let continuation):
                    state.waiters[id] = nil
                    return continuation
                case .cancelled:
                    return nil
                case nil:
                    state.waiters[id] = .cancelled
                    return nil
                }
            }
            continuation?.resume()
        }
    }

    // MARK: Calls

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

    private static func deadlinePassed(_ deadlineUnixMs: UInt64) -> Bool {
        deadlineUnixMs != 0 && deadlineUnixMs < UInt64(Date().timeIntervalSince1970 * 1000)
    }

    /// Answers one inbound envelope (on the connection's event loop; never blocks).
    func dispatch(_ envelope: EngineEnvelope, _ c: EngineConnection) {
        let callID = envelope.callID
        let deadline = envelope.deadlineUnixMs
        func reply(_ body: EngineEnvelope.Body) { c.enqueue(EngineEnvelope(callID: callID, body: body)) }
        func result(_ status: Status) { reply(.result(CallResult(status: status))) }
        /// A generate's refusal: its one and final chunk.
        func refuse(_ g: GenerateRequest, _ status: Status) {
            reply(.chunk(GenerateChunk(requestID: g.requestID, finishReason: "error", status: status)))
        }
        if Self.deadlinePassed(deadline) {
            if case .generate(let g) = envelope.body {
                refuse(g, Status(code: .deadlineExceeded, message: "deadline passed before the request was read"))
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
                refuse(g, problem)
                return
            }
            if self.isDraining {
                refuse(g, Status(code: .unavailable, message: "the engine is shutting down"))
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
        case .tokenize(let t):
            let bytes = t.promptText.utf8.count + t.messages.reduce(0) { $0 + $1.content.utf8.count }
            self.tokenizerCall(deferred: bytes > Self.deferredPromptBytes, callID: callID, c) { () throws(Status) in
                .tokenizeReply(try EngineTokenizeCalls.tokenize(t, core: self.core))
            }
        case .detokenize(let d):
            self.tokenizerCall(deferred: d.tokens.count > Self.deferredPromptBytes / 4, callID: callID, c) { () throws(Status) in
                .detokenizeReply(try EngineTokenizeCalls.detokenize(d, core: self.core))
            }
        case .chunk, .adapterList, .healthReply, .modelInfoReply, .result, .tokenizeReply, .detokenizeReply:
            result(Status(code: .invalidArgument, message: "the engine does not accept reply messages"))
        case .none:
            result(Status(code: .invalidArgument, message: "empty engine envelope"))
        }
    }

    /// Answers a `tokenize` / `detokenize` (a `result` with the status when it fails); a
    /// large one runs off the event loop, as a large generate prompt does.
    private func tokenizerCall(
        deferred: Bool, callID: UInt64, _ c: EngineConnection, _ body: @escaping @Sendable () throws(Status) -> EngineEnvelope.Body
    ) {
        let run: @Sendable () -> Void = {
            let reply: EngineEnvelope.Body
            do throws(Status) {
                reply = try body()
            } catch {
                reply = .result(CallResult(status: error))
            }
            c.enqueue(EngineEnvelope(callID: callID, body: reply))
        }
        if deferred { self.submitQueue.async(execute: run) } else { run() }
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
        let adapterID = g.adapter.flatMap { $0.intID == 0 ? nil : $0.intID }
        var params = Self.params(g.sampling, defaults: self.core.info.generationDefaults)
        params.badWordTokenIDs = BadWords.tokenIDs(g.sampling.badWords, tokenizer: self.core.tokenizer)
        params.skipSpecialTokens = g.sampling.skipSpecialTokens
        params.cacheSalt = g.sampling.cacheSalt
        let request = GenerationRequest(id: g.requestID, prompt: prompt, adapterID: adapterID, params: params)
        c.track(g.requestID)
        if (request.prompt.textBytes ?? 0) > Self.deferredPromptBytes || adapterID.map({ self.core.adapters.needsReload($0) }) == true {
            // Reading the adapter again (file I/O) or tokenizing megabytes: not on the
            // event loop, so this and every other connection's calls are served meanwhile.
            self.submitQueue.async {
                guard !c.shouldAbort(g.requestID) else {
                    c.enqueue(EngineEnvelope(callID: callID, body: .chunk(GenerateChunk(requestID: g.requestID, finishReason: "abort"))))
                    c.untrack(g.requestID)
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
            let tokenizer = self.core.tokenizer
            try self.core.submit(request) { [weak c] event in
                guard let c else { return }
                var chunk = GenerateChunk(requestID: event.requestID, tokens: event.tokens, text: event.text)
                chunk.logprobs = event.logprobs.map { Self.wire($0, tokenizer) }
                if let prompt = event.promptLogprobs {
                    chunk.promptLogprobs = prompt.enumerated().map { Self.wire($0.element, tokenizer, noLogprob: $0.offset == 0) }
                }
                if let reason = event.finishReason {
                    chunk.finishReason = reason.rawValue
                    chunk.usage = event.usage.map {
                        LorikeetProto.Usage(
                            promptTokens: UInt32($0.promptTokens), completionTokens: UInt32($0.completionTokens),
                            cachedPromptTokens: UInt32($0.cachedPromptTokens))
                    }
                    if let error = event.error { chunk.status = Self.status(error) }
                    switch event.stopReason {
                    case .string(let text): chunk.stopReason = .string(text)
                    case .token(let id): chunk.stopReason = .token(id)
                    case nil: break
                    }
                }
                c.enqueue(EngineEnvelope(callID: callID, body: .chunk(chunk)))
                // After the last chunk is queued, so a drain that sees no request left
                // closes the connection only behind it.
                if event.finishReason != nil { c.untrack(event.requestID) }
            }
        } catch {
            if error.logDetail != nil { self.log(error, c) }
            c.enqueue(
                EngineEnvelope(
                    callID: callID, body: .chunk(GenerateChunk(requestID: request.id, finishReason: "error", status: Self.status(error)))))
            c.untrack(request.id)
        }
    }

    /// The engine's sampling parameters for the wire's: a field the request left out
    /// takes the model's generation default, else vLLM's.
    package static func params(
        _ s: LorikeetProto.SamplingParams, defaults d: GenerationDefaults
    ) -> LorikeetEngine.SamplingParams {
        let topP = s.topP ?? d.topP ?? 1
        let repetition = s.repetitionPenalty ?? d.repetitionPenalty ?? 1
        var bias: [UInt32: Float] = [:]
        for entry in s.logitBias { bias[entry.tokenID] = entry.bias }
        return LorikeetEngine.SamplingParams(
            maxTokens: s.maxTokens == 0 ? nil : Int(s.maxTokens), temperature: s.temperature ?? d.temperature ?? 1,
            topP: topP == 0 ? 1 : topP, topK: s.topK.map { Int($0) } ?? d.topK ?? 0, minP: s.minP ?? d.minP ?? 0,
            presencePenalty: s.presencePenalty, frequencyPenalty: s.frequencyPenalty,
            repetitionPenalty: repetition == 0 ? 1 : repetition, logitBias: bias, minTokens: Int(s.minTokens),
            seed: s.seed, stop: s.stop, includeStopStrInOutput: s.includeStopStrInOutput, stopTokenIDs: s.stopTokenIDs,
            ignoreEOS: s.ignoreEOS, logprobs: s.logprobs.map { Int($0) }, promptLogprobs: s.promptLogprobs.map { Int($0) },
            // Checked by EngineRequestLimits before a request gets here.
            grammar: try? StructuredConstraint.grammar(jsonSchema: s.jsonSchema, choices: s.choices))
    }

    /// The wire form of log probabilities, with each token's text.
    private static func wire(
        _ logprobs: TokenLogprobs, _ tokenizer: any EngineTokenizer, noLogprob: Bool = false
    ) -> PositionLogprobs {
        func entry(_ e: LogprobEntry) -> TokenLogprob {
            TokenLogprob(
                tokenID: e.tokenID, logprob: e.logprob, token: String(decoding: tokenizer.tokenBytes(e.tokenID), as: UTF8.self))
        }
        return PositionLogprobs(chosen: entry(logprobs.chosen), top: logprobs.top.map(entry), noLogprob: noLogprob)
    }

    /// The wire status for an engine error.
    package static func status(_ error: EngineError) -> Status {
        Status(code: StatusCode(wireValue: Int32(error.code.grpcStatusCode)), message: error.message, param: error.param ?? "")
    }
}

/// A listening socket served by an `EngineServer` (a NIO server channel).
package struct EngineListener: Sendable {
    let channel: any Channel

    /// Stops accepting (a new connection is refused); returns once the socket is closed.
    /// Connections already accepted are not touched.
    package func close() async {
        try? await self.channel.close()
    }

    /// Starts closing the socket without waiting.
    func startClosing() {
        self.channel.close(promise: nil)
    }

    /// Returns when the socket has closed, for whatever reason.
    func closed() async {
        try? await self.channel.closeFuture.get()
    }
}

/// Why the engine server could not serve, or refused a peer.
package enum EngineServerError: Error, Equatable, CustomStringConvertible {
    /// NIO could not take over the listening or connected socket.
    case cannotServe(String)
    /// `SO_PEERCRED` could not be read for an accepted connection (it was closed).
    case peerCredentialsUnreadable(String)
    /// An accepted connection's peer runs as another user (it was closed unread).
    case peerRefused(uid: UInt32, pid: Int32)
    /// The listening socket closed while the server was not draining.
    case listenerClosed

    package var description: String {
        switch self {
        case .cannotServe(let reason): "cannot serve the engine channel: \(reason)"
        case .peerCredentialsUnreadable(let reason): "cannot read the peer's credentials: \(reason)"
        case .peerRefused(let uid, let pid): "peer pid \(pid) runs as uid \(uid)"
        case .listenerClosed: "the engine socket's listener closed"
        }
    }
}

/// Linux's `struct ucred` (`SO_PEERCRED`): Glibc declares it only under `_GNU_SOURCE`, so
/// Swift does not see it. Three 32-bit fields in the kernel's order; Swift lays out a
/// struct's stored properties in declaration order, so this matches it byte for byte.
struct PeerCredentials: Sendable {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
}

/// The engine's side of `tokenize` / `detokenize` (vLLM's `POST /tokenize` and
/// `POST /detokenize`) over the engine's own tokenizer.
///
/// Bounded like a generate's prompt (`EngineRequestLimits`): prompt text and message
/// contents at most `Limits.promptBytes`, `Limits.messages` messages, `Limits.promptTokens`
/// ids to decode; a prompt longer than the context length is refused (vLLM's newest
/// Python server does the same with `max_model_len`), and an answer that could not fit a
/// frame is refused instead of sent. Every refusal is INVALID_ARGUMENT with `param`.
private enum EngineTokenizeCalls {
    /// Room left in a frame for the rest of the envelope.
    static let replyBudgetBytes = Limits.channelFrameBytes - 64 * 1024

    static func tokenize(_ request: TokenizeRequest, core: EngineCore) throws(Status) -> TokenizeReply {
        let probe = GenerateRequest(requestID: "tokenize", promptText: request.promptText, messages: request.messages)
        if let problem = EngineRequestLimits.problem(probe) { throw problem }
        let tokenizer = core.tokenizer
        let text: String
        if request.messages.isEmpty {
            text = request.promptText
        } else {
            text = Self.renderChat(
                request.messages.map { ChatTurn(role: $0.role, content: $0.content) }, tokenizer: tokenizer,
                addGenerationPrompt: request.addGenerationPrompt)
        }
        let tokens = request.addSpecialTokens ? tokenizer.encodePrompt(text) : tokenizer.encode(text)
        let context = core.info.contextLength
        guard tokens.count <= context else {
            throw Status(
                code: .invalidArgument,
                message:
                    "This model's maximum context length is \(context) tokens. However, your request has \(tokens.count) input tokens. Please reduce the length of the input messages.",
                param: request.messages.isEmpty ? "prompt" : "messages")
        }
        var strs: [String] = []
        if request.returnTokenStrs {
            var bytes = 0
            strs.reserveCapacity(tokens.count)
            for token in tokens {
                let piece = Self.piece(token, tokenizer: tokenizer)
                bytes += piece.utf8.count + 6
                strs.append(piece)
            }
            guard bytes + tokens.count * 5 <= Self.replyBudgetBytes else {
                throw Status(
                    code: .invalidArgument, message: "The token strings of this prompt do not fit one answer; tokenize a shorter prompt.",
                    param: "return_token_strs")
            }
        }
        return TokenizeReply(tokens: tokens, tokenStrs: strs, maxModelLength: UInt32(clamping: context))
    }

    static func detokenize(_ request: DetokenizeRequest, core: EngineCore) throws(Status) -> DetokenizeReply {
        guard request.tokens.count <= Limits.promptTokens else {
            throw Status(
                code: .invalidArgument, message: "'tokens' has \(request.tokens.count) ids; the limit is \(Limits.promptTokens).",
                param: "tokens")
        }
        let tokenizer = core.tokenizer
        if let bad = request.tokens.first(where: { Int($0) >= tokenizer.vocabSize }) {
            throw Status(
                code: .invalidArgument, message: "token id \(bad) is outside the vocabulary (size \(tokenizer.vocabSize)).",
                param: "tokens")
        }
        // As vLLM's `/detokenize` (`skip_special_tokens=False`): control tokens keep their text.
        var bytes: [UInt8] = []
        for token in request.tokens {
            let text = tokenizer.tokenBytes(token)
            bytes += text.isEmpty ? tokenizer.specialTokenBytes(token) : text
        }
        let text = String(decoding: bytes, as: UTF8.self)
        guard text.utf8.count <= Self.replyBudgetBytes else {
            throw Status(
                code: .invalidArgument, message: "The decoded text does not fit one answer; detokenize fewer ids.", param: "tokens")
        }
        return DetokenizeReply(prompt: Self.withoutNUL(text))
    }

    /// The assistant turn openers the engine's templates end with: the byte tokenizer's
    /// (`ByteTokenizer`) and ChatML's (`GGUFTokenizer`).
    static let generationPrompts = ["<|assistant|>\n", "<|im_start|>assistant\n"]

    /// The chat prompt, with or without the assistant turn opener.
    static func renderChat(_ turns: [ChatTurn], tokenizer: any EngineTokenizer, addGenerationPrompt: Bool) -> String {
        let rendered = tokenizer.renderChat(turns)
        guard !addGenerationPrompt, let opener = Self.generationPrompts.first(where: { rendered.hasSuffix($0) }) else {
            return rendered
        }
        return String(rendered.utf8.dropLast(opener.utf8.count))!
    }

    /// A token as text (the bytes it stands for; empty for a control token). vLLM returns
    /// the vocabulary piece (`convert_ids_to_tokens`, e.g. `Ġworld`) instead.
    static func piece(_ token: UInt32, tokenizer: any EngineTokenizer) -> String {
        Self.withoutNUL(String(decoding: tokenizer.tokenBytes(token), as: UTF8.self))
    }

    /// The channels carry strings as C strings: U+0000 would cut them, so it becomes U+FFFD.
    static func withoutNUL(_ text: String) -> String {
        text.utf8.contains(0) ? text.replacing("\u{0}", with: "\u{FFFD}") : text
    }
}
