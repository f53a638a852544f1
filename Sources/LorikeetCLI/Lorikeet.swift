import ArgumentParser
import CLorikeetSys
import Glibc
import LorikeetProto

/// The `lorikeet` command: every process of the server is a subcommand of one binary.
@main
struct Lorikeet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lorikeet",
        abstract: "Multi-process OpenAI-compatible serving frontend with consistent dynamic LoRA adapters.",
        version: LorikeetVersion.string,
        subcommands: [ServeCommand.self, CtlCommand.self, EngineCommand.self, WorkerCommand.self, ClusterAgentCommand.self]
    )

    /// Every descriptor this process inherited beyond stdin/stdout/stderr (a worker's slot
    /// listener and control socket, the cluster agent's control socket, whatever the caller
    /// of `serve` left open) is made close-on-exec first, so no program the process runs
    /// holds one: the Swift runtime's crash backtracer, spawned when the supervisor sends
    /// SIGABRT to a stuck worker, kept the worker's listener open after the worker was
    /// killed, and new connections hashed to that socket (`SO_REUSEPORT`) hung.
    static func main() async {
        if lorikeet_mark_close_on_exec_from(3) != 0 {
            let message = Array("lorikeet: warning: cannot mark inherited descriptors close-on-exec (/proc unreadable?)\n".utf8)
            _ = message.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        }
        await self.main(nil)
    }
}

/// The version every process reports (control Hello, /version, admin status).
enum LorikeetVersion {
    static let string = "0.1.0"
}

extension ExitCode {
    /// ArgumentParser's exit code for one of Lorikeet's (`throw ExitCode(.cannotBoot)`).
    init(_ code: LorikeetExitCode) {
        self.init(code.rawValue)
    }
}
