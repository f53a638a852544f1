import ArgumentParser

/// The `lorikeet` command: every process of the server is a subcommand of one binary.
@main
struct Lorikeet: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lorikeet",
        abstract: "Multi-process OpenAI-compatible serving frontend with consistent dynamic LoRA adapters.",
        version: LorikeetVersion.string,
        subcommands: [ServeCommand.self, EngineCommand.self, CtlCommand.self]
    )
}

/// The version every process reports (control Hello, /version, admin status).
enum LorikeetVersion {
    static let string = "0.1.0"
}
