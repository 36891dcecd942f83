import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import StorkCore
import StorkResources
import StorkTestKit
import Synchronization
import Testing

@testable import StorkServer

struct NoopHandler: ResourceHandler {
    var failing: Set<ResourceID> = []

    func handle(_ resource: Resource, context: ResourceContext) async throws {
        if self.failing.contains(resource.id) { throw StorkError(.handlerFailed, "no") }
    }

    func terminate(_ resource: Resource, reason: TerminationReason, context: ResourceContext) async throws {}
}

/// Runs a single-node manager on an in-memory network and the admin API router around it.
func withAdminAPI(
    resources: [Resource] = [],
    _ body: @Sendable (ResourceManager, any TestClientProtocol) async throws -> Void
) async throws {
    var logger = Logger(label: "test")
    logger.logLevel = .critical
    var configuration = ResourceManagerConfiguration(name: "n1")
    configuration.leaveLinger = .milliseconds(50)
    let manager = ResourceManager(
        configuration: configuration,
        handler: NoopHandler(failing: ["bad"]),
        source: StaticResourceSource(resources),
        transport: InMemoryNetwork().endpoint("n1:7946"),
        logger: logger
    )
    let app = Application(router: AdminAPI.router(manager: manager), logger: logger)
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await manager.run() }
        _ = await eventually(.seconds(10)) {
            manager.status().isReady && manager.status().running.count >= resources.count
        }
        try await app.test(.router) { client in try await body(manager, client) }
        await manager.stop()
        try await group.waitForAll()
    }
}

func decode(_ buffer: ByteBuffer) throws -> [String: JSONValue] {
    guard case .object(let object) = try JSONDecoder().decode(JSONValue.self, from: Data(buffer: buffer)) else {
        throw StorkError(.invalidInput, "not an object")
    }
    return object
}

/// A field of a JSON object body, or nil.
func field(_ buffer: ByteBuffer, _ key: String) -> JSONValue? {
    (try? decode(buffer))?[key]
}

@Suite("Admin API", .timeLimit(.minutes(1)))
struct AdminAPITests {
    @Test("health, readiness, cluster view")
    func clusterAndHealth() async throws {
        try await withAdminAPI { manager, client in
            try await client.execute(uri: "/healthz", method: .get) { #expect($0.status == .ok) }
            try await client.execute(uri: "/readyz", method: .get) { #expect($0.status == .ok) }
            try await client.execute(uri: "/v1/cluster", method: .get) { response in
                #expect(response.status == .ok)
                let document = try decode(response.body)
                #expect(document["ready"] == true)
                #expect(document["view"] == ["n1"])
                guard case .array(let members)? = document["members"], case .object(let first)? = members.first else {
                    Issue.record("no members")
                    return
                }
                #expect(first["status"] == "alive")
                #expect(first["incarnation"] != nil)
                #expect(document["checksum"] == .string(String(manager.status().viewChecksum)))
            }
        }
    }

    @Test("allocate, list with state and since, deallocate, and the cluster scope")
    func resources() async throws {
        try await withAdminAPI(resources: [Resource(id: "from-source")]) { _, client in
            let body = ByteBuffer(string: #"{"id":"acct-1","kind":"websocket","url":"ws://127.0.0.1:1"}"#)
            try await client.execute(uri: "/v1/resources", method: .post, body: body) { response in
                #expect(response.status == .ok)
                let document = try decode(response.body)
                #expect(document["outcome"] == "handled")
                #expect(document["node"] == "n1")
            }
            try await client.execute(uri: "/v1/resources", method: .get) { response in
                let document = try decode(response.body)
                guard case .array(let items)? = document["resources"] else {
                    Issue.record("no resources")
                    return
                }
                let ids = items.compactMap { item -> String? in
                    guard case .object(let fields) = item else { return nil }
                    #expect(fields["state"] == "running")
                    #expect(fields["since"]?.stringValue?.contains("T") == true)
                    return fields["id"]?.stringValue
                }
                #expect(Set(ids) == ["acct-1", "from-source"])
            }
            try await client.execute(uri: "/v1/resources?scope=cluster", method: .get) { response in
                let document = try decode(response.body)
                #expect(document["scope"] == "cluster")
                guard case .array(let items)? = document["resources"] else {
                    Issue.record("no resources")
                    return
                }
                #expect(items.count == 2)
            }
            try await client.execute(uri: "/v1/resources/acct-1", method: .delete) { response in
                #expect(response.status == .ok)
                #expect(field(response.body, "outcome") == "terminated")
            }
            try await client.execute(uri: "/v1/resources", method: .get) { response in
                guard case .array(let items)? = try decode(response.body)["resources"] else { return }
                #expect(items.count == 1)
            }
        }
    }

    @Test("a handler failure is reported as 202 with retrying; bad bodies are 400 and change nothing")
    func errors() async throws {
        try await withAdminAPI { manager, client in
            try await client.execute(uri: "/v1/resources", method: .post, body: ByteBuffer(string: #"{"id":"bad"}"#)) {
                #expect($0.status == .accepted)
                #expect(field($0.body, "outcome") == "handle-failed")
            }
            for bad in [
                "", "{", "[]", #"{"id":""}"#, #"{"id":7}"#, #"{"kind":"x"}"#, "\u{0}\u{1}", #"{"id":"p","stork.node":3}"#,
                #"{"id":"p","stork.node":""}"#,
            ] {
                try await client.execute(uri: "/v1/resources", method: .post, body: ByteBuffer(string: bad)) {
                    #expect($0.status == .badRequest, "body \(bad)")
                    #expect(field($0.body, "error") != nil)
                }
            }
            #expect(manager.status().desiredCount == 1)
        }
    }

    @Test("a resource pinned to this node runs here and is listed with it as owner")
    func pinned() async throws {
        try await withAdminAPI { manager, client in
            let body = ByteBuffer(string: #"{"id":"pinned-1","stork.node":"n1"}"#)
            try await client.execute(uri: "/v1/resources", method: .post, body: body) {
                #expect($0.status == .ok)
                #expect(field($0.body, "outcome") == "handled")
            }
            #expect(manager.clusterAssignment().first { $0.resource.id == "pinned-1" }?.owner?.name == "n1")
            // A pin to a node that is not a member (nobody runs it meanwhile): ForwardingTests.
        }
    }

    @Test("drain refuses on request while the node keeps streams, and names what goes offline")
    func drainWithKeptStreams() async throws {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let manager = ResourceManager(
            configuration: ResourceManagerConfiguration(name: "n1"),
            handler: NoopHandler(),
            source: StaticResourceSource([]),
            transport: InMemoryNetwork().endpoint("n1:7946"),
            logger: logger
        )
        let drained = Mutex(0)
        let router = AdminAPI.router(
            manager: manager,
            drain: { drained.withLock { $0 += 1 } },
            keptStreams: { ["KEPT"] }
        )
        try await Application(router: router, logger: logger).test(.router) { client in
            try await client.execute(uri: "/v1/drain?local_streams=refuse", method: .post) {
                #expect($0.status == .conflict)
                #expect(field($0.body, "error")?.stringValue?.contains("KEPT") == true)
            }
            try await client.execute(uri: "/v1/drain?local_streams=move", method: .post) {
                #expect($0.status == .badRequest)
            }
            #expect(drained.withLock { $0 } == 0)
            try await client.execute(uri: "/v1/drain", method: .post) {
                #expect($0.status == .accepted)
                #expect(field($0.body, "offline_streams") == .array(["KEPT"]))
            }
            #expect(drained.withLock { $0 } == 1)
        }
    }

    @Test("metrics are Prometheus text with members, resources and counters")
    func metrics() async throws {
        try await withAdminAPI(resources: [Resource(id: "r1"), Resource(id: "r2")]) { _, client in
            let clock = ContinuousClock()
            try await client.execute(uri: "/metrics", method: .get) { response in
                let text = String(buffer: response.body)
                #expect(text.contains("# TYPE stork_members gauge"))
                #expect(text.contains(#"stork_members{status="alive"} 1"#))
                #expect(text.contains("stork_handles_total"))
                #expect(text.contains("stork_desired_resources 2"))
            }
            _ = clock
        }
    }

    @Test("the dashboard is one self-contained page that reads the admin API")
    func dashboardPage() async throws {
        try await withAdminAPI { _, client in
            try await client.execute(uri: "/dashboard", method: .get) { response in
                #expect(response.status == .ok)
                #expect(response.headers[.contentType]?.hasPrefix("text/html") == true)
                let page = String(buffer: response.body)
                #expect(page.contains("<title>Stork dashboard</title>"))
                for endpoint in ["/v1/cluster", "/v1/resources?scope=cluster", "/v1/moves", "/v1/stats"] {
                    #expect(page.contains(endpoint), "the page reads \(endpoint)")
                }
                // Offline: nothing is loaded from anywhere else.
                for outside in ["http://", "https://", "src=", "@import", "url("] {
                    #expect(!page.contains(outside), "the page refers to \(outside)")
                }
            }
        }
    }

    @Test("stats are cumulative counters by named source, with the resource manager's")
    func stats() async throws {
        try await withAdminAPI(resources: [Resource(id: "r1"), Resource(id: "r2")]) { _, client in
            try await client.execute(uri: "/v1/stats", method: .get) { response in
                #expect(response.status == .ok)
                let document = try decode(response.body)
                #expect(document["node"] == "n1")
                guard case .number(let time)? = document["time"], case .array(let sources)? = document["sources"] else {
                    Issue.record("no time or sources: \(document)")
                    return
                }
                #expect(time > 0)
                let byName = Dictionary(
                    uniqueKeysWithValues: sources.compactMap { source -> (String, [String: JSONValue])? in
                        guard case .object(let fields) = source, let name = fields["name"]?.stringValue else { return nil }
                        return (name, fields)
                    }
                )
                // No NATS endpoint in this router: only the resource manager's source.
                #expect(Set(byName.keys) == ["resources"])
                guard case .object(let counters)? = byName["resources"]?["counters"],
                    case .object(let gauges)? = byName["resources"]?["gauges"]
                else {
                    Issue.record("no counters or gauges")
                    return
                }
                #expect(counters["handles"] == .number(2))
                #expect(gauges["running"] == .number(2))
                #expect(gauges["desired"] == .number(2))
            }
        }
    }

    @Test("moves: none in a cluster of one")
    func noMoves() async throws {
        try await withAdminAPI(resources: [Resource(id: "r1")]) { _, client in
            try await client.execute(uri: "/v1/moves", method: .get) { response in
                #expect(response.status == .ok)
                let document = try decode(response.body)
                #expect(document["node"] == "n1")
                #expect(document["moves"] == .array([]))
            }
        }
    }
}
