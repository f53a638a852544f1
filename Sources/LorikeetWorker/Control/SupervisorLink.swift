import Foundation
public import Logging
public import LorikeetProto
import Synchronization

/// The worker's end of the supervisor's control channel (a socketpair inherited as
/// `--control-fd`, normally fd 4).
///
/// A dedicated reader thread receives `ControlEnvelope` frames: replies to this worker's
/// calls resume their waiters by `call_id`; everything else goes to `onMessage`. Sends
/// may come from any thread. When the supervisor goes away (EOF) or sends garbage,
/// `onLost` runs once: a supervised worker cannot continue without its supervisor.
public final class SupervisorLink: Sendable {
    /// The call id of the routed mutation the current task is serving, so the leader's
    /// commit carries it and the supervisor can settle the caller if the leader dies.
    @TaskLocal public static var routedCallID: UInt64?

    private let connection: FramedConnection<ControlEnvelope>
    private let logger: Logger
    private let state = Mutex(State())

    private struct State {
        /// The worker's own call ids live in the upper half so they never collide with
        /// the ids the supervisor uses for calls it routes here.
        var nextCallID: UInt64 = 1 << 63
        var waiting: [UInt64: CheckedContinuation<ControlEnvelope.Body?, Never>] = [:]
        var lost = false
    }

    public init(fd: Int32, logger: Logger) {
        self.connection = FramedConnection(fd: fd)
        self.logger = logger
    }

    /// Starts the reader thread. `onMessage` runs on it for every message that is not a
    /// reply to one of our calls; `onLost` runs once when the channel ends.
    public func start(onMessage: @escaping @Sendable (ControlEnvelope) -> Void, onLost: @escaping @Sendable (String) -> Void) {
        let thread = Thread { [self] in
            var reason = "the supervisor closed the control channel"
            while true {
                let envelope: ControlEnvelope?
                do {
                    envelope = try self.connection.receive()
                } catch {
                    reason = "control channel failed: \(error)"
                    break
                }
                guard let envelope else { break }
                let waiter = self.state.withLock { $0.waiting.removeValue(forKey: envelope.callID) }
                if let waiter {
                    waiter.resume(returning: envelope.body)
                } else {
                    onMessage(envelope)
                }
            }
            let waiters = self.state.withLock { state -> [CheckedContinuation<ControlEnvelope.Body?, Never>] in
                state.lost = true
                defer { state.waiting = [:] }
                return Array(state.waiting.values)
            }
            for waiter in waiters { waiter.resume(returning: nil) }
            onLost(reason)
        }
        thread.name = "lorikeet-control"
        thread.start()
    }

    /// Sends a one-way message (or a reply, with the caller's `callID`).
    public func send(_ body: ControlEnvelope.Body, callID: UInt64 = 0) {
        do {
            try self.connection.send(ControlEnvelope(callID: callID, body: body))
        } catch .frame(let frameError) {
            // Too large to send: nothing was written, the channel is intact. Only this
            // message is lost; its caller times out or gets the error reply it sends next.
            self.logger.error("message too large for the control channel; not sent", metadata: ["error": "\(frameError)"])
        } catch {
            self.logger.error("cannot write to the supervisor", metadata: ["error": "\(error)"])
            self.connection.close()
        }
    }

    /// Sends a call and waits for the reply with the same call id; nil if the channel
    /// ended or the timeout passed first.
    public func call(_ body: ControlEnvelope.Body, callID: UInt64? = nil, timeout: Duration) async -> ControlEnvelope.Body? {
        let id = callID ?? self.state.withLock { state in
            defer { state.nextCallID &+= 1 }
            return state.nextCallID
        }
        let timer = Task {
            try? await Task.sleep(for: timeout)
            let waiter = self.state.withLock { $0.waiting.removeValue(forKey: id) }
            waiter?.resume(returning: nil)
        }
        defer { timer.cancel() }
        return await withCheckedContinuation { continuation in
            let lost = self.state.withLock { state -> Bool in
                if state.lost { return true }
                state.waiting[id] = continuation
                return false
            }
            if lost {
                continuation.resume(returning: nil)
                return
            }
            do {
                try self.connection.send(ControlEnvelope(callID: id, body: body))
            } catch {
                let waiter = self.state.withLock { $0.waiting.removeValue(forKey: id) }
                waiter?.resume(returning: nil)
            }
        }
    }
}

/// Commits through the supervisor: it persists the change, fans it out and replies once
/// every worker applied it (this leader's replica included: the change arrives on the
/// control channel before the reply).
public final class SupervisorCommitter: TableCommitter {
    private let link: SupervisorLink
    private let timeout: Duration

    public init(link: SupervisorLink, timeout: Duration = .seconds(60)) {
        self.link = link
        self.timeout = timeout
    }

    public func commit(_ change: TableChange, baseVersion: UInt64, epoch: UInt64) async throws(Status) -> UInt64 {
        let request = CommitRequest(epoch: epoch, baseVersion: baseVersion, change: change)
        let reply = await self.link.call(.commit(request), callID: SupervisorLink.routedCallID, timeout: self.timeout)
        guard case .commitReply(let result) = reply else {
            throw Status(code: .unavailable, message: "the supervisor did not confirm the commit; the adapter table is unchanged")
        }
        guard result.status.isOK else { throw result.status }
        return result.version
    }
}

/// A follower's mutator: the leader does the work; the request travels through the
/// supervisor and the reply comes back the same way.
public final class RoutedMutator: AdapterMutator {
    private let link: SupervisorLink
    private let slot: Int32
    private let timeout: Duration

    public init(link: SupervisorLink, slot: Int32, timeout: Duration = .seconds(180)) {
        self.link = link
        self.slot = slot
        self.timeout = timeout
    }

    public func load(_ request: LoadAdapterRequest) async -> AdapterMutationReply {
        var request = request
        request.originSlot = self.slot
        return Self.reply(await self.link.call(.load(request), timeout: self.timeout))
    }

    public func unload(_ request: UnloadAdapterRequest) async -> AdapterMutationReply {
        var request = request
        request.originSlot = self.slot
        return Self.reply(await self.link.call(.unload(request), timeout: self.timeout))
    }

    private static func reply(_ body: ControlEnvelope.Body?) -> AdapterMutationReply {
        guard case .mutationReply(let reply) = body else {
            return AdapterMutationReply(
                status: Status(code: .unavailable, message: "no reply from the adapter leader; the outcome is unknown, list adapters to check"))
        }
        return reply
    }
}
