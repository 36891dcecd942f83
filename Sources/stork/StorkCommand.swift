import ArgumentParser

@main
struct StorkCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stork",
        abstract: "Stork: keeps long-lived resources running on exactly one node of a cluster.",
        subcommands: [
            LookupCommand.self,
            BenchCommand.self,
            SimCommand.self,
            DemoCommand.self,
            ServeCommand.self,
            StatusCommand.self,
            ResourcesCommand.self,
            AllocateCommand.self,
            DeallocateCommand.self,
            DrainCommand.self,
            HashPasswordCommand.self,
        ]
    )
}
