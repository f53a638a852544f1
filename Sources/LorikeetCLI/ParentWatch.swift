import CLorikeetSys
import Foundation
import Glibc
import LorikeetProto

/// Ties a child process's life to its parent (`--parent-pid`): the kernel sends SIGKILL
/// when the parent dies (PR_SET_PDEATHSIG), a parent that died before that was armed is
/// caught by comparing getppid() with the pid passed, and a thread re-checks getppid()
/// every 250 ms (PR_SET_PDEATHSIG follows the parent *thread* that spawned us, so a
/// parent that spawns from short-lived threads — test runners — sets
/// `LORIKEET_PARENT_WATCH=poll` to rely on the check alone).
enum ParentWatch {
    static func attach(parentPID: Int32?) {
        guard let parentPID else { return }
        if ProcessInfo.processInfo.environment["LORIKEET_PARENT_WATCH"] != "poll" {
            _ = lorikeet_set_parent_death_signal(SIGKILL)
        }
        if getppid() != parentPID { self.parentGone(parentPID) }
        let thread = Thread {
            while true {
                usleep(250_000)
                if getppid() != parentPID { self.parentGone(parentPID) }
            }
        }
        thread.name = "lorikeet-parent-watch"
        thread.start()
    }

    private static func parentGone(_ parentPID: Int32) -> Never {
        let message = Array("lorikeet: parent process \(parentPID) is gone; exiting\n".utf8)
        _ = message.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        LorikeetExitCode.failure.exit()
    }

    /// Processes started through Foundation's `Process` inherit a blocked signal mask;
    /// unblock so SIGTERM/SIGINT work.
    static func unblockSignals() {
        var set = sigset_t()
        sigemptyset(&set)
        sigprocmask(SIG_SETMASK, &set, nil)
    }
}
