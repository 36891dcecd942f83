import ArgumentParser
import Foundation
import Logging
import StorkCore
import StorkServer

/// `stork serve`: run one node of a Stork cluster.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run a Stork node: cluster membership, resources, and the admin HTTP API.",
        discussion: """
            Reads --config (YAML; every key is in Docs/configuration.md), then STORK_* environment variables, then \
            the flags below. With no configuration at all it runs a single node on 127.0.0.1:7946 (cluster) and \
            127.0.0.1:8080 (admin API) with the log handler; a resource whose `kind` is websocket, http-poll or webhook runs \
            that built-in connector instead (Docs/connectors.md). SIGTERM or `stork drain` hands every resource off \
            and exits.
            """
    )

    @Option(help: "The configuration file (YAML).") var config: String?
    @Option(help: "The node's name (node.name).") var name: String?
    @Option(help: "Cluster address host:port (node.bind).") var bind: String?
    @Option(help: "Admin API address host:port (node.http).") var http: String?
    @Option(help: "Comma-separated seed addresses (node.seeds).") var seeds: String?
    @Option(help: "NATS client endpoint host:port, or off (node.nats; default 127.0.0.1:4222).") var nats: String?
    @Option(help: "Local state directory (node.data).") var data: String?
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (default: logger.level, else info).")
    var logLevel: String?

    func run() async throws {
        MemoryReturn.apply()
        let level = try self.logLevel.map { name in
            guard let level = Logger.Level(rawValue: name) else { throw ValidationError("unknown log level '\(name)'") }
            return level
        }
        let overrides = ConfigurationOverrides(
            name: self.name,
            bind: self.bind,
            http: self.http,
            seeds: self.seeds.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } },
            nats: self.nats,
            data: self.data
        )
        // The same entry point a binary with its own plugins calls (Docs/plugins.md).
        do {
            try await StorkServer.serve(configurationFile: self.config, overrides: overrides, logLevel: level)
        } catch let error as StorkError where error.code == .invalidInput {
            throw ValidationError("\(error)")
        }
    }
}
