import CLorikeetSys
import Foundation
import Glibc
import Logging
import LorikeetProto
import ServiceLifecycle

/// Ties a child process's life to its parent (`--parent-pid`): the kernel sends SIGKILL
/// when the parent dies (PR_SET_PDEATHSIG), a parent that died before that was armed is
/// caught by comparing getppid() with the pid passed, and getppid() is re-checked every
/// 250 ms (PR_SET_PDEATHSIG follows the parent *thread* that spawned us, so a parent that
/// spawns from short-lived threads — test runners — sets `LORIKEET_PARENT_WATCH=poll` to
/// rely on the check alone). The check runs on a thread of its own (`attach`) or as a
/// `Service` (`ParentWatchService`, the engine process).
enum ParentWatch {
    /// The polling interval of the getppid() check.
    static let interval = Duration.milliseconds(250)

    /// Start-up of a child process of `serve` (the engine, the cluster agent): logging,
    /// signals unblocked (a parent may have spawned us with signals blocked — Foundation's
    /// Process does, from a dispatch thread — so SIGTERM/SIGINT reach the service group),
    /// SIGPIPE ignored, the parent watch armed. Returns the process's logger (with its pid).
    static func prepareChild(label: String, logFormat: String, parentPID: Int32?) -> Logger {
        LoggingBootstrap.bootstrap(format: logFormat)
        var none = sigset_t()
        sigemptyset(&none)
        pthread_sigmask(SIG_SETMASK, &none, nil)
        signal(SIGPIPE, SIG_IGN)
        var logger = Logger(label: label)
        logger[metadataKey: "pid"] = "\(getpid())"
        if let parentPID { ParentWatch.arm(parentPID: parentPID) }
        return logger
    }

    /// `arm`, then polls on a thread of its own and exits the process when the parent is gone.
    static func attach(parentPID: Int32?) {
        guard let parentPID else { return }
        self.arm(parentPID: parentPID)
        let thread = Thread {
            while true {
                usleep(250_000)
                if getppid() != parentPID { self.parentGone(parentPID) }
            }
        }
        thread.name = "lorikeet-parent-watch"
        thread.start()
    }

    /// Arms PR_SET_PDEATHSIG (unless `LORIKEET_PARENT_WATCH=poll`) and exits at once if the
    /// parent is already gone. Call before any service runs.
    static func arm(parentPID: Int32) {
        if ProcessInfo.processInfo.environment["LORIKEET_PARENT_WATCH"] != "poll" {
            _ = lorikeet_set_parent_death_signal(SIGKILL)
        }
        if getppid() != parentPID { self.parentGone(parentPID) }
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

/// The parent watch's getppid() check as a `Service` (after `ParentWatch.arm`): returns on
/// graceful shutdown or cancellation, and throws `ParentGone` when the parent is gone, so
/// the group cancels every other service and the process exits 1 — no thread of its own,
/// no `exit()` inside a service.
struct ParentWatchService: Service {
    /// The supervisor went away.
    struct ParentGone: Error, CustomStringConvertible {
        var parentPID: Int32
        var description: String { "parent process \(self.parentPID) is gone" }
    }

    let parentPID: Int32

    func run() async throws {
        while !Task.isShuttingDownGracefully {
            do {
                try await Task.sleep(for: ParentWatch.interval)
            } catch {
                return  // cancelled: the group is stopping
            }
            if getppid() != self.parentPID { throw ParentGone(parentPID: self.parentPID) }
        }
    }
}
