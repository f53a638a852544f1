import Foundation
import LorikeetProto
import Synchronization

/// A scripted engine process twin: a real Unix-socket server speaking the engine channel,
/// so the worker's `EngineClient` is exercised for real while the route tests stay fast
/// and independent of the built-in engine. Generation emits one letter per token, shifted
/// by the adapter's id, `tokenDelay` apart; aborts stop it with finish reason "abort".
final class FakeEngine: Sendable {
    struct State {
        var adapters: [UInt64: EngineAdapter] = [:]
        var maxEpoch: UInt64 = 0
        var running: Set<String> = []
        var aborted: Set<String> = []
        var abortRequests: [String] = []
        var generateRequests: [GenerateRequest] = []
        var connections: [FramedConnection<EngineEnvelope>] = []
        var refuseAdds = false
        /// Removals answer INTERNAL (an engine that cannot let an adapter go).
        var refuseRemovals = false
        /// Every AddAdapter call received, accepted or not.
        var addAttempts = 0
    }

    let path: String
    let modelName: String
    let tokenDelay: Duration
    let state = Mutex(State())
    private let listener: Int32

    init(modelName: String = "tiny-llama", tokenDelay: Duration = .zero) throws {
        self.path = NSTemporaryDirectory() + "lk-engine-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        self.modelName = modelName
        self.tokenDelay = tokenDelay
        self.listener = try UnixSocket.listen(path: self.path)
        let thread = Thread { [listener = self.listener] in
            while let fd = try? UnixSocket.accept(listener: listener) {
                let connection = FramedConnection<EngineEnvelope>(fd: fd)
                self.state.withLock { $0.connections.append(connection) }
                let reader = Thread { self.serve(connection) }
                reader.start()
            }
            // Only this thread closes the listener, after its last accept: the fd number
            // cannot be reused under a pending accept.
            close(listener)
        }
        thread.start()
    }

    /// Stops listening and drops every connection (the worker sees the engine die).
    func stop() {
        shutdown(self.listener, Int32(SHUT_RDWR))  // wakes the accept thread, which closes it
        unlink(self.path)
        let connections = self.state.withLock { state in
            defer { state.connections = [] }
            return state.connections
        }
        for connection in connections { connection.close() }
    }

    var runningCount: Int { self.state.withLock { $0.running.count } }

    private func reply(_ connection: FramedConnection<EngineEnvelope>, _ callID: UInt64, _ body: EngineEnvelope.Body) {
        try? connection.send(EngineEnvelope(callID: callID, body: body))
    }

    private func result(_ code: StatusCode = .ok, _ message: String = "") -> EngineEnvelope.Body {
        .result(CallResult(status: Status(code: code, message: message)))
    }

    private func serve(_ connection: FramedConnection<EngineEnvelope>) {
        while let envelope = try? connection.receive() {
            let id = envelope.callID
            switch envelope.body {
            case .modelInfo:
                self.reply(
                    connection, id,
                    .modelInfoReply(
                        ModelInfo(modelName: self.modelName, architecture: "LlamaForCausalLM", vocabSize: 258, contextLength: 256)))
            case .health:
                let (running, epoch) = self.state.withLock { ($0.running.count, $0.maxEpoch) }
                self.reply(connection, id, .healthReply(HealthReply(status: .ok, maxEpoch: epoch, runningRequests: UInt32(running))))
            case .listAdapters:
                let adapters = self.state.withLock { Array($0.adapters.values).sorted { $0.intID < $1.intID } }
                self.reply(connection, id, .adapterList(EngineAdapterList(adapters: adapters)))
            case .addAdapter(let request):
                let outcome = self.state.withLock { state -> EngineEnvelope.Body in
                    state.addAttempts += 1
                    if request.epoch < state.maxEpoch { return self.result(.failedPrecondition, "stale epoch \(request.epoch)") }
                    state.maxEpoch = request.epoch
                    if state.refuseAdds || request.path.contains("refuse") {
                        return self.result(.invalidArgument, "adapter_config.json is missing in \(request.path)")
                    }
                    if state.adapters[request.intID] != nil, !request.replace {
                        return self.result(.alreadyExists, "adapter id \(request.intID) is loaded")
                    }
                    state.adapters[request.intID] = EngineAdapter(name: request.name, intID: request.intID, path: request.path, rank: 8)
                    return self.result()
                }
                self.reply(connection, id, outcome)
            case .removeAdapter(let request):
                let outcome = self.state.withLock { state -> EngineEnvelope.Body in
                    if request.epoch < state.maxEpoch { return self.result(.failedPrecondition, "stale epoch") }
                    state.maxEpoch = request.epoch
                    if state.refuseRemovals { return self.result(.internal, "adapter \(request.intID) is pinned by the engine") }
                    guard state.adapters.removeValue(forKey: request.intID) != nil else {
                        return self.result(.notFound, "no adapter \(request.intID)")
                    }
                    return self.result()
                }
                self.reply(connection, id, outcome)
            case .abort(let request):
                self.state.withLock {
                    $0.aborted.insert(request.requestID)
                    $0.abortRequests.append(request.requestID)
                }
            case .generate(let request):
                self.state.withLock {
                    $0.running.insert(request.requestID)
                    $0.generateRequests.append(request)
                }
                let thread = Thread { self.generate(request, callID: id, connection: connection) }
                thread.start()
            default:
                self.reply(connection, id, self.result(.unimplemented, "fake engine"))
            }
        }
    }

    private func generate(_ request: GenerateRequest, callID: UInt64, connection: FramedConnection<EngineEnvelope>) {
        defer { self.state.withLock { _ = $0.running.remove(request.requestID) } }
        var shift: UInt32 = 0
        if let adapter = request.adapter {
            let known = self.state.withLock { $0.adapters[adapter.intID] != nil }
            guard known else {
                let chunk = GenerateChunk(
                    requestID: request.requestID, finishReason: "error",
                    status: Status(code: .invalidArgument, message: "adapter \(adapter.intID) is not loaded"))
                self.reply(connection, callID, .chunk(chunk))
                return
            }
            shift = UInt32(adapter.intID)
        }
        let prompt = UInt32(request.promptTokens.count + request.promptText.utf8.count + request.messages.count)
        let count = Int(request.sampling.maxTokens)
        for index in 0..<count {
            if self.tokenDelay > .zero {
                Thread.sleep(
                    forTimeInterval: Double(self.tokenDelay.components.attoseconds) / 1e18 + Double(self.tokenDelay.components.seconds))
            }
            if self.state.withLock({ $0.aborted.contains(request.requestID) }) {
                self.reply(connection, callID, .chunk(GenerateChunk(requestID: request.requestID, finishReason: "abort")))
                return
            }
            let token = 65 + (UInt32(index) + shift) % 26
            let last = index == count - 1
            let chunk = GenerateChunk(
                requestID: request.requestID, tokens: [token], text: String(UnicodeScalar(UInt8(token))),
                finishReason: last ? "length" : "",
                usage: last ? Usage(promptTokens: prompt, completionTokens: UInt32(count)) : nil)
            do {
                try connection.send(EngineEnvelope(callID: callID, body: .chunk(chunk)))
            } catch {
                return
            }
        }
    }
}
