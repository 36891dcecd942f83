import Foundation
import Logging
import StorkCore
import StorkGateway
import StorkNATS
import StorkRealtime
import Yams

// MARK: - The gateway from configuration

extension ServerConfiguration {
    /// The authentication chain of `gateway.auth`, in order.
    func makeAuthenticationChain() throws -> AuthenticationChain {
        var authenticators: [any Authenticator] = []
        for (index, entry) in self.gateway.auth.enumerated() {
            guard case .object(let fields) = entry, case .string(let type)? = fields["type"] else {
                throw StorkError(.invalidInput, "gateway.auth[\(index)]: 'type' is required")
            }
            switch type {
            case "open", "none":
                authenticators.append(OpenAuthenticator())
            case "users", "file":
                guard case .string(let file)? = fields["file"] else {
                    throw StorkError(.invalidInput, "gateway.auth[\(index)]: 'users' needs 'file'")
                }
                do {
                    authenticators.append(try UsersFileAuthenticator(document: try DocumentFile.load(file)))
                } catch let error as StorkError {
                    throw StorkError(.invalidInput, "gateway.auth[\(index)]: \(error.message)")
                }
            default:
                throw StorkError(.invalidInput, "gateway.auth[\(index)]: unknown type '\(type)'; expected open or users")
            }
        }
        return AuthenticationChain(authenticators)
    }

    /// The permission rules of `gateway.permissions` (none: everything is denied).
    func loadPermissionRules() throws -> PermissionRules {
        if let file = self.gateway.permissionsFile {
            return try PermissionRules(document: try DocumentFile.load(file))
        }
        if let rules = self.gateway.permissionRules { return try PermissionRules(document: rules) }
        return PermissionRules([])
    }
}

/// A configuration document read from a YAML or JSON file, as JSON.
enum DocumentFile {
    static func load(_ path: String) throws -> JSONValue {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw StorkError(.invalidInput, "cannot read \(path)")
        }
        guard data.count <= 16 << 20 else { throw StorkError(.invalidInput, "\(path): larger than 16 MiB") }
        if let json = try? JSONValue.parse(data) { return json }
        guard let text = String(data: data, encoding: .utf8) else {
            throw StorkError(.invalidInput, "\(path): neither JSON nor UTF-8 YAML")
        }
        do {
            guard let yaml = try Yams.load(yaml: text) else { return .object([:]) }
            return try ResourceListParser.json(from: yaml, origin: path)
        } catch let error as StorkError {
            throw error
        } catch {
            throw StorkError(.invalidInput, "\(path): not valid YAML or JSON: \(error)")
        }
    }
}
