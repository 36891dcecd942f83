import Foundation
import StorkCore
import StorkPlacement
import StorkResources
import Testing

@testable import StorkServer

@Suite("Server configuration")
struct ConfigurationTests {
    static let contract = """
        node:
          name: n1                      # unique per node
          bind: 127.0.0.1:7946          # cluster address (UDP and TCP)
          http: 127.0.0.1:8080          # admin API (and later the gateway)
          seeds: [127.0.0.1:7947]       # any live members; may include itself
          data: ./stork-data            # local state
        cluster: {name: stork, key: ${STORK_CLUSTER_KEY}}
        resources:
          sources:
            - {type: file, path: resources.json}
            - {type: http, url: http://127.0.0.1:3000/resources, poll: 10s}
          handler: {type: sidecar, url: http://127.0.0.1:9000}
        """

    @Test("the documented contract parses")
    func contract() throws {
        let configuration = try ServerConfiguration.parse(yaml: Self.contract, environment: ["STORK_CLUSTER_KEY": "k"])
        #expect(configuration.node.name == "n1")
        #expect(configuration.node.bind == "127.0.0.1:7946")
        #expect(configuration.node.http == "127.0.0.1:8080")
        #expect(configuration.node.seeds == ["127.0.0.1:7947"])
        #expect(configuration.node.data == "./stork-data")
        #expect(configuration.cluster.name == "stork")
        #expect(configuration.cluster.key == "k")
        #expect(configuration.resources.sources.count == 2)
        #expect(configuration.resources.sources[0] == .init(name: "file-1", kind: .file(path: "resources.json", reload: true), poll: nil))
        #expect(
            configuration.resources.sources[1]
                == .init(name: "http-1", kind: .http(url: "http://127.0.0.1:3000/resources", headers: [:], timeout: .seconds(5)), poll: .seconds(10))
        )
        #expect(configuration.resources.handler == .sidecar(url: "http://127.0.0.1:9000", timeout: .seconds(10), headers: [:]))
        // Without the variable the key is empty: no key.
        #expect(try ServerConfiguration.parse(yaml: Self.contract).cluster.key == nil)
    }

    @Test("no configuration at all gives a working single node")
    func defaults() throws {
        let configuration = try ServerConfiguration.load(path: nil, environment: [:])
        #expect(configuration.node.bind == "127.0.0.1:7946")
        #expect(configuration.node.http == "127.0.0.1:8080")
        #expect(configuration.node.seeds.isEmpty)
        #expect(configuration.resources.handler == .log)
        #expect(configuration.resources.sources.isEmpty)
    }

    @Test("resources.replicas: a number of members or all, 2 by default, passed to every node's settings")
    func replicas() throws {
        #expect(try ServerConfiguration.parse(yaml: "node: {name: n}").resources.replicas == .members(2))
        let three = try ServerConfiguration.parse(yaml: "resources: {replicas: 3}")
        #expect(three.resourceManagerConfiguration().node.replicas == .members(3))
        let all = try ServerConfiguration.parse(yaml: "resources: {replicas: all}")
        #expect(all.resourceManagerConfiguration().node.replicas == .everyMember)
    }

    @Test("defaults < file < environment < flags")
    func precedence() throws {
        let path = NSTemporaryDirectory() + "stork-config-\(UUID().uuidString).yaml"
        try Self.contract.write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let environment = ["STORK_NODE_NAME": "from-env", "STORK_HTTP": "127.0.0.1:9999", "STORK_SEEDS": "127.0.0.1:1,127.0.0.1:2"]
        let configuration = try ServerConfiguration.load(
            path: path,
            environment: environment,
            overrides: ConfigurationOverrides(name: "from-flag")
        )
        #expect(configuration.node.name == "from-flag")
        #expect(configuration.node.http == "127.0.0.1:9999")
        #expect(configuration.node.seeds == ["127.0.0.1:1", "127.0.0.1:2"])
        #expect(configuration.node.bind == "127.0.0.1:7946")
    }

    @Test("${VAR} and ${VAR:-default} are substituted in values")
    func substitution() throws {
        let yaml = "node: {name: \"${NAME:-fallback}\", data: \"/var/${DIR}/x\"}"
        let set = try ServerConfiguration.parse(yaml: yaml, environment: ["NAME": "n7", "DIR": "lib"])
        #expect(set.node.name == "n7" && set.node.data == "/var/lib/x")
        #expect(try ServerConfiguration.parse(yaml: yaml, environment: [:]).node.name == "fallback")
    }

    @Test(
        "bad input gives an error naming the key",
        arguments: [
            ("node: {nmae: x}", "node.nmae: unknown key (did you mean 'name'?)"),
            ("node: {bind: localhost}", "node.bind"),
            ("node: {seeds: [1.2.3.4:99999]}", "node.seeds"),
            ("resources: {sources: [{type: ftp, path: x}]}", "resources.sources[0].type"),
            ("resources: {sources: [{type: file}]}", "resources.sources[0]: a file source needs 'path'"),
            ("resources: {sources: [{type: http, url: 'not a url'}]}", "resources.sources[0].url"),
            ("resources: {sources: [{type: http, url: 'http://x/y', poll: soon}]}", "resources.sources[0].poll"),
            ("resources: {handler: {type: sidecar}}", "resources.handler: a sidecar handler needs 'url'"),
            ("resources: {placement: hexagonal}", "resources.placement"),
            ("resources: {cacheAllResources: maybe}", "resources.cacheAllResources"),
            ("resources: {replicas: 0}", "resources.replicas: expected a positive number of members or all, not '0'"),
            ("resources: {replicas: most}", "resources.replicas"),
            ("nats: {lameDuckDuration: 5s, lameDuckGracePeriod: 5s}", "lameDuckGracePeriod must be at least 0 and shorter"),
            ("nats: {lameDuckDuration: soon}", "nats.lameDuckDuration"),
            ("node: [1, 2]", "node: expected a mapping"),
            ("{ unbalanced", "not valid YAML"),
            ("resources: {sources: [{type: file, path: a, name: s}, {type: file, path: b, name: s}]}", "same name"),
            ("connectors: {enabled: perhaps}", "connectors.enabled: expected true or false"),
            ("connectors: {unknownKind: ignore}", "connectors.unknownKind: unknown value 'ignore'; expected fail or handler"),
            ("connectors: {secretFile: x}", "connectors.secretFile: unknown key (did you mean 'secretsFile'?)"),
            ("connectors: {secretsFile: /nonexistent/stork-secrets}", "connectors.secretsFile: cannot read /nonexistent/stork-secrets"),
            ("connectors: [websocket]", "connectors: expected a mapping"),
        ]
    )
    func errors(yaml: String, expected: String) throws {
        do {
            var configuration = try ServerConfiguration.parse(yaml: yaml)
            try configuration.validate()
            configuration.node.name = ""
            Issue.record("accepted: \(yaml)")
        } catch let error as StorkError {
            #expect(error.code == .invalidInput)
            #expect(error.description.contains(expected), "\(error)")
        }
    }

    @Test("2,000 random mutations of a valid file never crash the loader")
    func mutations() {
        var random = SeededRandom(seed: 11)
        let base = Array(Self.contract.utf8)
        var accepted = 0
        var rejected = 0
        for _ in 0..<2_000 {
            var bytes = base
            for _ in 0..<(1 + random.next() % 4) {
                let index = Int(random.next() % UInt64(bytes.count))
                switch random.next() % 3 {
                case 0: bytes[index] = UInt8(truncatingIfNeeded: random.next() % 128)
                case 1: bytes.remove(at: index)
                default: bytes.insert(Array("{}[]:,'\"#-&*!|>%@`".utf8)[Int(random.next() % 18)], at: index)
                }
            }
            if (try? ServerConfiguration.parse(yaml: String(decoding: bytes, as: UTF8.self))) != nil {
                accepted += 1
            } else {
                rejected += 1
            }
        }
        #expect(accepted + rejected == 2_000)
        #expect(rejected > 0)
    }

    @Test("durations and addresses")
    func values() throws {
        #expect(try ConfigValue.duration("500ms", path: "x") == .milliseconds(500))
        #expect(try ConfigValue.duration("10s", path: "x") == .seconds(10))
        #expect(try ConfigValue.duration("2m", path: "x") == .seconds(120))
        #expect(try ConfigValue.duration("1h", path: "x") == .seconds(3600))
        #expect(try ConfigValue.duration("1.5", path: "x") == .milliseconds(1500))
        #expect(throws: StorkError.self) { try ConfigValue.duration("-1s", path: "x") }
        #expect(try ConfigValue.address("127.0.0.1:0", path: "x") == "127.0.0.1:0")
        #expect(throws: StorkError.self) { try ConfigValue.address(":80", path: "x") }
    }
}

@Suite("Server configuration: ownership")
struct OwnershipConfigurationTests {
    @Test("ownership: {mode: lease, store: …} with durations; the default store is SQLite in node.data")
    func leaseMode() throws {
        let configuration = try ServerConfiguration.parse(
            yaml: """
                node: {data: /var/lib/stork}
                ownership: {mode: lease, leaseDuration: 6s, renewInterval: 1s, renewDeadline: 4s, acquireRetryInterval: 200ms, storeTimeout: 500ms}
                """
        )
        #expect(configuration.ownership.mode == .lease)
        #expect(configuration.ownershipStoreURL == "sqlite:/var/lib/stork/leases.db")
        let manager = configuration.resourceManagerConfiguration()
        #expect(
            manager.node.orchestrator.ownership
                == .lease(LeaseSettings(duration: .seconds(6), renewInterval: .seconds(1), renewDeadline: .seconds(4), acquireRetryInterval: .milliseconds(200)))
        )
        #expect(manager.ownershipStoreTimeout == .milliseconds(500))
        let postgres = try ServerConfiguration.parse(
            yaml: "ownership: {mode: lease, store: 'postgres://u:p@127.0.0.1:5432/db'}"
        )
        #expect(postgres.ownershipStoreURL == "postgres://u:p@127.0.0.1:5432/db")
        #expect(try ServerConfiguration.parse(yaml: "node: {name: a}").ownershipStoreURL == nil, "gossip by default")
    }

    @Test("connectors are on by default; the connectors section and the environment configure them")
    func connectors() throws {
        let defaults = try ServerConfiguration.load(path: nil, environment: [:])
        #expect(defaults.connectors.enabled)
        #expect(defaults.connectors.unknownKind == .fail)
        #expect(defaults.connectors.secretsFile == nil)
        #expect(defaults.connectors.stopGracePeriod == .seconds(30))
        #expect(
            try ServerConfiguration.parse(yaml: "connectors: {stopGracePeriod: 45s}").connectors.stopGracePeriod
                == .seconds(45)
        )

        let secrets = NSTemporaryDirectory() + "stork-secrets-\(UUID().uuidString).env"
        try "FEED_TOKEN=t\n".write(toFile: secrets, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: secrets) }
        let parsed = try ServerConfiguration.parse(
            yaml: "connectors: {enabled: yes, unknownKind: handler, secretsFile: ${SECRETS}}",
            environment: ["SECRETS": secrets]
        )
        #expect(parsed.connectors == .init(enabled: true, unknownKind: .handler, secretsFile: secrets))
        try parsed.validate()
        #expect(try ServerConfiguration.parse(yaml: "connectors: {enabled: false}").connectors.enabled == false)
        let fromEnvironment = try ServerConfiguration.load(path: nil, environment: ["STORK_CONNECTORS_SECRETS_FILE": secrets])
        #expect(fromEnvironment.connectors.secretsFile == secrets)
    }

    @Test("environment overrides the mode and the store")
    func environment() throws {
        let configuration = try ServerConfiguration.load(
            path: nil,
            environment: ["STORK_OWNERSHIP_MODE": "lease", "STORK_OWNERSHIP_STORE": "sqlite:/tmp/x.db"]
        )
        #expect(configuration.ownershipStoreURL == "sqlite:/tmp/x.db")
    }

    @Test(
        "bad ownership settings are refused with the key in the message",
        arguments: [
            ("ownership: {mode: strict}", "ownership.mode"),
            ("ownership: {mode: lease, renewDeadline: 20s}", "ownership.renewDeadline"),
            ("ownership: {mode: lease, renewInterval: 8s}", "ownership.renewInterval"),
            ("ownership: {mode: lease, store: 'mysql://x'}", "ownership.store"),
            ("ownership: {mode: lease, storeTimeout: 9s}", "ownership.storeTimeout"),
            ("ownership: {mode: lease, lease: 5s}", "ownership.lease"),
        ]
    )
    func rejected(yaml: String, key: String) throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("stork-config-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("stork.yaml")
        try yaml.write(to: file, atomically: true, encoding: .utf8)
        do {
            _ = try ServerConfiguration.load(path: file.path, environment: [:])
            Issue.record("accepted: \(yaml)")
        } catch let error as StorkError {
            #expect(error.code == .invalidInput)
            #expect(error.message.contains(key), "\(error.message)")
        }
    }
}
