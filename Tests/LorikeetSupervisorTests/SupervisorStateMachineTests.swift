import LorikeetProto
import LorikeetTestSupport
import Testing

@testable import LorikeetSupervisor

/// `SupervisorStateMachine` without processes or a loop: events in, actions out, time
/// in milliseconds passed with each event.
@Suite("Supervisor state machine", .ownThreads)
struct SupervisorStateMachineTests {
    typealias Machine = SupervisorStateMachine

    static let defaults = SupervisorConfiguration(
        executable: "/bin/false", workers: 1, host: "127.0.0.1", port: 0, stateDirectory: "/nonexistent", engineArguments: [],
        workerArguments: [])

    /// A machine with `slots` slots, each with a spawned worker; returns the worker ids.
    static func booted(slots: Int, configuration: SupervisorConfiguration = defaults, now: UInt64 = 0) -> (Machine, [WorkerID]) {
        var machine = Machine(configuration: .init(configuration))
        for index in 0..<slots { machine.registerSlot(index) }
        var ids: [WorkerID] = []
        for index in 0..<slots { ids += spawned(machine.spawn(inSlot: index, now: now)) }
        return (machine, ids)
    }

    static func spawned(_ actions: [Machine.Action]) -> [WorkerID] {
        actions.compactMap { if case .spawnWorker(let id, _) = $0 { id } else { nil } }
    }

    static func restartDelay(_ actions: [Machine.Action]) -> UInt64? {
        actions.compactMap { if case .startRestartTimer(_, let delay) = $0 { delay } else { nil } }.first
    }

    static func roles(_ actions: [Machine.Action]) -> [(WorkerID, WorkerRole, UInt64)] {
        actions.compactMap { if case .sendRole(let id, let role, let epoch) = $0 { (id, role, epoch) } else { nil } }
    }

    static func fatalCode(_ actions: [Machine.Action]) -> LorikeetExitCode? {
        actions.compactMap { if case .fatal(let code, _) = $0 { code } else { nil } }.first
    }

    static func logs(_ actions: [Machine.Action]) -> [String] {
        actions.compactMap { if case .log(_, let message, _, _) = $0 { message } else { nil } }
    }

    static let crash = ProcessExit(status: 1, signal: 0)
    static let killed = ProcessExit(status: 0, signal: 9)

    /// Hello then Ready with the current table: the worker serves.
    static func serve(_ machine: inout Machine, _ id: WorkerID) {
        _ = machine.hello(id, Hello(pid: 1, version: "test"))
        _ = machine.ready(id, tableIsCurrent: true, now: 0)
    }

    /// Crashes slot `index`'s worker after `uptime` ms and, unless that paused the slot,
    /// fires the restart timer; returns the exit's actions and the next worker.
    static func failAtBoot(
        _ machine: inout Machine, slot index: Int, now: inout UInt64, uptime: UInt64 = 50
    ) -> ([Machine.Action], WorkerID?) {
        let id = machine.slot(index)!.current!
        now += uptime
        let exit = machine.childExited(id, crash, now: now)
        guard let delay = restartDelay(exit), machine.slot(index)?.state == .active else { return (exit, nil) }
        now += delay
        return (exit, spawned(machine.restartTimerFired(slot: index, now: now)).first)
    }

    // MARK: - Crash-loop breaker

    @Test("defaults: backoff 100, 200, 400, 800 ms, then the 5th boot failure in 60 s pauses the slot for 60 s")
    func breakerDefaults() {
        var (machine, _) = Self.booted(slots: 2)
        var now: UInt64 = 0
        var delays: [UInt64] = []
        for _ in 0..<4 {
            let (exit, next) = Self.failAtBoot(&machine, slot: 0, now: &now)
            delays.append(Self.restartDelay(exit) ?? 0)
            #expect(next != nil)
        }
        #expect(delays == [100, 200, 400, 800])
        #expect(machine.slot(0)?.state == .active)
        let (exit, _) = Self.failAtBoot(&machine, slot: 0, now: &now)
        #expect(machine.slot(0)?.state == .paused)
        #expect(Self.restartDelay(exit) == 60_000, "the pause is the cool-down")
        #expect(Self.logs(exit).contains { $0.contains("crash-looping (5 fast failures within 60 s") })
        #expect(Self.fatalCode(exit) == nil, "slot 1 still serves")
        // While paused nothing spawns there.
        #expect(machine.spawn(inSlot: 0, now: now).isEmpty)
        // The pause ends with the timer: one worker is tried again.
        let resumed = machine.restartTimerFired(slot: 0, now: now + 60_000)
        #expect(machine.slot(0)?.state == .active && machine.slot(0)?.fastFailureTimes.isEmpty == true)
        #expect(Self.spawned(resumed).count == 1)
    }

    @Test("boot failures spread beyond the 60 s window do not trip the breaker")
    func breakerWindow() {
        var (machine, _) = Self.booted(slots: 2)
        var now: UInt64 = 0
        for _ in 0..<10 {
            let (exit, next) = Self.failAtBoot(&machine, slot: 0, now: &now, uptime: 9_000)
            #expect(Self.fatalCode(exit) == nil && next != nil)
            now += 10_000
        }
        #expect(machine.slot(0)?.state == .active)
        #expect((machine.slot(0)?.fastFailureTimes.count ?? 0) < 5)
    }

    @Test("the pause doubles on each consecutive trip, up to 10 minutes")
    func pauseDoubling() {
        var (machine, _) = Self.booted(slots: 2)
        var now: UInt64 = 0
        var pauses: [UInt64] = []
        for _ in 0..<4 { _ = Self.failAtBoot(&machine, slot: 0, now: &now) }
        for _ in 0..<7 {
            // Paused: the retried worker fails at boot once more and pauses again at once.
            let (exit, _) = Self.failAtBoot(&machine, slot: 0, now: &now)
            #expect(machine.slot(0)?.state == .paused)
            let pause = Self.restartDelay(exit) ?? 0
            pauses.append(pause)
            now += pause
            #expect(Self.spawned(machine.restartTimerFired(slot: 0, now: now)).count == 1)
        }
        #expect(pauses == [60_000, 120_000, 240_000, 480_000, 600_000, 600_000, 600_000])
        #expect(machine.cooldown(trips: 30) == 600_000)
    }

    @Test("a worker that outlives the fast-failure time resets the pause; past the stable uptime the backoff too")
    func resetAfterUptime() {
        var (machine, _) = Self.booted(slots: 2)
        var now: UInt64 = 0
        for _ in 0..<5 { _ = Self.failAtBoot(&machine, slot: 0, now: &now) }
        #expect(machine.slot(0)?.trips == 1)
        now += 60_000
        _ = machine.restartTimerFired(slot: 0, now: now)
        // Lives 20 s (past fastFailureMs 10 s, short of stableUptimeMs 30 s): trips reset, backoff kept.
        let (slow, _) = Self.failAtBoot(&machine, slot: 0, now: &now, uptime: 20_000)
        #expect(machine.slot(0)?.trips == 0)
        #expect(Self.restartDelay(slow) == 1600, "5 consecutive fast failures still count for the backoff")
        // The next boot failure counts afresh (no immediate pause).
        let (fast, _) = Self.failAtBoot(&machine, slot: 0, now: &now)
        #expect(machine.slot(0)?.state == .active && Self.restartDelay(fast) == 3200)
        // Lives 31 s: the backoff resets; the restart is immediate.
        let (stable, _) = Self.failAtBoot(&machine, slot: 0, now: &now, uptime: 31_000)
        #expect(Self.restartDelay(stable) == 0)
        #expect(machine.slot(0)?.consecutiveFastFailures == 0)
    }

    @Test("a worker that was Ready and then crashed fast never counts toward the breaker")
    func readyThenCrashNotCounted() {
        var (machine, ids) = Self.booted(slots: 1)
        var now: UInt64 = 0
        var id = ids[0]
        for _ in 0..<12 {
            Self.serve(&machine, id)
            now += 50
            let exit = machine.childExited(id, Self.killed, now: now)
            #expect(Self.fatalCode(exit) == nil)
            #expect(Self.logs(exit).contains { $0.contains("does not count toward the crash-loop breaker (it had been ready)") })
            now += Self.restartDelay(exit) ?? 0
            id = Self.spawned(machine.restartTimerFired(slot: 0, now: now))[0]
        }
        #expect(machine.slot(0)?.state == .active && machine.slot(0)?.fastFailureTimes.isEmpty == true)
        #expect(machine.slot(0)?.restarts == 12)
        #expect(machine.backoff(30) == 10_000, "the backoff is capped")
    }

    @Test("a worker killed for a protocol error never counts toward the breaker")
    func protocolKillNotCounted() {
        var (machine, ids) = Self.booted(slots: 1)
        var now: UInt64 = 0
        var id = ids[0]
        for _ in 0..<8 {
            let kill = machine.protocolViolation(id)
            guard case .terminate(id, _) = kill.first else {
                Issue.record("no terminate action: \(kill)")
                return
            }
            now += 10
            let exit = machine.childExited(id, ProcessExit(status: 0, signal: 6), now: now)
            #expect(Self.fatalCode(exit) == nil)
            #expect(Self.logs(exit).contains { $0.contains("(killed for a protocol error)") })
            now += Self.restartDelay(exit) ?? 0
            id = Self.spawned(machine.restartTimerFired(slot: 0, now: now))[0]
        }
        #expect(machine.slot(0)?.state == .active)
    }

    @Test("every slot paused stops the server with the crash-loop exit code; a cannot-boot exit stops it at once")
    func everySlotPausedIsFatal() {
        var (machine, _) = Self.booted(slots: 1)
        var now: UInt64 = 0
        var last: [Machine.Action] = []
        for _ in 0..<5 { (last, _) = Self.failAtBoot(&machine, slot: 0, now: &now) }
        #expect(Self.fatalCode(last) == LorikeetExitCode.crashLoop)

        var (other, ids) = Self.booted(slots: 2)
        let exit = other.childExited(ids[1], ProcessExit(status: Int64(LorikeetExitCode.cannotBoot.rawValue), signal: 0), now: 10)
        #expect(Self.fatalCode(exit) == LorikeetExitCode.cannotBoot)
        #expect(Self.restartDelay(exit) == nil)
    }

    @Test("--crash-loop-failures and --crash-loop-cooldown-seconds set the threshold and the first pause")
    func breakerConfigured() {
        var configuration = Self.defaults
        configuration.crashLoopFailures = 2
        configuration.crashLoopCooldownMs = 5_000
        var (machine, _) = Self.booted(slots: 2, configuration: configuration)
        var now: UInt64 = 0
        _ = Self.failAtBoot(&machine, slot: 1, now: &now)
        #expect(machine.slot(1)?.state == .active)
        let (exit, _) = Self.failAtBoot(&machine, slot: 1, now: &now)
        #expect(machine.slot(1)?.state == .paused && Self.restartDelay(exit) == 5_000)
        now += 5_000
        _ = machine.restartTimerFired(slot: 1, now: now)
        let (again, _) = Self.failAtBoot(&machine, slot: 1, now: &now)
        #expect(Self.restartDelay(again) == 10_000)
    }

    // MARK: - Leadership

    @Test("the first hello leads at epoch 1; when the leader exits a ready worker is promoted at epoch 2, then 3")
    func promotionWithEpochs() {
        var (machine, ids) = Self.booted(slots: 3)
        let first = machine.hello(ids[0], Hello(pid: 1, version: "t"))
        #expect(machine.leader == ids[0] && machine.epoch == 1)
        #expect(Self.roles(first).map(\.1) == [.leader])
        // Slot 1 says hello but never becomes ready; slot 2 serves.
        let second = machine.hello(ids[1], Hello(pid: 2, version: "t"))
        #expect(Self.roles(second).count == 1 && Self.roles(second)[0].1 == .follower && Self.roles(second)[0].2 == 1)
        Self.serve(&machine, ids[0])
        Self.serve(&machine, ids[2])

        let exit = machine.childExited(ids[0], Self.killed, now: 60_000)
        #expect(machine.leader == ids[2], "a ready worker is preferred over one still booting")
        #expect(machine.epoch == 2)
        let told = Self.roles(exit)
        #expect(told.count == 2 && told.allSatisfy { $0.2 == 2 })
        #expect(told.contains { $0.0 == ids[2] && $0.1 == .leader } && told.contains { $0.0 == ids[1] && $0.1 == .follower })

        // The new leader exits too: the booting worker is the only candidate.
        _ = machine.childExited(ids[2], Self.killed, now: 61_000)
        #expect(machine.leader == ids[1] && machine.epoch == 3)
        #expect(machine.workers[ids[1]]?.role == .leader)
    }

    @Test("with no worker past hello, the next hello leads with a higher epoch; a retiring worker never leads")
    func promotionWithoutCandidates() {
        var (machine, ids) = Self.booted(slots: 2)
        Self.serve(&machine, ids[0])
        _ = machine.drain(ids[1])
        let exit = machine.childExited(ids[0], Self.killed, now: 100)
        #expect(machine.leader == nil && machine.epoch == 1)
        #expect(Self.logs(exit).contains { $0.contains("no worker can lead yet") })
        let next = Self.spawned(machine.restartTimerFired(slot: 0, now: 100))[0]
        _ = machine.hello(next, Hello(pid: 3, version: "t"))
        #expect(machine.leader == next && machine.epoch == 2)
    }

    @Test("a stopping supervisor promotes nobody")
    func noPromotionWhileStopping() {
        var (machine, ids) = Self.booted(slots: 2)
        Self.serve(&machine, ids[0])
        Self.serve(&machine, ids[1])
        _ = machine.stop(.graceful)
        let exit = machine.childExited(ids[0], Self.crash, now: 10)
        #expect(machine.leader == nil && machine.epoch == 1)
        #expect(Self.restartDelay(exit) == nil)
        #expect(!exit.contains { if case .leaveLoop = $0 { true } else { false } }, "slot 1's worker is still there")
        let last = machine.childExited(ids[1], Self.crash, now: 20)
        #expect(machine.leader == nil && Self.restartDelay(last) == nil)
        #expect(last.contains { if case .leaveLoop = $0 { true } else { false } })
    }

    // MARK: - Scaling

    @Test("TTOU never removes the last worker; TTIN adds the next slot index; neither restarts a removed slot")
    func scalingEdges() {
        var (machine, ids) = Self.booted(slots: 2)
        let down = machine.scaleDown()
        #expect(machine.slot(1)?.state == .removing)
        #expect(down.contains { if case .drain(ids[1], listenerRetired: true) = $0 { true } else { false } })
        #expect(down.contains { if case .releaseListener(slot: 1) = $0 { true } else { false } })
        // Only slot 0 is active now: a second TTOU is refused.
        let refused = machine.scaleDown()
        #expect(Self.logs(refused) == ["not scaling down: at least one worker must remain"])
        #expect(machine.slot(0)?.state == .active)
        // The drained worker exits: the slot goes, nothing restarts.
        let exit = machine.childExited(ids[1], ProcessExit(status: 0, signal: 0), now: 1_000)
        #expect(exit.contains { if case .removeSlot(1) = $0 { true } else { false } })
        #expect(Self.restartDelay(exit) == nil && machine.slots.count == 1)
        // TTIN: the next index after the highest.
        guard case .openSlot(1) = machine.scaleUp().first else {
            Issue.record("no openSlot(1)")
            return
        }
        let opened = machine.slotOpened(1, now: 2_000)
        #expect(Self.spawned(opened).count == 1 && machine.slots.map(\.index) == [0, 1])
        // Many TTINs: no cap besides the admin call's 1...256 (the listener may fail to open).
        for index in 2..<40 { _ = machine.slotOpened(index, now: 2_000) }
        #expect(machine.slots.count == 40 && machine.allWorkers.count == 40)
        if case .openSlot(40) = machine.scaleUp().first {} else { Issue.record("no openSlot(40)") }
        _ = machine.stop(.fast)
        #expect(machine.scaleUp().isEmpty, "no scaling up while stopping")
    }

    @Test("a slot with no worker (a pending restart) is removed at once on TTOU")
    func scaleDownEmptySlot() {
        var (machine, ids) = Self.booted(slots: 2)
        _ = machine.childExited(ids[1], Self.crash, now: 20_000)
        let down = machine.scaleDown()
        #expect(down.contains { if case .cancelRestartTimer(slot: 1) = $0 { true } else { false } })
        #expect(down.contains { if case .removeSlot(1) = $0 { true } else { false } })
        #expect(machine.slots.map(\.index) == [0])
    }

    // MARK: - Rolling replacement and stopping

    @Test("a prepared replacement drains the old worker, then serves once the old one stops accepting")
    func replacementHandover() {
        var (machine, ids) = Self.booted(slots: 1)
        Self.serve(&machine, ids[0])
        let replacement = Self.spawned(machine.spawn(inSlot: 0, asReplacement: true, now: 1_000))[0]
        _ = machine.hello(replacement, Hello(pid: 2, version: "t"))
        #expect(machine.ready(replacement, tableIsCurrent: false, now: 0).count == 1, "a stale table gets the snapshot again")
        let prepared = machine.ready(replacement, tableIsCurrent: true, now: 0)
        #expect(prepared.contains { if case .drain(ids[0], listenerRetired: false) = $0 { true } else { false } })
        #expect(machine.workers[replacement]?.state == .prepared)
        let handover = machine.stoppedAccepting(ids[0], now: 1_500)
        #expect(handover.contains { if case .startServing(replacement) = $0 { true } else { false } })
        #expect(machine.slot(0)?.current == replacement && machine.slot(0)?.replacement == ids[0])
        // The drained worker's exit is expected: no restart, no breaker.
        let exit = machine.childExited(ids[0], ProcessExit(status: 0, signal: 0), now: 2_000)
        #expect(Self.restartDelay(exit) == nil)
        #expect(machine.leader == replacement && machine.epoch == 2)
    }

    @Test("SIGHUP replaces every slot in turn: replacement prepared, old drained, replacement serves, next slot")
    func rollingRestartCompletes() {
        var (machine, ids) = Self.booted(slots: 2)
        for id in ids { Self.serve(&machine, id) }
        var actions = machine.startRollingRestart(now: 1_000)
        for index in 0..<2 {
            let replacement = Self.spawned(actions)
            #expect(replacement.count == 1 && machine.slot(index)?.replacement == replacement.first)
            #expect(machine.rolling?.currentSlot == index)
            #expect(actions.contains { if case .startRollingTimer(replacement[0], 120_000) = $0 { true } else { false } })
            _ = machine.hello(replacement[0], Hello(pid: 9, version: "t"))
            _ = machine.ready(replacement[0], tableIsCurrent: true, now: 2_000)
            actions = machine.stoppedAccepting(ids[index], now: 2_100)
            #expect(actions.contains { if case .startServing(replacement[0]) = $0 { true } else { false } })
            #expect(actions.contains { if case .cancelRollingTimer = $0 { true } else { false } })
            _ = machine.childExited(ids[index], ProcessExit(status: 0, signal: 0), now: 3_000)
        }
        #expect(Self.logs(actions).contains("rolling restart complete"))
        #expect(machine.rolling == nil)
        #expect(machine.slots.allSatisfy { $0.replacement == nil && $0.restarts == 0 })
    }

    @Test("rolling restart: a replacement that never becomes ready is killed, the roll aborts, the old worker keeps serving")
    func rollingReplacementNeverReady() {
        var (machine, ids) = Self.booted(slots: 2)
        for id in ids { Self.serve(&machine, id) }
        let started = machine.startRollingRestart(now: 1_000)
        let replacement = Self.spawned(started)[0]
        #expect(Self.logs(machine.startRollingRestart(now: 1_001)) == ["a rolling restart is already in progress"])
        _ = machine.hello(replacement, Hello(pid: 9, version: "t"))
        // The timer fires 30 s late (the supervisor was paused): it waits once more.
        let paused = machine.rollingTimerFired(replacement, lateByMs: 30_000)
        #expect(!paused.contains { if case .kill = $0 { true } else { false } }, "\(paused)")
        #expect(paused.contains { if case .startRollingTimer(replacement, 120_000) = $0 { true } else { false } })
        #expect(machine.rolling != nil)
        // 120 s later it still has not reported Ready.
        let fired = machine.rollingTimerFired(replacement)
        #expect(fired.contains { if case .kill(replacement) = $0 { true } else { false } })
        let aborted = "rolling restart aborted: the replacement for slot 0 was not ready within 120000 ms"
        #expect(Self.logs(fired).contains { $0.hasPrefix(aborted) })
        #expect(machine.rolling == nil)
        // Its exit is expected: no restart, no breaker count; slot 0 keeps its old worker.
        let exit = machine.childExited(replacement, ProcessExit(status: 0, signal: 9), now: 121_000)
        #expect(Self.restartDelay(exit) == nil)
        #expect(machine.slot(0)?.current == ids[0] && machine.slot(0)?.replacement == nil)
        #expect(machine.workers[ids[0]]?.state == .ready && machine.slot(0)?.fastFailureTimes.isEmpty == true)
        // A late timer for a replacement that already serves does nothing.
        #expect(machine.rollingTimerFired(ids[1]).isEmpty)
    }

    @Test("rolling restart: a replacement that crashes aborts the roll and counts like any boot failure")
    func rollingReplacementCrashes() {
        var (machine, ids) = Self.booted(slots: 2)
        for id in ids { Self.serve(&machine, id) }
        let replacement = Self.spawned(machine.startRollingRestart(now: 1_000))[0]
        let exit = machine.childExited(replacement, Self.crash, now: 1_050)
        #expect(Self.logs(exit).contains { $0.contains("rolling restart aborted: worker in slot 0 exited during the roll") })
        #expect(machine.rolling == nil && machine.slot(0)?.fastFailureTimes.count == 1)
        #expect(machine.slot(0)?.current == ids[0])
    }

    // MARK: - Commit fan-out

    static func change(_ version: UInt64) -> TableChange {
        TableChange(version: version, upserts: [], removes: [], nextIntID: 1)
    }

    @Test("a commit waits for an ack from every worker that said hello; the leader answers when all acked")
    func fanOutAllAck() {
        var (machine, ids) = Self.booted(slots: 3)
        for id in ids[0..<2] { Self.serve(&machine, id) }  // ids[2] never says hello
        #expect(machine.commitRefusal(from: ids[1], epoch: 1)?.code == .failedPrecondition, "a follower cannot commit")
        #expect(machine.commitRefusal(from: ids[0], epoch: 0)?.code == .failedPrecondition, "an old epoch cannot commit")
        #expect(machine.commitRefusal(from: ids[0], epoch: 1) == nil)
        let sent = machine.commitDurable(callID: 7, leader: ids[0], change: Self.change(2), adapter: nil)
        let receivers = sent.compactMap { if case .sendChange(let id, _) = $0 { id } else { nil } }
        #expect(receivers == [ids[0], ids[1]])
        #expect(sent.contains { if case .startCommitTimer(2, 5_000) = $0 { true } else { false } })
        #expect(machine.commitRefusal(from: ids[0], epoch: 1)?.code == .aborted, "one commit at a time")
        #expect(machine.changeAcked(by: ids[0], version: 2).isEmpty)
        #expect(machine.changeAcked(by: ids[1], version: 1).isEmpty, "an older version is no ack")
        let done = machine.changeAcked(by: ids[1], version: 2)
        guard done.contains(where: { if case .replyToCommit(ids[0], 7, CommitReply(status: .ok, version: 2)) = $0 { true } else { false } })
        else {
            Issue.record("not finished: \(done)")
            return
        }
        #expect(machine.fanOut == nil)
    }

    @Test("a worker that never acks within 5 s is restarted and the commit completes without it")
    func fanOutWorkerNeverAcks() {
        var (machine, ids) = Self.booted(slots: 3)
        for id in ids { Self.serve(&machine, id) }
        _ = machine.commitDurable(callID: 9, leader: ids[0], change: Self.change(4), adapter: nil)
        _ = machine.changeAcked(by: ids[0], version: 4)
        _ = machine.changeAcked(by: ids[2], version: 4)
        #expect(machine.fanOut?.waiting == [ids[1]])
        #expect(machine.commitTimerFired(version: 3).isEmpty, "a stale timer does nothing")
        let fired = machine.commitTimerFired(version: 4)
        let late = "did not apply table version 4 within 5000 ms"
        #expect(fired.contains { if case .terminate(ids[1], let reason) = $0 { reason == late } else { false } })
        #expect(fired.contains { if case .replyToCommit(ids[0], 9, CommitReply(status: .ok, version: 4)) = $0 { true } else { false } })
        #expect(machine.fanOut == nil)
    }

    @Test("a worker whose control channel closed is not waited for; a leader that dies mid-fan-out leaves the answer to the supervisor")
    func fanOutChannelClosedAndLeaderGone() {
        var (machine, ids) = Self.booted(slots: 3)
        for id in ids { Self.serve(&machine, id) }
        _ = machine.controlClosed(ids[2], reason: "control channel closed")
        let routeID = Self.forwarded(machine.mutationRequested(Self.load("a"), origin: .worker(ids[1], callID: 40)))!
        #expect(Self.persisted(machine.commitRequested(Self.commit(loading: "a", id: 1), callID: routeID, from: ids[0])) == 1)
        let sent = machine.tablePersisted(callID: routeID, failure: nil)
        #expect(sent.compactMap { if case .sendChange(let id, _) = $0 { id } else { nil } } == [ids[0], ids[1]])
        #expect(machine.table.version == 1 && machine.table.adapters.map(\.name) == ["a"])
        _ = machine.changeAcked(by: ids[1], version: 1)
        let exit = machine.childExited(ids[0], Self.killed, now: 60_000)
        let answers = Self.answers(exit)
        #expect(answers.count == 1, "answered once: \(answers)")
        #expect(answers.first?.origin == .worker(ids[1], callID: 40) && answers.first?.reply.status.isOK == true)
        #expect(answers.first?.reply.adapter?.name == "a" && answers.first?.reply.tableVersion == 1)
        #expect(machine.leader == ids[1] && machine.epoch == 2)
        #expect(machine.routes.isEmpty)
    }

    @Test("a second SIGTERM stops fast; the stop cancels restart timers")
    func stopping() {
        var (machine, ids) = Self.booted(slots: 2)
        _ = machine.startEngine(now: 0)
        machine.engineSpawned()
        let graceful = machine.stop(.graceful)
        #expect(graceful.filter { if case .cancelRestartTimer = $0 { true } else { false } }.count == 2)
        #expect(graceful.filter { if case .shutdown(_, .graceful) = $0 { true } else { false } }.count == 2)
        #expect(graceful.contains { if case .startStopTimer(31_000) = $0 { true } else { false } }, "drain grace + 1 s")
        #expect(machine.allWorkers.allSatisfy { machine.workers[$0]?.state == .draining })
        #expect(Self.logs(machine.stopTimerFired()) == ["grace period over; killing what is left"])
        let second = machine.stop(.graceful)
        #expect(Self.logs(second) == ["second SIGTERM: stopping fast"])
        #expect(second.filter { if case .shutdown(_, .fast) = $0 { true } else { false } }.count == 2)
        #expect(second.contains { if case .startStopTimer(2_000) = $0 { true } else { false } })
        #expect(machine.lifecycle == .stopping(.fast))
        #expect(machine.stop(.fast).isEmpty)
        #expect(machine.spawn(inSlot: 0, now: 0).isEmpty)
        // Workers first, then the engine, then the loop ends.
        _ = machine.childExited(ids[0], Self.killed, now: 100)
        let workersGone = machine.childExited(ids[1], Self.killed, now: 100)
        #expect(workersGone.contains { if case .terminateEngine = $0 { true } else { false } })
        let engineGone = machine.engineExited(ProcessExit(status: 0, signal: 15), now: 200)
        #expect(engineGone.count == 1 && engineGone.contains { if case .leaveLoop = $0 { true } else { false } })
    }

    @Test("heartbeats: a worker silent past the timeout is terminated, the others that said hello get the next sequence")
    func heartbeats() {
        var (machine, ids) = Self.booted(slots: 3)
        Self.serve(&machine, ids[0])
        Self.serve(&machine, ids[1])  // ids[2] never says hello
        machine.messageReceived(from: ids[0], now: 14_000)
        let first = machine.heartbeatTimerFired(now: 15_500)
        #expect(first.contains { if case .sendHeartbeat(ids[0], 1) = $0 { true } else { false } })
        #expect(first.contains { if case .terminate(ids[1], "no heartbeat for 15500 ms") = $0 { true } else { false } })
        #expect(first.contains { if case .terminate(ids[2], _) = $0 { true } else { false } })
        #expect(first.count == 3)
        let second = machine.heartbeatTimerFired(now: 16_000)
        #expect(second.contains { if case .sendHeartbeat(ids[0], 2) = $0 { true } else { false } })
    }

    @Test("a paused supervisor (its timers fire seconds late) kills no worker; a hung one is still found; a commit waits again once")
    func stalledSupervisorKillsNobody() {
        var (machine, ids) = Self.booted(slots: 2)
        for id in ids { Self.serve(&machine, id) }
        machine.messageReceived(from: ids[0], now: 1_000)
        machine.messageReceived(from: ids[1], now: 1_000)
        // Paused for 20 s (SIGSTOP of the node, a frozen VM): the tick is 19 s late.
        let resumed = machine.heartbeatTimerFired(now: 21_000, lateByMs: 19_000)
        #expect(!resumed.contains { if case .terminate = $0 { true } else { false } }, "\(resumed)")
        #expect(resumed.filter { if case .sendHeartbeat = $0 { true } else { false } }.count == 2)
        #expect(Self.logs(resumed).contains { $0.hasPrefix("the supervisor did not run for 19000 ms") })
        // Silence counts the time the supervisor ran (1 s before the pause, then from 21 s on).
        #expect(!machine.heartbeatTimerFired(now: 34_000).contains { if case .terminate = $0 { true } else { false } })
        machine.messageReceived(from: ids[0], now: 34_500)
        let later = machine.heartbeatTimerFired(now: 35_500)
        #expect(later.contains { if case .terminate(ids[1], "no heartbeat for 15500 ms") = $0 { true } else { false } }, "\(later)")
        #expect(!later.contains { if case .terminate(ids[0], _) = $0 { true } else { false } })
        // Stalls of 1.2 s every 2 s do not hide a hung worker: its silence still grows by the
        // time the supervisor ran.
        var (stalling, workers2) = Self.booted(slots: 1)
        Self.serve(&stalling, workers2[0])
        stalling.messageReceived(from: workers2[0], now: 0)
        var now: UInt64 = 0
        var killed = false
        for _ in 0..<40 where !killed {
            now += 2_000
            killed = stalling.heartbeatTimerFired(now: now, lateByMs: 1_200).contains {
                if case .terminate = $0 { true } else { false }
            }
        }
        #expect(killed, "a silent worker survived \(now) ms of a stalling supervisor")

        // The stop timer of a graceful stop fires 8 s late: the workers get their grace once
        // more; the next time it fires, what is left is killed, late or not.
        var stopping = Self.booted(slots: 1).0
        _ = stopping.stop(.graceful)
        let lateStop = stopping.stopTimerFired(lateByMs: 8_000)
        #expect(!lateStop.contains { if case .killEverything = $0 { true } else { false } }, "\(lateStop)")
        #expect(lateStop.contains { if case .startStopTimer = $0 { true } else { false } })
        #expect(stopping.stopTimerFired(lateByMs: 8_000).contains { if case .killEverything = $0 { true } else { false } })

        // A commit whose timer fires 8 s late: nobody is killed, the wait starts again, and the
        // acks read afterwards finish it.
        var (fresh, workers) = Self.booted(slots: 2)
        for id in workers { Self.serve(&fresh, id) }
        _ = fresh.commitDurable(callID: 5, leader: workers[0], change: Self.change(2), adapter: nil)
        let late = fresh.commitTimerFired(version: 2, lateByMs: 8_000)
        #expect(!late.contains { if case .terminate = $0 { true } else { false } }, "\(late)")
        #expect(late.contains { if case .startCommitTimer(2, 5_000) = $0 { true } else { false } })
        _ = fresh.changeAcked(by: workers[0], version: 2)
        let done = fresh.changeAcked(by: workers[1], version: 2)
        #expect(done.contains { if case .replyToCommit(workers[0], 5, CommitReply(status: .ok, version: 2)) = $0 { true } else { false } })
        // Only once per commit: late again, the silent worker is restarted.
        _ = fresh.commitDurable(callID: 6, leader: workers[0], change: Self.change(3), adapter: nil)
        _ = fresh.changeAcked(by: workers[0], version: 3)
        #expect(!fresh.commitTimerFired(version: 3, lateByMs: 8_000).contains { if case .terminate = $0 { true } else { false } })
        let again = fresh.commitTimerFired(version: 3, lateByMs: 8_000)
        #expect(again.contains { if case .terminate(workers[1], _) = $0 { true } else { false } }, "\(again)")
        // On time (or a little late), a silent worker is restarted at once.
        _ = fresh.commitDurable(callID: 7, leader: workers[0], change: Self.change(4), adapter: nil)
        _ = fresh.changeAcked(by: workers[0], version: 4)
        let onTime = fresh.commitTimerFired(version: 4, lateByMs: 300)
        #expect(onTime.contains { if case .terminate(workers[1], _) = $0 { true } else { false } }, "\(onTime)")
    }

    // MARK: - Engine

    @Test("the engine restarts with backoff, at once-ish after a stable run, and a cannot-boot exit is fatal")
    func engineRestarts() {
        var machine = Machine(configuration: .init(Self.defaults))
        #expect(machine.startEngine(now: 0).count == 1)
        machine.engineSpawned()
        #expect(machine.engine == .running)
        let first = machine.engineExited(Self.crash, now: 1_000)
        #expect(machine.engine == .down)
        #expect(first.contains { if case .startEngineTimer(200) = $0 { true } else { false } })
        _ = machine.startEngine(now: 1_200)
        let second = machine.engineExited(Self.crash, now: 1_300)
        #expect(second.contains { if case .startEngineTimer(400) = $0 { true } else { false } })
        _ = machine.startEngine(now: 2_000)
        let stable = machine.engineExited(Self.crash, now: 40_000)
        #expect(stable.contains { if case .startEngineTimer(100) = $0 { true } else { false } })
        _ = machine.startEngine(now: 40_100)
        let fatal = machine.engineExited(ProcessExit(status: Int64(LorikeetExitCode.cannotBoot.rawValue), signal: 0), now: 40_200)
        #expect(Self.fatalCode(fatal) == LorikeetExitCode.cannotBoot)
    }
}
