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
    var decoder = MessageDecoder<ControlEnvelope>(maximumFrameSize: Limits.channelFrameBytes)
    var state: WorkerState = .starting
    var role: WorkerRole = .follower
    let startedAtMs: UInt64
    var lastHeartbeatMs: UInt64
    var requestsServed: UInt64 = 0
    /// Set when the supervisor wants this process gone (drain, roll, scale down): its exit
    /// is expected and the slot is not restarted for it.
    var retiring = false
    var killTimer: UVTimer?
    /// Reported Ready (prepared or serving) at least once: it booted, so its exit is never
    /// a boot failure for the crash-loop breaker.
    var becameReady = false
    /// The supervisor killed it for breaking the control protocol (a frame that cannot be
    /// framed): not a boot failure either.
    var killedForProtocol = false

    init(slot: Int, generation: Int, nowMs: UInt64) {
        self.slot = slot
        self.generation = generation
        self.startedAtMs = nowMs
        self.lastHeartbeatMs = nowMs
    }

    var pid: Int32 { self.process?.pid ?? 0 }
    var hasHello: Bool { self.state != .starting }

    /// Sends one control message. A message whose frame would exceed the channel's limit
    /// (`Limits.channelFrameBytes`, the worker's decoder limit) is not sent: the worker
    /// would have to drop the channel. A reply is replaced by a small error reply to the
    /// same call (FAILED_PRECONDITION); for anything else the caller is told (false) and
    /// answers its own caller.
    @discardableResult
    func send(_ body: ControlEnvelope.Body, callID: UInt64 = 0) -> Bool {
        let payload = ControlEnvelope(callID: callID, body: body).serializedBytes()
        guard payload.count <= Limits.channelFrameBytes else {
            let status = Status(
                code: .failedPrecondition,
                message: "the reply is \(payload.count) bytes, more than the control channel's limit of \(Limits.channelFrameBytes) bytes")
            switch body {
            case .mutationReply: self.send(.mutationReply(AdapterMutationReply(status: status)), callID: callID)
            case .commitReply: self.send(.commitReply(CommitReply(status: status)), callID: callID)
            default: break
            }
            return false
        }
        self.control?.write(Frame.encode(payload))
        return true
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
