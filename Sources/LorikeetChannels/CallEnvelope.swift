package import LorikeetProto

/// A channel envelope that carries a `call_id`, so replies can be matched to calls
/// (`lorikeet.v1.EngineEnvelope`, `lorikeet.v1.ControlEnvelope`).
package protocol CallEnvelope: WireMessage {
    /// Correlates a reply with its call; 0 for one-way messages.
    var callID: UInt64 { get set }
}

extension EngineEnvelope: CallEnvelope {}
extension ControlEnvelope: CallEnvelope {}
extension ClusterEnvelope: CallEnvelope {}

/// Why a framed call failed. Callers map these to their channel's status codes.
package enum FramedCallError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No connection could be made (peer down, client shut down, adopted socket gone).
    case unavailable(String)
    /// The connection broke while the call was in flight (every call on it fails alike).
    case connectionLost(String)
    /// The deadline passed before the reply arrived.
    case deadlineExceeded(Duration)
    /// The calling task was cancelled.
    case cancelled
    /// The request's frame would exceed the channel's limit: it was not written, and the
    /// connection carries on.
    case messageTooLarge(length: UInt32, maximum: Int)
    /// The stream's consumer fell too far behind (it stopped reading): this call alone
    /// was ended and the peer told; the connection carries on.
    case consumerTooSlow

    package var description: String {
        switch self {
        case .unavailable(let reason): return "unavailable: \(reason)"
        case .connectionLost(let reason): return "connection lost: \(reason)"
        case .deadlineExceeded(let timeout): return "no reply within \(timeout)"
        case .cancelled: return "cancelled"
        case .messageTooLarge(let length, let maximum): return "message of \(length) bytes exceeds the limit of \(maximum) bytes"
        case .consumerTooSlow: return "the consumer stopped reading the stream"
        }
    }
}

/// Where a `FramedCallClient` connects.
package enum FramedEndpoint: Sendable, CustomStringConvertible {
    /// A Unix stream socket; reconnected on the next call after a loss.
    case unixSocket(path: String)
    /// An already-connected stream socket (an inherited socketpair end). Adopted once:
    /// after it closes, calls fail with `.unavailable`.
    case connectedSocket(fd: Int32)

    package var description: String {
        switch self {
        case .unixSocket(let path): return path
        case .connectedSocket(let fd): return "fd \(fd)"
        }
    }
}
