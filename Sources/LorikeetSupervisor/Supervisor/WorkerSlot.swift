import Glibc
import LorikeetProto

/// Lifecycle of one worker process as the supervisor sees it.
enum WorkerState: String {
    /// Spawned; no Hello yet.
    case starting
    /// Hello received; role and snapshot sent; booting.
    case booting
    /// Applied the table and prepared to serve; waiting for the go (rolling restart).
    case prepared
    /// Serving HTTP.
    case ready
    /// Told to drain; finishing in-flight work.
    case draining
}

/// One worker process and its control channel.
final class WorkerProcess {
    let slot: Int
    let generation: Int
    var process: UVProcess?
    var control: UVPipe?
    var decoder = MessageDecoder<ControlEnvelope>()
    var state: WorkerState = .starting
    var role: WorkerRole = .follower
    let startedAtMs: UInt64
    var lastHeartbeatMs: UInt64
    var requestsServed: UInt64 = 0
    /// Set when the supervisor wants this process gone (drain, roll, scale down): its exit
    /// is expected and the slot is not restarted for it.
    var retiring = false
    var killTimer: UVTimer?

    init(slot: Int, generation: Int, nowMs: UInt64) {
        self.slot = slot
        self.generation = generation
        self.startedAtMs = nowMs
        self.lastHeartbeatMs = nowMs
    }

    var pid: Int32 { self.process?.pid ?? 0 }
    var hasHello: Bool { self.state != .starting }

    func send(_ body: ControlEnvelope.Body, callID: UInt64 = 0) {
        self.control?.write(Frame.encode(ControlEnvelope(callID: callID, body: body)))
    }
}

/// A worker slot: a listening socket kept for the slot's life and the process filling it.
final class WorkerSlot {
    let index: Int
    /// The slot's listening socket; nil once released (the slot is being removed).
    private(set) var listenerFD: Int32?
    var current: WorkerProcess?
    /// The replacement being prepared during a rolling restart.
    var replacement: WorkerProcess?
    var restarts: UInt32 = 0
    var lastExit = ""
    var consecutiveFastFailures = 0
    var fastFailureTimes: [UInt64] = []
    /// The crash-loop breaker is open: no restarts until the cool-down ends.
    var tripped = false
    /// The breaker opened this many times in a row (the cool-down doubles each time);
    /// reset by a worker that outlives the fast-failure time.
    var trips = 0
    /// The slot is being removed (scale down): no restarts.
    var removing = false
    var restartTimer: UVTimer?

    init(index: Int, listenerFD: Int32) {
        self.index = index
        self.listenerFD = listenerFD
    }

    /// Closes the supervisor's copy of the listening socket. When the slot's worker has
    /// closed its copy too, the kernel stops routing new connections to it.
    func releaseListener() {
        guard let fd = self.listenerFD else { return }
        close(fd)
        self.listenerFD = nil
    }
}
