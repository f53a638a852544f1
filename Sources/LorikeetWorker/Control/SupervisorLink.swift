package import Logging
import LorikeetChannels
package import LorikeetProto
import Synchronization

/// The worker's end of the supervisor's control channel (a socketpair inherited as
/// `--control-fd`, normally fd 4).
///
/// A `FramedCallClient` on SwiftNIO adopts the socket (no threads of its own): replies to
/// this worker's calls resume their waiters by `call_id`; everything else goes to
/// `onMessage`, on the event loop, in arrival order. Sends may come from any thread and
/// never block. When the supervisor goes away (EOF) or sends garbage, `onLost` runs once:
/// a supervised worker cannot continue without its supervisor.
package final class SupervisorLink: Sendable {
    /// The call id of the routed mutation the current task is serving, so the leader's
    /// commit carries it and the supervisor can settle the caller if the leader dies.
    @TaskLocal package static var routedCallID: UInt64?

    private let client: FramedCallClient<ControlEnvelope>
    private let logger: Logger
    private let handlers: Handlers

    /// Where inbound messages and the channel's end go, set by `start`.
    private final class Handlers: Sendable {
        private struct State {
            var onMessage: (@Sendable (ControlEnvelope) -> Void)?
            var onLost: (@Sendable (String) -> Void)?
            var lost = false
        }
        private let state = Mutex(State())

        func set(onMessage: @escaping @Sendable (ControlEnvelope) -> Void, onLost: @escaping @Sendable (String) -> Void) {
            self.state.withLock {
                $0.onMessage = onMessage
                $0.onLost = onLost
            }
        }

        func message(_ envelope: ControlEnvelope) {
            self.state.withLock { $0.onMessage }?(envelope)
        }

        func lost(_ reason: String) {
            let onLost = self.state.withLock { state -> (@Sendable (String) -> Void)? in
                defer { state.lost = true }
                return state.lost ? nil : state.onLost
            }
            onLost?(reason)
        }
    }

    package init(fd: Int32, logger: Logger) {
        let handlers = Handlers()
        self.handlers = handlers
        self.logger = logger
        // The worker's own call ids live in the upper half so they never collide with the
        // ids the supervisor uses for calls it routes here.
        self.client = FramedCallClient(
            endpoint: .connectedSocket(fd: fd), configuration: .init(firstCallID: 1 << 63), logger: logger,
            onUnsolicited: { handlers.message($0) },
            onConnectionLost: { reason in handlers.lost("control channel ended: \(reason)") })
    }

    /// Adopts the socket. `onMessage` runs for every message that is not a reply to one of
    /// our calls; `onLost` runs once when the channel ends (or cannot be adopted).
    package func start(onMessage: @escaping @Sendable (ControlEnvelope) -> Void, onLost: @escaping @Sendable (String) -> Void) async {
        self.handlers.set(onMessage: onMessage, onLost: onLost)
        do {
            try await self.client.connect()
        } catch {
            self.handlers.lost("cannot use the control channel: \(error)")
        }
    }

    /// Sends a one-way message (or a reply, with the caller's `callID`). Never blocks.
    package func send(_ body: ControlEnvelope.Body, callID: UInt64 = 0) {
        self.client.post(ControlEnvelope(callID: callID, body: body)) { [logger] error in
            if case .messageTooLarge = error {
                // Too large to send: nothing was written, the channel is intact. Only this
                // message is lost; its caller times out or gets the error reply it sends next.
                logger.error("message too large for the control channel; not sent", metadata: ["error": "\(error)"])
            } else {
                // The client closed the channel: `onLost` follows.
                logger.error("cannot write to the supervisor", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Sends a call and waits for the reply with the same call id; nil if the channel
    /// ended or the timeout passed first.
    package func call(_ body: ControlEnvelope.Body, callID: UInt64? = nil, timeout: Duration) async -> ControlEnvelope.Body? {
        try? await self.client.call(ControlEnvelope(body: body), callID: callID, timeout: timeout).body
    }
}

/// Commits through the supervisor: it persists the change, fans it out and replies once
/// every worker applied it (this leader's replica included: the change arrives on the
/// control channel before the reply).
package final class SupervisorCommitter: TableCommitter {
    private let link: SupervisorLink
    private let timeout: Duration

    package init(link: SupervisorLink, timeout: Duration = .seconds(60)) {
        self.link = link
        self.timeout = timeout
    }

    package func commit(_ change: TableChange, baseVersion: UInt64, epoch: UInt64) async throws(Status) -> UInt64 {
        let request = CommitRequest(epoch: epoch, baseVersion: baseVersion, change: change)
        let reply = await self.link.call(.commit(request), callID: SupervisorLink.routedCallID, timeout: self.timeout)
        guard case .commitReply(let result) = reply else {
            throw Status(code: .unavailable, message: "the supervisor did not confirm the commit; the adapter table is unchanged")
        }
        guard result.status.isOK else { throw result.status }
        return result.version
    }

    /// Fleet mode: an empty commit is the supervisor's and the agent's barrier (no write to
    /// etcd; the agent answers once every live node applied this node's revision).
    package func confirmFleetApplied(epoch: UInt64) async throws(Status) {
        _ = try await self.commit(TableChange(), baseVersion: 0, epoch: epoch)
    }
}

/// A follower's mutator: the leader does the work; the request travels through the
/// supervisor and the reply comes back the same way.
package final class RoutedMutator: AdapterMutator {
    private let link: SupervisorLink
    private let slot: Int32
    private let timeout: Duration

    package init(link: SupervisorLink, slot: Int32, timeout: Duration = .seconds(180)) {
        self.link = link
        self.slot = slot
        self.timeout = timeout
    }

    package func load(_ request: LoadAdapterRequest) async -> AdapterMutationReply {
        var request = request
        request.originSlot = self.slot
        return Self.reply(await self.link.call(.load(request), timeout: self.timeout))
    }

    package func unload(_ request: UnloadAdapterRequest) async -> AdapterMutationReply {
        var request = request
        request.originSlot = self.slot
        return Self.reply(await self.link.call(.unload(request), timeout: self.timeout))
    }

    private static func reply(_ body: ControlEnvelope.Body?) -> AdapterMutationReply {
        guard case .mutationReply(let reply) = body else {
            return AdapterMutationReply(
                status: Status(
                    code: .unavailable, message: "no reply from the adapter leader; the outcome is unknown, list adapters to check"))
        }
        return reply
    }
}
