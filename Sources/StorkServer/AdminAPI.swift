import Foundation
import Hummingbird
import NIOCore
import Prometheus
import StorkConnectors
import StorkCore
import StorkMembership
import StorkBus
import StorkNATS
import StorkResources

// MARK: - AdminAPI
//
// The node's admin HTTP API, documented in Docs/admin-api.md:
//
//   GET    /v1/cluster                    this node, the members with status and incarnation, the view checksum
//   GET    /v1/resources[?scope=cluster]  this node's resources with state, since and connector status; or every
//                                         desired resource with its owner in this node's view
//   POST   /v1/resources                  allocate: body is one resource object with a string "id"
//   DELETE /v1/resources/{id}             deallocate
//   POST   /v1/drain[?local_streams=refuse] leave gracefully (hand every resource off), then exit
//   GET    /v1/events                     server-sent events of lifecycle changes
//   GET    /healthz  /readyz  /metrics
//   GET    /varz  /connz  /subsz           the NATS endpoint's monitoring, in nats-server's JSON shapes
//   GET    /v1/moves                      the last owner changes in this node's view (Dashboard.swift)
//   GET    /v1/stats                      cumulative counters by source, for rates (Dashboard.swift)
//   GET    /dashboard                     the web page that shows all of the above (DashboardPage.swift)

/// Extra numbers the admin API reports that the resource manager does not know (for example the transport's).
public protocol AdminMetricsSource: Sendable {
    /// Prometheus samples: (name, labels, value, type "counter" or "gauge", help).
    func samples() -> [MetricSample]
}

public struct MetricSample: Sendable, Hashable {
    public var name: String
    public var labels: [String: String]
    public var value: Double
    public var type: String
    public var help: String

    public init(name: String, labels: [String: String] = [:], value: Double, type: String = "counter", help: String) {
        self.name = name
        self.labels = labels
        self.value = value
        self.type = type
        self.help = help
    }
}

public enum AdminAPI {
    /// Largest request body accepted (an allocate of one resource).
    public static let maximumBodySize = 1 << 20

    /// - Parameters:
    ///   - connectors: the connector handler's status board: each local resource then has a `connector` object.
    ///   - metricsRegistry: a swift-prometheus registry (the node's swift-metrics, connector metrics among them),
    ///     appended to `/metrics`.
    ///   - extraStats: more sources for `/v1/stats`, after `nats` and `resources`.
    ///   - moves: the recorder behind `/v1/moves`; run it as a service so that moves carry the time of the view
    ///     change. Nil: one of the router's own, updated at every read of the cluster, resources and moves.
    ///   - clusterName: shown by `/v1/cluster` (as `cluster`) and the dashboard when given.
    public static func router(
        manager: ResourceManager,
        nats: NATSServer? = nil,
        extraMetrics: [any AdminMetricsSource] = [],
        connectors: ConnectorStatusBoard? = nil,
        metricsRegistry: PrometheusCollectorRegistry? = nil,
        extraStats: [any AdminStatsSource] = [],
        moves: MoveRecorder? = nil,
        clusterName: String? = nil,
        drain: (@Sendable () -> Void)? = nil,
        keptStreams: (@Sendable () -> [String])? = nil
    ) -> Router<BasicRequestContext> {
        let router = Router()
        let moves = moves ?? MoveRecorder(manager: manager)
        let statsSources: [any AdminStatsSource] =
            (nats.map { [NATSStatsSource(nats: $0)] } ?? []) + [ResourceStatsSource(manager: manager)] + extraStats

        // JSON as nats-server answers it, so that NATS health checks work against Stork too.
        router.get("/healthz") { _, _ in
            var headers = HTTPFields()
            headers[.contentType] = "application/json"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: "{\"status\":\"ok\"}\n")))
        }

        if let nats {
            router.get("/varz") { _, _ in encoded(nats.varz()) }
            router.get("/connz") { request, _ in
                let query = request.uri.queryParameters
                let offset = query["offset"].flatMap { Int($0) } ?? 0
                let limit = query["limit"].flatMap { Int($0) } ?? 1024
                let subscriptions = query["subs"].map { $0 == "1" || $0 == "true" } ?? false
                return encoded(nats.connz(offset: offset, limit: limit, subscriptions: subscriptions))
            }
            router.get("/subsz") { _, _ in encoded(nats.subsz()) }
        }

        router.get("/readyz") { _, _ in
            let status = manager.status()
            let ready = status.isReady && !status.isLeaving
            return Response(
                status: ready ? .ok : .serviceUnavailable,
                body: .init(byteBuffer: ByteBuffer(string: ready ? "ready\n" : (status.isLeaving ? "leaving\n" : "joining\n")))
            )
        }

        router.get("/v1/cluster") { _, _ in
            moves.observe()
            var document = clusterDocument(manager.status())
            if let clusterName, case .object(var fields) = document {
                fields["cluster"] = .string(clusterName)
                document = .object(fields)
            }
            return json(document)
        }

        router.get("/v1/moves") { _, _ in
            moves.observe()
            return json(movesDocument(moves.moves(), node: manager.identity.name))
        }

        router.get("/v1/stats") { _, _ in
            json(statsDocument(statsSources, node: manager.identity.name, now: Date()))
        }

        router.get("/dashboard") { _, _ in
            var headers = HTTPFields()
            headers[.contentType] = "text/html; charset=utf-8"
            headers[.cacheControl] = "no-cache"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: DashboardPage.html)))
        }

        router.get("/v1/resources") { request, _ in
            moves.observe()
            if request.uri.queryParameters["scope"].map(String.init) == "cluster" {
                let local = Dictionary(uniqueKeysWithValues: manager.resourceStates().map { ($0.id, $0) })
                let items: [JSONValue] = manager.clusterAssignment().map { resource, owner in
                    var item: [String: JSONValue] = [
                        "id": .string(resource.id.rawValue),
                        "owner": owner.map { .string($0.name) } ?? .null,
                        "resource": .object(resource.attributes),
                    ]
                    if let state = local[resource.id] { item["state"] = .string(state.state) }
                    return .object(item)
                }
                return json(.object(["scope": "cluster", "resources": .array(items)]))
            }
            let node = manager.identity.name
            let items: [JSONValue] = manager.resourceStates().map { state in
                var item: [String: JSONValue] = [
                    "id": .string(state.id.rawValue),
                    "node": .string(node),
                    "state": .string(state.state),
                    "since": .string(iso8601(state.since)),
                    "attempt": .number(Double(state.attempt)),
                    "fencingToken": state.fencingToken.map { .number(Double($0)) } ?? .null,
                    "resource": state.resource.map { .object($0.attributes) } ?? .null,
                ]
                if let connectors {
                    item["connector"] = connectors.status(of: state.id).map(connectorDocument) ?? .null
                }
                return .object(item)
            }
            return json(.object(["scope": "node", "node": .string(node), "resources": .array(items)]))
        }

        router.post("/v1/resources") { request, _ in
            let body = try await request.body.collect(upTo: maximumBodySize)
            let resource: Resource
            do {
                resource = try JSONDecoder().decode(Resource.self, from: Data(buffer: body))
            } catch {
                return problem(.badRequest, "the body must be one JSON object with a non-empty string \"id\": \(error)")
            }
            do {
                try resource.validatePin()
            } catch let error as StorkError {
                return problem(.badRequest, error.message)
            }
            return outcomeResponse(await manager.allocate(resource), id: resource.id)
        }

        router.delete("/v1/resources/:id") { _, context in
            guard let raw = context.parameters.get("id"), !raw.isEmpty else {
                return problem(.badRequest, "missing resource id")
            }
            let id = ResourceID(raw.removingPercentEncoding ?? raw)
            return outcomeResponse(await manager.deallocate(id), id: id)
        }

        router.post("/v1/drain") { request, _ in
            // Streams kept on this node (file, sqlite, memory) cannot move: they go offline with it, unless the
            // caller asked to refuse the drain then.
            let kept = keptStreams?() ?? []
            switch request.uri.queryParameters["local_streams"].map(String.init) {
            case nil, "offline"?:
                break
            case "refuse"?:
                if !kept.isEmpty {
                    return problem(
                        .conflict,
                        "not draining: streams kept on this node would go offline: \(kept.joined(separator: ", "))"
                    )
                }
            case let other?:
                return problem(.badRequest, "local_streams must be offline or refuse, not \(other)")
            }
            if let drain { drain() } else { manager.drain() }
            return json(.object(["draining": true, "offline_streams": .array(kept.map(JSONValue.string))]), status: .accepted)
        }

        router.get("/v1/events") { _, _ in
            let events = manager.events()
            var headers = HTTPFields()
            headers[.contentType] = "text/event-stream"
            headers[.cacheControl] = "no-cache"
            return Response(
                status: .ok,
                headers: headers,
                body: ResponseBody { writer in
                    try await writer.write(ByteBuffer(string: ": stork events\n\n"))
                    for await event in events {
                        let line = "data: " + eventDocument(event).description + "\n\n"
                        try await writer.write(ByteBuffer(string: line))
                    }
                    try await writer.finish(nil)
                }
            )
        }

        router.get("/metrics") { _, _ in
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4"
            var text = prometheusText(manager: manager, extra: extraMetrics.flatMap { $0.samples() })
            if let metricsRegistry {
                var bytes: [UInt8] = []
                metricsRegistry.emit(into: &bytes)
                text += String(decoding: bytes, as: UTF8.self)
            }
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
        }

        return router
    }

    // MARK: Documents

    static func clusterDocument(_ status: ResourceManagerStatus) -> JSONValue {
        let members: [JSONValue] = status.members.map { member in
            .object([
                "name": .string(member.node.name),
                "address": .string(member.node.address),
                "uid": .string(String(member.node.uid, radix: 16)),
                "status": .string(member.status.description),
                "incarnation": .number(Double(member.incarnation)),
            ])
        }
        return .object([
            "self": .object([
                "name": .string(status.identity.name),
                "address": .string(status.identity.address),
                "uid": .string(String(status.identity.uid, radix: 16)),
            ]),
            "joined": .bool(status.isJoined),
            "ready": .bool(status.isReady),
            "leaving": .bool(status.isLeaving),
            "members": .array(members),
            "view": .array(status.view.map { .string($0.name) }),
            "checksum": .string(String(status.viewChecksum)),
            "running": .number(Double(status.running.count)),
            "desired": .number(Double(status.desiredCount)),
        ])
    }

    static func connectorDocument(_ status: ConnectorStatus) -> JSONValue {
        .object([
            "kind": .string(status.kind),
            "state": .string(status.state.rawValue),
            "since": .string(iso8601(status.since)),
            "messagesIn": .number(Double(status.messagesIn)),
            "messagesOut": .number(Double(status.messagesOut)),
            "failures": .number(Double(status.failures)),
            "retries": .number(Double(status.retries)),
            "lastError": status.lastError.map { .string($0) } ?? .null,
        ])
    }

    static func eventDocument(_ event: NodeEvent) -> JSONValue {
        switch event {
        case .resource(let event):
            return .object([
                "type": "resource", "id": .string(event.id.rawValue), "event": .string("\(event.kind)"),
            ])
        case .member(let change):
            return .object([
                "type": "member", "node": .string(change.node.name), "address": .string(change.node.address),
                "previous": change.previous.map { .string($0.description) } ?? .null,
                "current": change.current.map { .string($0.description) } ?? .null,
            ])
        case .joined(let standalone):
            return .object(["type": "joined", "standalone": .bool(standalone)])
        case .refuted(let incarnation):
            return .object(["type": "refuted", "incarnation": .number(Double(incarnation))])
        case .viewApplied(let members, let checksum):
            return .object([
                "type": "view", "members": .array(members.map { .string($0.name) }),
                "checksum": .string(String(checksum)),
            ])
        case .left:
            return .object(["type": "left"])
        }
    }

    static func outcomeResponse(_ outcome: RequestOutcome, id: ResourceID) -> Response {
        switch outcome {
        case .handled(let node):
            return json(.object(["id": .string(id.rawValue), "outcome": "handled", "node": .string(node.name)]))
        case .handleFailed(let node, let attempt):
            return json(
                .object([
                    "id": .string(id.rawValue), "outcome": "handle-failed", "node": .string(node.name),
                    "attempt": .number(Double(attempt)), "retrying": true,
                ]),
                status: .accepted
            )
        case .terminated(let node):
            return json(.object(["id": .string(id.rawValue), "outcome": "terminated", "node": .string(node.name)]))
        case .timedOut:
            return problem(.gatewayTimeout, "no owner answered for \(id) before the deadline")
        case .notReplicated(let holders, let required):
            return problem(
                .gatewayTimeout,
                "the change to \(id) reached \(holders) of the \(required) members that must hold it before the deadline; "
                    + "it is not acknowledged (it may still spread, or be lost if those members crash)"
            )
        case .shutdown:
            return problem(.serviceUnavailable, "this node is leaving the cluster")
        }
    }

    static func prometheusText(manager: ResourceManager, extra: [MetricSample]) -> String {
        let status = manager.status()
        let statistics = manager.statistics()
        var samples: [MetricSample] = []
        var byStatus: [String: Int] = ["alive": 0, "suspect": 0, "dead": 0, "left": 0]
        for member in status.members { byStatus[member.status.description, default: 0] += 1 }
        for (name, count) in byStatus.sorted(by: { $0.key < $1.key }) {
            samples.append(
                MetricSample(
                    name: "stork_members", labels: ["status": name], value: Double(count), type: "gauge",
                    help: "Members known to this node, by status."
                )
            )
        }
        var byState: [String: Int] = ["claiming": 0, "handling": 0, "running": 0, "failed": 0, "terminating": 0]
        for state in manager.resourceStates() { byState[state.state, default: 0] += 1 }
        for (name, count) in byState.sorted(by: { $0.key < $1.key }) {
            samples.append(
                MetricSample(
                    name: "stork_resources", labels: ["state": name], value: Double(count), type: "gauge",
                    help: "Resources on this node, by state."
                )
            )
        }
        samples += [
            MetricSample(name: "stork_desired_resources", value: Double(status.desiredCount), type: "gauge",
                help: "Resources in the cluster's desired set."),
            MetricSample(name: "stork_handles_total", value: Double(statistics.handles), help: "Handle calls."),
            MetricSample(name: "stork_handle_failures_total", value: Double(statistics.handleFailures),
                help: "Failed handle calls (each is retried with backoff)."),
            MetricSample(name: "stork_terminations_total", value: Double(statistics.terminations),
                help: "Terminate calls."),
            MetricSample(name: "stork_termination_failures_total", value: Double(statistics.terminationFailures),
                help: "Failed terminate calls."),
            MetricSample(name: "stork_handoff_timeouts_total", value: Double(statistics.handoffTimeouts),
                help: "Handoffs that went ahead without every member's confirmation."),
            MetricSample(name: "stork_requests_total", value: Double(statistics.requests),
                help: "allocate and deallocate requests made on this node (forwarded to owners)."),
            MetricSample(name: "stork_leases_acquired_total", value: Double(statistics.leasesAcquired),
                help: "Lease mode: leases granted to this node."),
            MetricSample(name: "stork_leases_lost_total", value: Double(statistics.leasesLost),
                help: "Lease mode: leases this node stopped using (not renewed in time, or taken over)."),
            MetricSample(name: "stork_lease_store_operations_total", value: Double(statistics.leaseStoreOperations),
                help: "Lease mode: ownership store operations (one per batch)."),
            MetricSample(name: "stork_lease_store_failures_total", value: Double(statistics.leaseStoreFailures),
                help: "Lease mode: ownership store operations that failed or timed out."),
        ]
        samples += extra
        var text = ""
        var described = Set<String>()
        for sample in samples {
            if described.insert(sample.name).inserted {
                text += "# HELP \(sample.name) \(sample.help)\n# TYPE \(sample.name) \(sample.type)\n"
            }
            let labels = sample.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\"\(escape($0.value))\"" }
            text += sample.name + (labels.isEmpty ? "" : "{\(labels.joined(separator: ","))}") + " "
                + formatNumber(sample.value) + "\n"
        }
        return text
    }
}

// MARK: - Helpers

private func json(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
    var headers = HTTPFields()
    headers[.contentType] = "application/json"
    let data = (try? JSONEncoder.sorted.encode(value)) ?? Data("null".utf8)
    return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data + [0x0A])))
}

private func encoded(_ value: some Encodable) -> Response {
    var headers = HTTPFields()
    headers[.contentType] = "application/json"
    let data = (try? JSONEncoder.sorted.encode(value)) ?? Data("null".utf8)
    return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data + [0x0A])))
}

private func problem(_ status: HTTPResponse.Status, _ message: String) -> Response {
    json(.object(["error": .string(message), "status": .number(Double(status.code))]), status: status)
}

func iso8601(_ date: Date) -> String {
    date.formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted))
}

private func escape(_ value: String) -> String {
    value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
        .replacingOccurrences(of: "\n", with: "\\n")
}

private func formatNumber(_ value: Double) -> String {
    if value.rounded() == value, abs(value) < 1e15 { return String(Int64(value)) }
    return String(value)
}

extension JSONEncoder {
    static var sorted: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }
}
