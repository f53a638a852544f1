import Foundation
import LorikeetProto
import LorikeetTestSupport
import Synchronization
import Testing

/// The fixture of `Tests/Fixtures/make_tiny_llama.py`, generated once per script version
/// (same cache directory as LorikeetEngineTests' helper).
enum ServerFixture {
    struct Failure: Error, CustomStringConvertible { var description: String }

    static let repoRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    static func directory() throws -> String { try TestEnvironment.fixtureDirectory() }

    struct Reference: Decodable {
        struct Case: Decodable {
            var greedy: [UInt32]
        }
        var promptTokens: [UInt32]
        var cases: [String: Case]

        enum CodingKeys: String, CodingKey {
            case cases
            case promptTokens = "prompt_tokens"
        }
    }

    static func reference() throws -> Reference {
        try JSONDecoder().decode(
            Reference.self, from: Data(contentsOf: URL(fileURLWithPath: try self.directory() + "/reference.json")))
    }
}

/// A blocking engine-channel client for tests: sequential calls on one connection.
final class TestEngineClient: Sendable {
    let connection: FramedConnection<EngineEnvelope>
    private let nextCall = Atomic<UInt64>(1)

    init(fd: Int32) {
        self.connection = FramedConnection(fd: fd)
    }

    convenience init(path: String) throws {
        self.init(fd: try UnixSocket.connect(path: path))
    }

    /// Sends a call and returns the first reply with its call id.
    func call(_ body: EngineEnvelope.Body) throws -> EngineEnvelope.Body? {
        let id = self.nextCall.wrappingAdd(1, ordering: .relaxed).oldValue
        try self.connection.send(EngineEnvelope(callID: id, body: body))
        while let reply = try self.connection.receive() {
            if reply.callID == id { return reply.body }
        }
        return nil
    }

    func result(_ body: EngineEnvelope.Body) throws -> Status {
        guard case .result(let r) = try self.call(body) else { throw ServerFixture.Failure(description: "expected a result") }
        return r.status
    }

    /// Runs a generate call to its final chunk; returns all chunks.
    func generate(_ request: GenerateRequest, onChunk: (GenerateChunk) -> Void = { _ in }) throws -> [GenerateChunk] {
        let id = self.nextCall.wrappingAdd(1, ordering: .relaxed).oldValue
        try self.connection.send(EngineEnvelope(callID: id, body: .generate(request)))
        var chunks: [GenerateChunk] = []
        while let reply = try self.connection.receive() {
            guard reply.callID == id, case .chunk(let c) = reply.body else { continue }
            chunks.append(c)
            onChunk(c)
            if !c.finishReason.isEmpty { return chunks }
        }
        throw ServerFixture.Failure(description: "connection closed mid-stream")
    }

    static func greedy(_ id: String, prompt: [UInt32], adapter: UInt64? = nil, maxTokens: UInt32 = 16) -> GenerateRequest {
        GenerateRequest(
            requestID: id, promptTokens: prompt, sampling: SamplingParams(maxTokens: maxTokens, ignoreEOS: true),
            adapter: adapter.map { AdapterRef(intID: $0) })
    }
}

extension Array where Element == GenerateChunk {
    var tokens: [UInt32] { self.flatMap(\.tokens) }
    var finish: String { self.last?.finishReason ?? "" }
}

/// Runs `body` on `count` threads at once and waits for all of them.
func onThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let group = DispatchGroup()
    for i in 0..<count {
        group.enter()
        let t = Thread {
            body(i)
            group.leave()
        }
        t.start()
    }
    group.wait()
}

/// An engine-channel client for tests that keeps several calls in flight on one
/// connection: a reader thread files every reply under its call id, in arrival order.
final class MultiplexEngineClient: Sendable {
    struct Reply: Sendable {
        var sequence: Int
        var body: EngineEnvelope.Body?
    }

    let connection: FramedConnection<EngineEnvelope>
    private let nextCall = Atomic<UInt64>(1)
    private let state = Mutex<(replies: [UInt64: [Reply]], count: Int, closed: Bool)>(([:], 0, false))
    private let arrived = DispatchSemaphore(value: 0)

    init(fd: Int32) {
        self.connection = FramedConnection(fd: fd)
        let thread = Thread { [self] in
            while let envelope = try? self.connection.receive() {
                self.state.withLock { s in
                    s.count += 1
                    s.replies[envelope.callID, default: []].append(Reply(sequence: s.count, body: envelope.body))
                }
                self.arrived.signal()
            }
            self.state.withLock { $0.closed = true }
            self.arrived.signal()
        }
        thread.start()
    }

    /// Sends a call; returns its call id.
    @discardableResult
    func send(_ body: EngineEnvelope.Body, deadlineUnixMs: UInt64 = 0) throws -> UInt64 {
        let id = self.nextCall.wrappingAdd(1, ordering: .relaxed).oldValue
        try self.connection.send(EngineEnvelope(callID: id, deadlineUnixMs: deadlineUnixMs, body: body))
        return id
    }

    /// Whether the server closed the connection.
    var isClosed: Bool { self.state.withLock { $0.closed } }

    /// The replies of `callID` once `done` holds for them (or nil after `timeout` seconds).
    func wait(_ callID: UInt64, timeout: Double = 60, until done: ([Reply]) -> Bool) -> [Reply]? {
        let end = Date().addingTimeInterval(timeout)
        while true {
            let (replies, closed) = self.state.withLock { ($0.replies[callID] ?? [], $0.closed) }
            if done(replies) { return replies }
            if closed || Date() > end { return nil }
            _ = self.arrived.wait(timeout: .now() + .milliseconds(50))
        }
    }

    /// The single reply of a unary call.
    func reply(_ callID: UInt64, timeout: Double = 60) -> Reply? {
        self.wait(callID, timeout: timeout) { !$0.isEmpty }?.first
    }

    /// The chunks of a generate call up to its final one.
    func stream(_ callID: UInt64, timeout: Double = 60) -> [GenerateChunk]? {
        self.wait(callID, timeout: timeout) { replies in
            replies.contains { if case .chunk(let c) = $0.body { !c.finishReason.isEmpty } else { false } }
        }?.compactMap { if case .chunk(let c) = $0.body { c } else { nil } }
    }

    /// The sequence number of the first reply of `callID`, once there is one.
    func firstSequence(_ callID: UInt64) -> Int? {
        self.state.withLock { $0.replies[callID]?.first?.sequence }
    }
}

extension MultiplexEngineClient.Reply {
    var status: Status? {
        switch self.body {
        case .result(let r): r.status
        case .chunk(let c): c.status
        default: nil
        }
    }
}
