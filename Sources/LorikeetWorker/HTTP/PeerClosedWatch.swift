import NIOCore

/// Tells a route when its client has gone: the connection's input ended (the client closed
/// or shut down its side) or the connection dropped.
///
/// A generation that writes nothing until it ends (not streamed, or streamed but before its
/// first token) would otherwise learn of a disconnect only when it finally writes: a client
/// that sends a long prompt and gives up kept the engine busy for the whole prefill, ahead of
/// everyone else. vLLM aborts such requests the same way (uvicorn's `is_disconnected`, which
/// a half-close also sets). Once the first bytes are written, a failed write tells the route
/// too (`streamReply`).
///
/// One handler per connection, first in the pipeline; its state lives on the event loop.
final class PeerClosedWatch: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// One route's interest in the client going away; `cancel` when the route is done.
    final class Registration: Sendable {
        private let channel: any Channel

        fileprivate init(channel: any Channel) { self.channel = channel }

        /// Forgets the action (a keep-alive connection serves many requests).
        func cancel() {
            let key = ObjectIdentifier(self)
            let channel = self.channel
            channel.eventLoop.execute {
                (try? channel.pipeline.syncOperations.handler(type: PeerClosedWatch.self))?.actions[key] = nil
            }
        }
    }

    private var gone = false
    private var actions: [ObjectIdentifier: @Sendable () -> Void] = [:]

    /// Adds the watch to a connection's pipeline. Call on its event loop, before it reads.
    static func install(on channel: any Channel) throws {
        try channel.pipeline.syncOperations.addHandler(PeerClosedWatch(), position: .first)
    }

    /// Calls `action` on the connection's event loop once the client has gone (at once when
    /// it already has). A connection without the watch never calls it.
    static func whenGone(_ channel: any Channel, _ action: @escaping @Sendable () -> Void) -> Registration {
        let registration = Registration(channel: channel)
        let key = ObjectIdentifier(registration)
        channel.eventLoop.execute {
            guard let watch = try? channel.pipeline.syncOperations.handler(type: PeerClosedWatch.self) else {
                if !channel.isActive { action() }
                return
            }
            if watch.gone { action() } else { watch.actions[key] = action }
        }
        return registration
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { context.fireChannelRead(data) }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed { self.peerGone() }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.peerGone()
        context.fireChannelInactive()
    }

    private func peerGone() {
        guard !self.gone else { return }
        self.gone = true
        let actions = self.actions
        self.actions = [:]
        for action in actions.values { action() }
    }
}

@available(*, unavailable)
extension PeerClosedWatch: Sendable {}
