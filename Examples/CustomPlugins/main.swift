// A `stork serve` of one's own: registers three plugins by name, then loads a stork.yaml that names them and runs
// the node exactly as `stork serve` would (Docs/plugins.md walks through it).
//
//     swift run stork-example-plugins --config Examples/CustomPlugins/stork.yaml
//
// Then: `curl -s localhost:8080/v1/resources` lists acct-1 … acct-3, each run by the `ticker` connector, which
// publishes `tick N` on `demo.ticks.<id>` every second (`nats sub 'demo.ticks.>'` shows them). The gateway's clients
// log in with the token `let-me-in` (the `demo-token` authenticator).

import Foundation
import StorkConnectors
import StorkCore
import StorkRealtime
import StorkResources
import StorkServer

// MARK: - A resource source: resources generated from its options

/// `{type: accounts, prefix: acct, count: 3, connector: ticker}` lists `acct-1` … `acct-3`, each with
/// `kind: ticker` (so the `ticker` connector runs it) and its own subject.
struct AccountsSource: ResourceSource {
    let prefix: String
    let count: Int
    let kind: String

    func fetch() async throws -> [Resource] {
        (1...self.count).map { number in
            let id = "\(self.prefix)-\(number)"
            return Resource(
                id: ResourceID(id),
                attributes: ["kind": .string(self.kind), "subject": .string("demo.ticks.\(id)")]
            )
        }
    }
}

// MARK: - An authenticator: one fixed demo token

/// `{type: demo-token, token: …, user: …}`: the token logs in as `user` with the role `demo`; other tokens are
/// rejected; passwords are somebody else's (`notMine`, so the next authenticator is asked).
struct DemoTokenAuthenticator: Authenticator {
    let name = "demo-token"
    let token: String
    let user: String

    func authenticate(_ credentials: Credentials) async -> AuthenticationOutcome {
        guard case .token(let presented) = credentials else { return .notMine }
        return presented == self.token ? .accepted(AuthenticatedUser(id: self.user, roles: ["demo"])) : .rejected("bad token")
    }
}

// MARK: - A connector: publishes a tick every second

/// Runs resources whose `kind` is `ticker`: publishes `tick N` on the resource's `subject` every `interval`
/// (default 1 s) until told to stop.
struct TickerConnector: Connector {
    let name = "ticker"

    func validate(_ resource: Resource) throws {
        _ = try ConnectorAttributes(resource, kind: self.name).subject("subject")
    }

    func run(_ resource: Resource, context: ConnectorContext) async throws {
        let subject = try ConnectorAttributes(resource, kind: self.name).subject("subject")
        context.status.state(.connected)
        var count = 0
        while await context.sleep(.seconds(1)) {
            count += 1
            context.messaging.publish(StorkMessage(subject: subject, payload: Array("tick \(count)".utf8)))
            context.status.sent()
        }
    }
}

// MARK: - Registering them and serving

@main
struct CustomPluginsExample {
    static func main() async throws {
        var plugins = StorkPlugins()
        plugins.register(source: "accounts") { options, _ in
            try options.checkKeys(["prefix", "count", "connector"])
            return AccountsSource(
                prefix: try options.string("prefix") ?? "acct",
                count: try options.integer("count", in: 1...10_000) ?? 3,
                kind: try options.string("connector") ?? "ticker"
            )
        }
        plugins.register(authenticator: "demo-token") { options, _ in
            try options.checkKeys(["token", "user"])
            return DemoTokenAuthenticator(token: try options.requiredString("token"), user: try options.string("user") ?? "demo")
        }
        plugins.register(connector: "ticker") { _ in TickerConnector() }

        let file = StorkServer.configurationFile() ?? "Examples/CustomPlugins/stork.yaml"
        do {
            try await StorkServer.serve(configurationFile: file, plugins: plugins)
        } catch {
            FileHandle.standardError.write(Data("stork-example-plugins: \(error)\n".utf8))
            exit(1)
        }
    }
}
