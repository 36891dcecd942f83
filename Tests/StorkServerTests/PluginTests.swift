import AsyncHTTPClient
import Foundation
import Logging
import StorkCore
import StorkResources
import Synchronization
import StorkTestKit
import Testing

@testable import StorkServer

/// Resources `{prefix}-1` … `{prefix}-{count}`, made from the entry's options.
struct NumberedSource: ResourceSource {
    let prefix: String
    let count: Int

    func fetch() async throws -> [Resource] {
        (1...self.count).map { Resource(id: ResourceID("\(self.prefix)-\($0)")) }
    }
}

/// The ids a `RecordingHandler` handled.
final class HandledIDs: Sendable {
    let ids = Mutex<Set<String>>([])
    var value: Set<String> { self.ids.withLock { $0 } }
}

/// Remembers what it handles.
struct RecordingHandler: ResourceHandler {
    let handled: HandledIDs

    func handle(_ resource: Resource, context: ResourceContext) async throws {
        self.handled.ids.withLock { _ = $0.insert(resource.id.rawValue) }
    }

    func terminate(_ resource: Resource, reason: TerminationReason, context: ResourceContext) async throws {}
}

@Suite("Plugins by configuration", .timeLimit(.minutes(1)))
struct PluginTests {
    static func plugins(recording handled: HandledIDs) -> StorkPlugins {
        var plugins = StorkPlugins()
        plugins.register(source: "numbered") { options, _ in
            try options.checkKeys(["prefix", "count"])
            return NumberedSource(
                prefix: try options.requiredString("prefix"),
                count: try options.integer("count", in: 1...1000) ?? 3
            )
        }
        plugins.register(handler: "recording") { options, _ in
            try options.checkKeys([])
            return RecordingHandler(handled: handled)
        }
        return plugins
    }

    @Test("a configuration naming registered types builds a server that uses them")
    func customSourceAndHandler() async throws {
        let handled = HandledIDs()
        let plugins = Self.plugins(recording: handled)
        let directory = NSTemporaryDirectory() + "stork-plugins-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let yaml = """
            node: {name: n1, bind: 127.0.0.1:\(try freeLoopbackPort()), http: 127.0.0.1:\(try freeLoopbackPort()), nats: off, data: \(directory)}
            resources:
              sources:
                - {type: numbered, name: accounts, prefix: acct, count: 4}
              handler: {type: recording}
            connectors: {enabled: false}
            """
        let configuration = try ServerConfiguration.parse(yaml: yaml, plugins: plugins)
        #expect(
            configuration.resources.sources.first?.kind
                == .plugin(PluginSelection(type: "numbered", options: ["prefix": .string("acct"), "count": .number(4)]))
        )
        #expect(configuration.resources.handler == .plugin(PluginSelection(type: "recording")))
        var quiet = Logger(label: "test")
        quiet.logLevel = .critical
        let server = StorkServer(configuration: configuration, plugins: plugins, logger: quiet)
        await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.run(installSignalHandlers: false) }
            let all: Set<String> = ["acct-1", "acct-2", "acct-3", "acct-4"]
            #expect(await eventually(.seconds(30)) { handled.value == all })
            group.cancelAll()
        }
    }

    @Test(
        "an unknown type is an error naming the key and listing the known types",
        arguments: [
            ("resources: {sources: [{type: nope}]}", "resources.sources[0].type: unknown source type 'nope' (known: file, http, numbered)"),
            ("resources: {handler: {type: nope}}", "resources.handler.type: unknown handler type 'nope' (known: log, recording, sidecar)"),
            ("streaming: {store: nope}", "streaming.store: unknown message store type 'nope' (known: file, memory, postgres, sqlite)"),
            ("logger: {type: syslog}", "logger.type: unknown logger type 'syslog' (known: stderr, stdout)"),
            ("metrics: statsd", "metrics: unknown metrics type 'statsd' (known: none, prometheus)"),
            ("endpoints: [{type: mqtt}]", "endpoints[0].type: unknown endpoint type 'mqtt' (known: none)"),
            ("gateway: {permissions: {type: valve}}", "gateway.permissions.type: unknown permission type 'valve' (known: none, open, rules)"),
            ("ownership: {mode: lease, store: 'redis://x'}", "unknown ownership store scheme 'redis'"),
        ]
    )
    func unknownType(yaml: String, expected: String) throws {
        let plugins = Self.plugins(recording: HandledIDs())
        do {
            _ = try ServerConfiguration.parse(yaml: yaml, plugins: plugins).validate(plugins: plugins)
            Issue.record("accepted: \(yaml)")
        } catch let error as StorkError {
            #expect(error.code == .invalidInput)
            #expect(error.description.contains(expected), "\(error)")
        }
    }

    @Test("a plugin's bad option is an error naming the entry, the type and the key")
    func badOption() throws {
        let plugins = Self.plugins(recording: HandledIDs())
        let configuration = try ServerConfiguration.parse(
            yaml: "resources: {sources: [{type: file, path: a.json}, {type: numbered, prefix: x, count: many}]}",
            plugins: plugins
        )
        let context = StorkPluginContext(
            logger: Logger(label: "test"),
            httpClient: HTTPClient.shared,
            node: "n1",
            cluster: "stork",
            dataDirectory: NSTemporaryDirectory()
        )
        do {
            _ = try configuration.makeSourceRegistrations(plugins: plugins, context: context)
            Issue.record("accepted count: many")
        } catch let error as StorkError {
            #expect(error.message.contains("resources.sources[1] (numbered): 'count' must be a whole number from 1 to 1000"), "\(error)")
        }
        // An unregistered type is refused when building too; the built-in types go through the same registry.
        #expect(throws: StorkError.self) {
            _ = try StorkPlugins().makeSource(PluginSelection(type: "numbered"), context: context)
        }
        _ = try ServerConfiguration().makeHandler(plugins: plugins, context: context)
    }

    @Test("permissions: open allows everything; the stdout logger reads format and level")
    func builtIns() throws {
        let configuration = try ServerConfiguration.parse(
            yaml: "gateway: {permissions: {type: open}}\nlogger: {type: stdout, format: json, level: debug}"
        )
        #expect(configuration.gateway.permissionsPlugin == PluginSelection(type: "open"))
        #expect(configuration.logger == PluginSelection(type: "stdout", options: ["format": .string("json"), "level": .string("debug")]))
        let factory = try StorkPlugins().makeLogHandlerFactory(configuration.logger!)
        #expect(factory("x").logLevel == .debug)
        #expect(throws: StorkError.self) {
            _ = try StorkPlugins().makeLogHandlerFactory(PluginSelection(type: "stdout", options: ["format": .string("xml")]))
        }
        let context = StorkPluginContext(
            logger: Logger(label: "test"),
            httpClient: HTTPClient.shared,
            node: "n1",
            cluster: "stork",
            dataDirectory: NSTemporaryDirectory()
        )
        let open = try StorkPlugins().makePermissions(configuration.permissionsSelection, context: context)
        #expect(open.rules().rules.count == 1)
        // The existing keys still select the rules type.
        let inline = try ServerConfiguration.parse(yaml: "gateway: {permissions: {rules: [{subject: 'a.>', subscribe: true}]}}")
        #expect(inline.permissionsSelection.type == "rules")
        #expect(try StorkPlugins().makePermissions(inline.permissionsSelection, context: context).rules().rules.count == 1)
    }
}
