import ArgumentParser
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
