// An app that embeds Stork: every instance runs a `ResourceManager` with its own handler, and each customer
// account is kept connected by exactly one instance. Here two instances share one process and an in-memory
// network; in a real deployment each process gets a network transport and the addresses of its peers as seeds.
//
//     swift run stork-example-embedded

import Logging
import ServiceLifecycle
import Stork

/// What the app does for one account: in real life, open a WebSocket to the account's device cloud in `handle`
/// and close it in `terminate`.
struct AccountConnector: ResourceHandler {
    let instance: String

    func handle(_ resource: Resource, context: ResourceContext) async throws {
        let url = resource[string: "url"] ?? "?"
        print("\(self.instance): connect \(resource.id) to \(url) (attempt \(context.attempt))")
    }

    func handleFailed(_ resource: Resource, error: any Error, context: ResourceContext) async {
        print("\(self.instance): could not connect \(resource.id): \(error); Stork retries with backoff")
    }

    func terminate(_ resource: Resource, reason: TerminationReason, context: ResourceContext) async throws {
        print("\(self.instance): disconnect \(resource.id) (\(reason))")
    }
}

@main
struct EmbeddedExample {
    static func main() async throws {
        var logger = Logger(label: "example")
        logger.logLevel = .warning
        let network = InMemoryNetwork()
        let accounts = StaticResourceSource(
            (1...6).map {
                Resource(id: ResourceID("acct-\($0)"), attributes: ["url": .string("wss://cloud.example/\($0)")])
            }
        )

        var first = ResourceManagerConfiguration(name: "instance-1")
        first.seeds = []
        var second = ResourceManagerConfiguration(name: "instance-2")
        second.seeds = ["instance-1:7946"]

        let one = ResourceManager(
            configuration: first,
            handler: AccountConnector(instance: "instance-1"),
            source: accounts,
            transport: network.endpoint("instance-1:7946"),
            logger: logger
        )
        let two = ResourceManager(
            configuration: second,
            handler: AccountConnector(instance: "instance-2"),
            source: accounts,
            transport: network.endpoint("instance-2:7946"),
            logger: logger
        )

        // Both are ordinary services: run them in a ServiceGroup next to the app's own services. A manager returns
        // from run() when it has left the cluster, which is not a failure of the group.
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [one, two].map { .init(service: $0, successTerminationBehavior: .ignore) },
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            try await Task.sleep(for: .seconds(2))
            print("instance-1 runs \(one.status().running), instance-2 runs \(two.status().running)")

            print("Allocating acct-7 through instance-1:")
            let outcome = await one.allocate(
                Resource(id: "acct-7", attributes: ["url": .string("wss://cloud.example/7")])
            )
            print("  \(outcome)")

            print("instance-2 stops; instance-1 takes its accounts over:")
            await two.stop()
            try await Task.sleep(for: .milliseconds(500))
            print("instance-1 runs \(one.status().running)")
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
    }
}
