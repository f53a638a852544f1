import Glibc
import LorikeetProto

/// The libuv side of one worker process: its process handle, control channel and
/// timers. Its lifecycle (state, role, whether it booted, whether it is retiring) lives
/// in `SupervisorStateMachine.Worker` under the same ``WorkerID``.
final class WorkerProcess {
    let id: WorkerID
    let slot: Int
    var process: UVProcess? {
        didSet { if let process { self.pid = process.pid } }
    }
    /// The process id (kept after the process exits, for the exit's log line).
    private(set) var pid: Int32 = 0
    var control: UVPipe?
    var decoder = MessageDecoder<ControlEnvelope>(maximumFrameSize: Limits.channelFrameBytes)
    var requestsServed: UInt64 = 0
    var killTimer: UVTimer?

    init(id: WorkerID, slot: Int) {
        self.id = id
        self.slot = slot
    }

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

/// The libuv side of a worker slot: the listening socket kept for the slot's life and
/// the restart timer. Its lifecycle lives in `SupervisorStateMachine.Slot`.
final class SlotHandles {
    let index: Int
    /// The slot's listening socket; nil once released (the slot is being removed).
    private(set) var listenerFD: Int32?
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

/// A read-only view of one slot for status replies and rolling restarts: the state
/// machine's slot joined with its processes.
struct WorkerSlot {
    let index: Int
    let state: SupervisorStateMachine.SlotState
    let current: WorkerView?
    let replacement: WorkerView?
    let restarts: UInt32
    let lastExit: String

    /// The crash-loop breaker has paused the slot.
    var tripped: Bool { self.state == .paused }
    /// The slot is being removed (scale down).
    var removing: Bool { self.state == .removing }
}

/// A read-only view of one worker: the state machine's worker joined with its process.
struct WorkerView {
    let id: WorkerID
    let slot: Int
    let pid: Int32
    let state: WorkerState
    let role: WorkerRole
    let disposition: WorkerDisposition
    let lastHeartbeatMs: UInt64
    let requestsServed: UInt64

    var retiring: Bool { self.disposition == .retiring }
}
