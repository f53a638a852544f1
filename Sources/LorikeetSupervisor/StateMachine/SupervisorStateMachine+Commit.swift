import LorikeetProto

/// A committed change being fanned out: durable already; waiting for every worker's ack.
struct CommitFanOut: Sendable {
    let callID: UInt64
    let leader: WorkerID
    let version: UInt64
    /// The first upserted adapter (the caller's answer names it).
    let adapter: AdapterRecord?
    var waiting: Set<WorkerID>
    /// Fleet mode: the etcd revision this fan-out applies (no leader waits on it; the
    /// cluster agent hears `ClusterApplied` when it ends).
    var clusterRevision: Int64? = nil
    /// Its timer fired late once already and the wait started again (once per fan-out).
    var waitedAfterStall = false
}

/// Who hears that a commit is done.
enum CommitReplyTarget: Sendable, Equatable {
    /// The leader that asked, still alive and still leader: it answers its caller.
    case leader(WorkerID)
    /// The leader is gone: the supervisor answers the routed call itself (the change happened).
    case caller
}

extension SupervisorStateMachine {
    // MARK: - Commit fan-out

    /// Why a commit from `id` at `epoch` is refused before it is applied, or nil: only
    /// the current leader at the current epoch commits, one commit at a time.
    func commitRefusal(from id: WorkerID, epoch: UInt64) -> Status? {
        guard self.leader == id, epoch == self.epoch else {
            return Status(code: .failedPrecondition, message: "epoch \(epoch) is not the current leader epoch \(self.epoch)")
        }
        guard self.fanOut == nil, self.persisting == nil else { return Status(code: .aborted, message: "another commit is in progress") }
        return nil
    }

    /// The leader's commit is durable (persisted): send the change to every worker that
    /// said hello and still has its control channel, and wait for their acks.
    mutating func commitDurable(callID: UInt64, leader: WorkerID, change: TableChange, adapter: AdapterRecord?) -> [Action] {
        let participants = self.allWorkers.filter { self.workers[$0]?.hasHello == true && self.workers[$0]?.channel == .open }
        self.fanOut = CommitFanOut(callID: callID, leader: leader, version: change.version, adapter: adapter, waiting: Set(participants))
        return participants.map { .sendChange($0, change) }
            + [.startCommitTimer(version: change.version, delayMs: self.configuration.commitAckTimeoutMs)] + self.finishCommitIfAcked()
    }

    /// A worker applied table `version` (or a later one).
    mutating func changeAcked(by id: WorkerID, version: UInt64) -> [Action] {
        guard let fanOut = self.fanOut, version >= fanOut.version else { return [] }
        self.fanOut?.waiting.remove(id)
        return self.finishCommitIfAcked()
    }

    /// The fan-out timer fired (`lateByMs` after it was due): every worker still silent is
    /// restarted, and the commit completes without it (it gets the table as a snapshot when
    /// it comes back). A timer late by more than `stallToleranceMs` starts the wait again,
    /// once: the acks may be unread in the sockets, or the workers were paused too.
    mutating func commitTimerFired(version: UInt64, lateByMs: UInt64 = 0) -> [Action] {
        guard let fanOut = self.fanOut, fanOut.version == version else { return [] }
        if lateByMs > Self.stallToleranceMs, !fanOut.waiting.isEmpty, !fanOut.waitedAfterStall {
            self.fanOut?.waitedAfterStall = true
            return [
                Self.stallLog(lateByMs, "waiting another \(self.configuration.commitAckTimeoutMs) ms for table version \(version)"),
                .startCommitTimer(version: version, delayMs: self.configuration.commitAckTimeoutMs),
            ]
        }
        let late = self.allWorkers.filter { fanOut.waiting.contains($0) }
        self.fanOut?.waiting = []
        return late.map {
            .terminate($0, reason: "did not apply table version \(version) within \(self.configuration.commitAckTimeoutMs) ms")
        } + self.finishCommitIfAcked()
    }

    mutating func commitParticipantGone(_ id: WorkerID) -> [Action] {
        guard self.fanOut != nil else { return [] }
        self.fanOut?.waiting.remove(id)
        return self.finishCommitIfAcked()
    }

    mutating func finishCommitIfAcked() -> [Action] {
        guard let fanOut = self.fanOut, fanOut.waiting.isEmpty else { return [] }
        self.fanOut = nil
        if let revision = fanOut.clusterRevision {
            return [.cancelCommitTimer] + self.clusterFanOutFinished(revision, now: self.cluster?.lastTableAtMs ?? 0)
        }
        let target: CommitReplyTarget =
            self.workers[fanOut.leader] != nil && self.leader == fanOut.leader ? .leader(fanOut.leader) : .caller
        return self.commitFinished(fanOut, replyTo: target)
    }
}
