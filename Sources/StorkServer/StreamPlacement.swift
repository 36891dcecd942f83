import Foundation
import Logging
import ServiceLifecycle
import StorkBus
import StorkConnectors
import StorkCore
import StorkResources
import StorkSQLStreamStores
import StorkStreaming

// MARK: - Streams placed as resources

/// Runs `$js.stream.<name>` resources: the node placement picks serves the stream (JetStream opens its store, taking
/// it over from the node before), until the resource moves, changes or ends (then JetStream closes it here).
struct StreamConnector: Connector {
    static let kind = "jetstream.stream"
    let name = Self.kind
    let jetstream: JetStream

    func validate(_ resource: Resource) throws {
        _ = try Self.stream(of: resource)
    }

    func run(_ resource: Resource, context: ConnectorContext) async throws {
        let (config, created) = try Self.stream(of: resource)
        if resource.pinnedNode != nil {
            // A stream kept on its node (file, sqlite, memory): the node's JetStream opens and closes it itself; the
            // resource is the cluster's record of where it lives, run on that node only (`Resource.pinAttribute`).
            context.status.state(.connected)
            await context.stop.wait()
            return
        }
        let fenced = try await self.jetstream.serve(config, created: created)
        context.status.state(.connected)
        let lost = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await context.stop.wait()
                return false
            }
            group.addTask {
                for await _ in fenced { return true }
                // Closed here (deleted): the resource ends too; wait for that rather than return early.
                await context.stop.wait()
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        await self.jetstream.release(config.name)
        if lost, !context.isStopping {
            // Another node opened the stream while this one served it (a pause, a partition): its state here is
            // stale. Failing makes the resource start again here (with backoff) if it is still placed here: a fresh
            // open that reads the store and takes the stream back.
            throw StorkError(.unavailable, "stream \(config.name) was opened by another node; opening it again")
        }
    }

    /// The resource of a stream: its id, the connector's kind, the configuration and creation time; pinned to
    /// `node` for a stream kept there.
    static func resource(_ config: StreamConfig, created: String, pinnedTo node: String? = nil) throws -> Resource {
        let json = try JSONValue.parse(Array(JSONEncoder().encode(config)))
        var attributes: [String: JSONValue] = ["kind": .string(Self.kind), "config": json, "created": .string(created)]
        if let node { attributes[Resource.pinAttribute] = .string(node) }
        return Resource(id: ResourceID(JetStream.streamResourcePrefix + config.name), attributes: attributes)
    }

    /// The streams the cluster records (the resources of this connector's kind), by name.
    static func records(_ manager: ResourceManager) -> [String: StreamRecord] {
        var records: [String: StreamRecord] = [:]
        for (resource, owner) in manager.desiredResources(withPrefix: JetStream.streamResourcePrefix) {
            guard let record = Self.record(resource, owner: owner) else { continue }
            records[record.config.name] = record
        }
        return records
    }

    /// The cluster's record of stream `name`, in one lookup.
    static func record(_ manager: ResourceManager, name: String) -> StreamRecord? {
        guard let (resource, owner) = manager.desiredResource(ResourceID(JetStream.streamResourcePrefix + name)) else {
            return nil
        }
        return Self.record(resource, owner: owner)
    }

    private static func record(_ resource: Resource, owner: NodeID?) -> StreamRecord? {
        guard let (config, _) = try? Self.stream(of: resource) else { return nil }
        return StreamRecord(config: config, node: resource.pinnedNode, owner: owner?.name)
    }

    static func stream(of resource: Resource) throws -> (StreamConfig, String) {
        guard let config = resource.attributes["config"], case .object = config,
            let created = resource.attributes["created"]?.stringValue
        else {
            throw StorkError(.invalidInput, "\(resource.id): a placed stream needs 'config' (an object) and 'created'")
        }
        let decoded: StreamConfig
        do {
            decoded = try JSONDecoder().decode(StreamConfig.self, from: Data(try JSONEncoder().encode(config)))
        } catch {
            throw StorkError(.invalidInput, "\(resource.id): 'config' is not a stream configuration: \(error)")
        }
        guard resource.id.rawValue == JetStream.streamResourcePrefix + decoded.name else {
            throw StorkError(.invalidInput, "\(resource.id): 'config.name' is \(decoded.name)")
        }
        return (decoded, created)
    }
}

extension JetStreamPlacement {
    /// Every stream is a resource of `manager`: streams on PostgreSQL (the store every node reaches, when `catalog`
    /// is given) are placed, and listed in `catalog`; the others are kept on the node that made them, their resource
    /// pinned to it.
    static func cluster(
        configuration: ServerConfiguration,
        manager: ResourceManager,
        catalog: PlacedStreamCatalog?
    ) -> JetStreamPlacement {
        let node = configuration.node.name
        return JetStreamPlacement(
            node: node,
            isPlaced: { config in catalog != nil && configuration.streamStoreType(config) == "postgres" },
            place: { config, created in
                guard let catalog else { throw StorkError(.unavailable, "streams are placed only on PostgreSQL") }
                let resource = try StreamConnector.resource(config, created: created)
                // Listed first: a stream placed and not listed would be lost when the whole cluster restarts.
                try await catalog.save(resource)
                let outcome = await manager.allocate(resource)
                guard case .handled = outcome else {
                    throw StorkError(.unavailable, "placing stream \(config.name): \(outcome)")
                }
            },
            unplace: { name in
                try await catalog?.remove(name)
                let outcome = await manager.deallocate(ResourceID(JetStream.streamResourcePrefix + name))
                guard case .terminated = outcome else {
                    throw StorkError(.unavailable, "removing the placement of stream \(name): \(outcome)")
                }
            },
            record: { config, created in
                let outcome = await manager.allocate(try StreamConnector.resource(config, created: created, pinnedTo: node))
                guard case .handled = outcome else {
                    throw StorkError(.unavailable, "recording stream \(config.name) in the cluster: \(outcome)")
                }
            },
            forget: { name in
                let outcome = await manager.deallocate(ResourceID(JetStream.streamResourcePrefix + name))
                guard case .terminated = outcome else {
                    throw StorkError(.unavailable, "removing the record of stream \(name): \(outcome)")
                }
            },
            records: { StreamConnector.records(manager) },
            recordOf: { name in StreamConnector.record(manager, name: name) }
        )
    }
}

// MARK: - Streams kept on their node

/// Keeps the cluster's records of the streams this node keeps (file, sqlite, memory) in step with them: records a
/// stream whose record is missing or differs (after a start, a failed record at creation, a whole-cluster restart),
/// and removes the record of a stream this node has nothing of (deleted, or its data directory was emptied). A stream
/// that is in the data directory but did not open keeps its record: it is offline, not gone. Records and removals go
/// through here one at a time, so a stream deleted while it is being recorded loses its record on the next pass.
struct KeptStreamRecorder: Service {
    let manager: ResourceManager
    let jetstream: JetStream
    let node: String
    let logger: Logger
    /// How often every record is checked again (changes made here are recorded at once).
    var interval: Duration = .seconds(10)

    func run() async throws {
        await cancelWhenGracefulShutdown {
            guard (try? await self.jetstream.waitUntilReady()) != nil else { return }
            var conflicts: Set<String> = []
            var last: ContinuousClock.Instant?
            while !Task.isCancelled {
                let due = last.map { ContinuousClock.now - $0 >= self.interval } ?? true
                if self.manager.isReady, self.jetstream.takeKeptChange() || due {
                    await self.reconcile(conflicts: &conflicts)
                    last = ContinuousClock.now
                }
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
    }

    func reconcile(conflicts: inout Set<String>) async {
        var recorded: [String: Resource] = [:]
        for (resource, _) in self.manager.desiredResources(withPrefix: JetStream.streamResourcePrefix) {
            recorded[String(resource.id.rawValue.dropFirst(JetStream.streamResourcePrefix.count))] = resource
        }
        for (config, created) in self.jetstream.keptStreams() {
            if let resource = recorded[config.name] {
                if resource.pinnedNode != self.node {
                    // Made on two nodes while they could not see each other (or before streams were recorded): both
                    // serve it, and a request goes to whichever answers first. The cluster keeps the other record;
                    // delete one of the two.
                    if conflicts.insert(config.name).inserted {
                        self.logger.error(
                            "a stream of this name is recorded on another node too: delete one of them",
                            metadata: ["stream": "\(config.name)", "stork.recorded": "\(resource.pinnedNode ?? "placed")"]
                        )
                    }
                    continue
                }
                if let (recordedConfig, recordedCreated) = try? StreamConnector.stream(of: resource),
                    recordedConfig == config, recordedCreated == created
                {
                    continue
                }
            }
            // Deleted since the list was taken: its record is not made again.
            guard self.jetstream.isKept(config.name) else { continue }
            await self.jetstream.recordKept(config, created: created)
        }
        for (name, resource) in recorded
        where resource.pinnedNode == self.node && !self.jetstream.isKept(name) && !self.jetstream.hasCatalogEntry(name) {
            // Recorded here, and this node has nothing of it (deleted, or its data directory was emptied): it is gone.
            let outcome = await self.manager.deallocate(resource.id)
            self.logger.info("stream record removed", metadata: ["stream": "\(name)", "stork.outcome": "\(outcome)"])
        }
    }
}

// MARK: - The catalog of placed streams

/// The placed streams of the cluster, kept in PostgreSQL beside their messages (as the metadata of a pseudo-stream
/// named `stork.catalog`, which no stream can be named: stream names have no dots). The resources' desired set lives
/// in the nodes' memory; this list outlives a restart of the whole cluster, and every node places its streams again
/// when it starts (``PlacedStreamRestorer``).
actor PlacedStreamCatalog {
    static let streamName = "stork.catalog"
    private let store: PostgresMessageStore
    private var isOpen = false

    init(url: String, cluster: String, logger: Logger) throws {
        self.store = try PostgresMessageStore(url: url, stream: Self.streamName, cluster: cluster, logger: logger)
    }

    /// Every placed stream's resource.
    func resources() async throws -> [Resource] {
        let recovery = try await self.store.open()
        self.isOpen = true
        return try recovery.metadata.keys.sorted().map { name in
            let document = try JSONValue.parse(recovery.metadata[name]!)
            guard case .object(let attributes) = document else {
                throw StorkError(.invalidInput, "the catalog entry of stream \(name) is not an object")
            }
            return Resource(id: ResourceID(JetStream.streamResourcePrefix + name), attributes: attributes)
        }
    }

    func save(_ resource: Resource) async throws {
        try await self.open()
        let name = String(resource.id.rawValue.dropFirst(JetStream.streamResourcePrefix.count))
        try await self.store.saveMetadata(key: name, value: Array(try JSONEncoder().encode(JSONValue.object(resource.attributes))))
    }

    func remove(_ name: String) async throws {
        try await self.open()
        try await self.store.saveMetadata(key: name, value: nil)
    }

    func close() async {
        try? await self.store.close()
    }

    private func open() async throws {
        guard !self.isOpen else { return }
        _ = try await self.store.open()
        self.isOpen = true
    }
}

/// Places the streams of the catalog again once the node is part of the cluster (allocating a stream that is already
/// placed changes nothing), then waits for the node to stop.
struct PlacedStreamRestorer: Service {
    let catalog: PlacedStreamCatalog
    let manager: ResourceManager
    let jetstream: JetStream
    let logger: Logger
    /// Fires once every stream of the catalog is placed again (or the node stops trying).
    let restored = OneShotSignal()

    /// Waits until the streams are placed again, at most `limit` (a store that cannot be reached must not keep the
    /// NATS endpoint closed).
    func waitUntilRestored(limit: Duration = .seconds(30)) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.restored.wait() }
            group.addTask { try? await Task.sleep(for: limit) }
            await group.next()
            group.cancelAll()
        }
    }

    func run() async throws {
        await cancelWhenGracefulShutdown {
            var resources: [Resource]?
            while !Task.isCancelled {
                if self.manager.status().isReady {
                    do {
                        resources = try await self.catalog.resources()
                        break
                    } catch {
                        self.logger.warning("the catalog of placed streams cannot be read yet", metadata: ["stork.error": "\(error)"])
                    }
                }
                try? await Task.sleep(for: .milliseconds(200))
            }
            var pending = resources ?? []
            while !pending.isEmpty, !Task.isCancelled {
                var failed: [Resource] = []
                for resource in pending {
                    if case .handled = await self.manager.allocate(resource) { continue }
                    failed.append(resource)
                }
                pending = failed
                if !pending.isEmpty { try? await Task.sleep(for: .seconds(1)) }
            }
            // Handled means that the node that got a stream started serving it: wait until it does (bounded: a
            // stream whose store fails goes on being retried by its node).
            let names = (resources ?? []).map { String($0.id.rawValue.dropFirst(JetStream.streamResourcePrefix.count)) }
            let deadline = ContinuousClock.now + .seconds(10)
            while !Task.isCancelled, ContinuousClock.now < deadline, !names.allSatisfy(self.jetstream.isServed) {
                try? await Task.sleep(for: .milliseconds(50))
            }
            if let resources, !resources.isEmpty {
                self.logger.info("placed streams restored", metadata: ["stork.streams": "\(resources.count)"])
            }
            self.restored.fire()
        }
        self.restored.fire()
        try? await gracefulShutdown()
        await self.catalog.close()
    }
}
