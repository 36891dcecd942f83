import AsyncHTTPClient
import Foundation
import Logging
import StorkCore
import StorkGateway
import StorkBus
import StorkRealtime
import Yams

// MARK: - The gateway from configuration

extension ServerConfiguration {
    /// The authentication chain of `gateway.auth`, in order, from the built-in authenticators and `registry`.
    func makeAuthenticationChain(
        registry: AuthenticatorRegistry = AuthenticatorRegistry(),
        httpClient: HTTPClient
    ) async throws -> AuthenticationChain {
        let gateway = self.gateway
        let context = AuthenticatorContext(
            readFile: { path in
                let path = gateway.resolve(path)
                guard let data = FileManager.default.contents(atPath: path) else {
                    throw StorkError(.invalidInput, "cannot read \(path)")
                }
                return Array(data)
            },
            parseDocument: { contents, path in try DocumentFile.parse(contents, path: path) },
            httpTransport: HTTPAuthenticationTransport(client: httpClient),
            sleep: { try await Task.sleep(for: $0) },
            now: { Date().timeIntervalSince1970 }
        )
        do {
            return AuthenticationChain(try await registry.makeAuthenticators(self.gateway.auth, context: context))
        } catch let error as StorkError {
            throw StorkError(.invalidInput, "gateway.auth: \(error.message)")
        }
    }

    /// The providers of `gateway.providers`: `nats` ones as configured, others from the Swift providers given.
    func makeProviderRegistrations(swiftProviders: [String: any GatewayProvider]) throws -> [GatewayProviderRegistration] {
        try self.gateway.providers.map { provider in
            let kind: GatewayProviderRegistration.Kind
            if provider.type == "nats" {
                kind = .nats(listen: provider.listen ?? "stork.listen.\(provider.name)")
            } else if let swift = swiftProviders[provider.type] {
                kind = .swift(swift)
            } else {
                let known = (["nats"] + swiftProviders.keys.sorted()).joined(separator: ", ")
                throw StorkError(.invalidInput, "gateway.providers '\(provider.name)': unknown type '\(provider.type)' (known: \(known))")
            }
            return GatewayProviderRegistration(name: provider.name, pattern: provider.pattern, kind: kind, grace: provider.grace)
        }
    }

    /// The permissions of `gateway.permissions`, built through `plugins`: `rules` (a watched file, reloaded when it
    /// changes, or inline rules, or none: everything is refused), `open`, or a registered type. The plugin's service,
    /// when there is one (the file watcher), is to run beside the gateway.
    func makePermissions(plugins: StorkPlugins = StorkPlugins(), context: StorkPluginContext) throws -> PermissionsPlugin {
        try plugins.makePermissions(self.permissionsSelection, context: context)
    }

    /// The permission type and options `gateway.permissions` gives.
    public var permissionsSelection: PluginSelection {
        if let plugin = self.gateway.permissionsPlugin { return plugin }
        if let file = self.gateway.permissionsFile {
            return PluginSelection(type: "rules", options: ["file": .string(self.gateway.resolve(file))])
        }
        if case .object(let rules)? = self.gateway.permissionRules { return PluginSelection(type: "rules", options: rules) }
        return PluginSelection(type: "rules")
    }
}

/// A document read from a YAML or JSON file, as JSON: configuration files, rules, users, resource lists.
enum DocumentFile {
    static let maximumSize = 64 << 20

    static func load(_ path: String) throws -> JSONValue {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw StorkError(.invalidInput, "cannot read \(path)")
        }
        return try Self.parse(Array(data), path: path)
    }

    /// Parses `data` as JSON, else as YAML; an empty YAML document is `empty`.
    static func parse(_ data: [UInt8], path: String, empty: JSONValue = .object([:])) throws -> JSONValue {
        guard data.count <= Self.maximumSize else {
            throw StorkError(.invalidInput, "\(path): larger than \(Self.maximumSize >> 20) MiB")
        }
        if let json = try? JSONValue.parse(data) { return json }
        guard let text = String(validating: data, as: UTF8.self) else {
            throw StorkError(.invalidInput, "\(path): neither JSON nor UTF-8 YAML")
        }
        do {
            guard let yaml = try Yams.load(yaml: text) else { return empty }
            return try ResourceListParser.json(from: yaml, origin: path)
        } catch let error as StorkError {
            throw error
        } catch {
            throw StorkError(.invalidInput, "\(path): not valid JSON or YAML: \(error)")
        }
    }
}
