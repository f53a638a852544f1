import Foundation
import Logging
import ServiceLifecycle

/// The engine process's server as a swift-service-lifecycle `Service` (`lorikeet engine`).
///
/// `run()` serves the engine channel on `listener` until one of:
/// - graceful shutdown (SIGTERM): stops accepting (the listener closes, so a new
///   connection is refused), refuses new generations, lets the running ones finish and be
///   delivered, then closes each connection; bounded by `drainGrace` (then whatever is
///   left is closed and aborted). Returns normally, so the process exits 0;
/// - cancellation (SIGINT, SIGQUIT, another service failing): closes everything at once
///   and returns;
/// - the listener failing on its own: throws `EngineServerError.listenerClosed`.
package struct EngineService: Service {
    private let server: EngineServer
    private let listener: Int32
    private let allowedUID: UInt32
    private let supervisor: Int32?
    private let drainGrace: Duration

    /// A service for `server` that takes over the listening socket `listener` (see
    /// `EngineServer.listen` for `allowedUID` and `supervisor`).
    package init(server: EngineServer, listener: Int32, allowedUID: UInt32 = getuid(), supervisor: Int32? = nil, drainGrace: Duration) {
        self.server = server
        self.listener = listener
        self.allowedUID = allowedUID
        self.supervisor = supervisor
        self.drainGrace = drainGrace
    }

    package func run() async throws {
        let listening = try await self.server.listen(on: self.listener, allowedUID: self.allowedUID, supervisor: self.supervisor)
        let server = self.server
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                // Returns when the listener closes: by the handlers below, or on its own.
                await listening.closed()
            } onGracefulShutdown: {
                server.beginDrain()
                listening.startClosing()
            }
        } onCancel: {
            listening.startClosing()
            server.closeAll()
        }
        if Task.isCancelled {
            server.logger.info("engine stopping fast: connections closed, requests aborted")
            server.closeAll()
            return
        }
        guard server.isDraining else { throw EngineServerError.listenerClosed }
        // The listener is closed: a new connection is refused from here on.
        await server.drain(grace: self.drainGrace)
    }
}
