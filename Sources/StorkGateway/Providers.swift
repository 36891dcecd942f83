import Foundation
import Logging
import NIOCore
import StorkConnectors
import StorkCore
import StorkBus
import StorkResources
import StorkStreaming

// MARK: - Listening providers
//
// A provider produces the messages of a subject only while someone listens. When the first client anywhere in the
// cluster subscribes to a subject a provider's pattern matches, the gateway of that client's node allocates the
// resource `$gw.provider.<subject>`; placement puts it on exactly one node, where `ProviderConnector` runs the
// provider. The running provider watches the subject's interest in the whole cluster (this node's clients and,
// through the relay, every other node's); when nobody has listened for the grace period, it deallocates itself.
// Gateways with listeners re-assert the allocation every `refresh`, so a subscriber that arrived just as the provider
// was being removed brings it back.

/// What a provider produces for one subject, in Swift. `run` publishes through `publish` until the task is
/// cancelled (the provider is stopped then).
public protocol GatewayProvider: Sendable {
    func run(subject: String, publish: @escaping @Sendable (JSONValue) -> Void, logger: Logger) async throws
}

/// One configured provider: the subjects it serves and how it produces them.
public struct GatewayProviderRegistration: Sendable {
    public enum Kind: Sendable {
        /// A NATS client subscribed to `listen`: it gets `{"event":"start","subject":…}` as a request (it replies to
        /// acknowledge; the start is repeated until it does) and `{"event":"stop","subject":…}` when nobody listens
        /// any more, and publishes the subject's messages on its own.
        case nats(listen: String)
        case swift(any GatewayProvider)
    }

    /// A name for logs and the resource's attributes.
    public var name: String
    /// A subject pattern (`*`, `>`): subscriptions to a subject it matches start the provider.
    public var pattern: String
    public var kind: Kind
    /// How long the subject may go without listeners before the provider stops.
    public var grace: Duration

    public init(name: String, pattern: String, kind: Kind, grace: Duration = .seconds(5)) {
        self.name = name
        self.pattern = pattern
        self.kind = kind
        self.grace = grace
    }
}

/// How the gateway starts and stops placed work (the resource manager).
public protocol GatewayResources: Sendable {
    func allocate(_ resource: Resource) async -> RequestOutcome
    func deallocate(_ id: ResourceID) async -> RequestOutcome
}

extension ResourceManager: GatewayResources {}

extension Gateway {
    static let providerKind = "gateway.provider"
    static let providerPrefix = "$gw.provider."

    /// The provider serving `subject` (a literal subject: wildcard subscriptions start no provider).
    func provider(for subject: String) -> GatewayProviderRegistration? {
        guard !Subject.hasWildcard(subject) else { return nil }
        return self.providers.first { Subject.matches(pattern: $0.pattern, subject: subject) }
    }

    static func providerResource(_ registration: GatewayProviderRegistration, subject: String) -> Resource {
        Resource(
            id: ResourceID(Self.providerPrefix + subject),
            attributes: [
                "kind": .string(Self.providerKind), "provider": .string(registration.name), "subject": .string(subject),
            ]
        )
    }

    /// Whether a client anywhere in the cluster listens on `subject` (this node's hub, or another node's through the
    /// relay).
    func hasListeners(_ subject: String) -> Bool {
        let local = self.hub.withLock { hub in
            hub.keys.contains { $0 == subject || Subject.matches(pattern: $0, subject: subject) }
        }
        return local || (self.interest?.remoteInterest(in: subject) ?? false)
    }

    /// Allocates the provider resources for this node's listened subjects: those new since the last round at once,
    /// the others every `providerRefresh`.
    func assertProviders(now: StorkInstant) async {
        guard let resources = self.resources, !self.providers.isEmpty else { return }
        let subjects = self.hub.withLock { Array($0.keys) }
        var due: [Resource] = []
        self.providerAssertions.withLock { assertions in
            var current: [String: StorkInstant] = [:]
            for subject in subjects {
                guard let registration = self.provider(for: subject) else { continue }
                if let last = assertions[subject], now - last < self.configuration.providerRefresh {
                    current[subject] = last
                    continue
                }
                current[subject] = now
                due.append(Self.providerResource(registration, subject: subject))
            }
            assertions = current
        }
        for resource in due {
            let outcome = await resources.allocate(resource)
            if !outcome.succeeded {
                self.logger.debug("provider allocation", metadata: ["stork.resource": "\(resource.id)", "stork.outcome": "\(outcome)"])
                _ = self.providerAssertions.withLock { $0.removeValue(forKey: resource.attributes["subject"]?.stringValue ?? "") }
            }
        }
    }
}

// MARK: - The connector that runs a provider where it is placed

/// Runs `$gw.provider.<subject>` resources: the provider, and the watch that removes it when nobody listens.
public struct ProviderConnector: Connector {
    public let name = Gateway.providerKind
    let gateway: Gateway

    public init(gateway: Gateway) {
        self.gateway = gateway
    }

    public func validate(_ resource: Resource) throws {
        guard case .string(let subject)? = resource.attributes["subject"], Subject.isValidLiteral(subject),
            case .string(let name)? = resource.attributes["provider"],
            self.gateway.providers.contains(where: { $0.name == name })
        else {
            throw StorkError(.invalidInput, "\(resource.id): not a provider of this gateway (subject and provider required)")
        }
    }

    public func run(_ resource: Resource, context: ConnectorContext) async throws {
        guard let subject = resource.attributes["subject"]?.stringValue,
            let registration = self.gateway.providers.first(where: { $0.name == resource.attributes["provider"]?.stringValue })
        else { return }
        let gateway = self.gateway
        context.status.state(.connected)
        context.logger.info("provider started", metadata: ["stork.subject": "\(subject)", "stork.provider": "\(registration.name)"])
        await withTaskGroup(of: Void.self) { group in
            switch registration.kind {
            case .swift(let provider):
                group.addTask {
                    do {
                        try await provider.run(
                            subject: subject,
                            publish: { data in gateway.publish(subject: subject, data: data) },
                            logger: context.logger
                        )
                    } catch {
                        if !context.isStopping { context.logger.warning("provider failed", metadata: ["stork.error": "\(error)"]) }
                    }
                }
            case .nats(let listen):
                group.addTask { await Self.announceStart(subject: subject, listen: listen, gateway: gateway, context: context) }
            }
            // Nobody listening for the grace period: the provider asks to be removed (the gateway's run loop deallocates
            // it; awaiting that here would wait for this very run to end), and the terminate that follows stops it.
            group.addTask {
                var idleSince: StorkInstant?
                while await context.sleep(.seconds(1)) {
                    let now = gateway.clock.now()
                    if gateway.hasListeners(subject) {
                        idleSince = nil
                    } else if let since = idleSince, now - since >= registration.grace {
                        context.logger.info("provider idle, removing it", metadata: ["stork.subject": "\(subject)"])
                        gateway.pendingUnloads.withLock { $0.append(resource.id) }
                        return
                    } else if idleSince == nil {
                        idleSince = now
                    }
                }
            }
            await context.stop.wait()
            group.cancelAll()
        }
        if case .nats(let listen) = registration.kind {
            var body: [UInt8] = []
            JSONValue.object(["event": "stop", "subject": .string(subject)]).appendJSON(to: &body)
            gateway.router.publish(BusMessage(subject: listen, payload: ByteBuffer(bytes: body)))
        }
        context.logger.info("provider stopped", metadata: ["stork.subject": "\(subject)"])
    }

    /// Sends the start request on the listen subject until a provider acknowledges it (or the connector stops).
    static func announceStart(subject: String, listen: String, gateway: Gateway, context: ConnectorContext) async {
        var body: [UInt8] = []
        JSONValue.object(["event": "start", "subject": .string(subject)]).appendJSON(to: &body)
        while !context.isStopping {
            let (replies, number) = gateway.openInbox()
            gateway.router.publish(
                BusMessage(subject: listen, replyTo: "_GW.\(gateway.nodeToken).\(number)", payload: ByteBuffer(bytes: body))
            )
            let reply = await gateway.first(of: replies, within: .seconds(2))
            gateway.closeInbox(number)
            if reply != nil { return }
            guard await context.sleep(.seconds(1)) else { return }
        }
    }
}
