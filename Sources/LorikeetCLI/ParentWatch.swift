import CLorikeetSys
import Glibc

/// Ties a child process's life to its supervisor: the kernel sends SIGKILL when the
/// parent dies (PR_SET_PDEATHSIG), and a parent that died before that was armed is
/// caught by comparing getppid() with the pid the supervisor passed.
enum ParentWatch {
    static func attach(parentPID: Int32?) {
        guard let parentPID else { return }
        _ = lorikeet_set_parent_death_signal(SIGKILL)
        if getppid() != parentPID {
            let message = Array("lorikeet: supervisor \(parentPID) is already gone; exiting\n".utf8)
            _ = message.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
            exit(1)
        }
    }

    /// Processes started through Foundation's `Process` inherit a blocked signal mask;
    /// unblock so SIGTERM/SIGINT work.
    static func unblockSignals() {
        var set = sigset_t()
        sigemptyset(&set)
        sigprocmask(SIG_SETMASK, &set, nil)
    }
}
