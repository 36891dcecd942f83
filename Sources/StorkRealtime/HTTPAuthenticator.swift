import Foundation
import StorkCore

// MARK: - HTTP webhook
//
// The user's app decides: the credentials and what the gateway knows of the connection are POSTed as JSON to its URL,
// and the answer's status and body say who the user is. The I/O is behind `AuthenticationHTTPTransport` (the gateway
// gives an AsyncHTTPClient one; tests a fake), and retry intervals are waited with an injected `sleep`, so this type
// stays pure of sockets and clocks. Nothing that goes wrong lets a client in: a transport error, a timeout, an
// unexpected status or body is a rejection.

/// An HTTP answer, as the webhook authenticator needs it.
public struct AuthenticationHTTPResponse: Sendable, Hashable {
    public var status: Int
    public var body: [UInt8]

    public init(status: Int, body: [UInt8]) {
        self.status = status
        self.body = body
    }
}

/// POSTs one request; throws on a transport error or when `timeout` passes without an answer.
public protocol AuthenticationHTTPTransport: Sendable {
    func post(
        url: String,
        headers: [String: String],
        body: [UInt8],
        timeout: Duration
    ) async throws
        -> AuthenticationHTTPResponse
}

/// How an `http` authenticator calls the app.
public struct HTTPAuthenticatorConfiguration: Sendable, Hashable {
    /// Where the credentials are POSTed.
    public var url: String
    /// Extra request headers (for example a shared secret the app checks); `Content-Type: application/json` is always
    /// sent.
    public var headers: [String: String]
    /// Statuses that accept the user; the body names them.
    public var permittedStatusCodes: Set<Int>
    /// Statuses worth asking again (the app is restarting, a proxy timed out). A transport error or timeout is retried
    /// the same way.
    public var retryStatusCodes: Set<Int>
    /// How many times a request is repeated after the first attempt.
    public var retryAttempts: Int
    /// The wait before each repetition.
    public var retryInterval: Duration
    /// How long one request may take.
    public var timeout: Duration

    public init(
        url: String,
        headers: [String: String] = [:],
        permittedStatusCodes: Set<Int> = [200],
        retryStatusCodes: Set<Int> = [502, 503, 504],
        retryAttempts: Int = 2,
        retryInterval: Duration = .milliseconds(500),
        timeout: Duration = .seconds(5)
    ) {
        self.url = url
        self.headers = headers
        self.permittedStatusCodes = permittedStatusCodes
        self.retryStatusCodes = retryStatusCodes
        self.retryAttempts = retryAttempts
        self.retryInterval = retryInterval
        self.timeout = timeout
    }
}

/// Asks the user's app (deepstream-style). The request body is `{"user", "password"}` for a password, `{"token"}` for
/// a token, `{}` with no credentials, each with `"connectionData"`: what the gateway knows of the connection. A
/// permitted status accepts: a JSON string body is the user id; a JSON object body is `{id, roles?, data?}`. Any
/// other status rejects with the status. It answers for every kind of credentials, so put it last in the chain.
public struct HTTPAuthenticator: Authenticator {
    public let name = "http"
    public let configuration: HTTPAuthenticatorConfiguration
    private let transport: any AuthenticationHTTPTransport
    private let sleep: @Sendable (Duration) async throws -> Void

    /// - Parameter sleep: waits between attempts (the gateway passes its clock's sleep; tests record the waits).
    public init(
        configuration: HTTPAuthenticatorConfiguration,
        transport: any AuthenticationHTTPTransport,
        sleep: @escaping @Sendable (Duration) async throws -> Void
    ) {
        self.configuration = configuration
        self.transport = transport
        self.sleep = sleep
    }

    public func authenticate(_ credentials: Credentials) async -> AuthenticationOutcome {
        await self.authenticate(credentials, connection: .object([:]))
    }

    public func authenticate(_ credentials: Credentials, connection: JSONValue) async -> AuthenticationOutcome {
        let body = Self.requestBody(credentials, connection: connection)
        var headers = self.configuration.headers
        headers["Content-Type"] = "application/json"
        var attempt = 0
        while true {
            attempt += 1
            let retriesLeft = attempt <= self.configuration.retryAttempts
            let response: AuthenticationHTTPResponse
            do {
                response = try await self.transport.post(
                    url: self.configuration.url,
                    headers: headers,
                    body: body,
                    timeout: self.configuration.timeout
                )
            } catch {
                if retriesLeft, await self.waitBeforeRetry() { continue }
                // The reason may reach the client: it names no address and no internal error.
                return .rejected("auth webhook unreachable (\(attempt) attempt\(attempt == 1 ? "" : "s"))")
            }
            if self.configuration.permittedStatusCodes.contains(response.status) {
                return Self.user(from: response.body)
            }
            if self.configuration.retryStatusCodes.contains(response.status), retriesLeft, await self.waitBeforeRetry()
            {
                continue
            }
            let tries = attempt == 1 ? "" : " after \(attempt) attempts"
            return .rejected("auth webhook answered \(response.status)\(tries)")
        }
    }

    /// Waits the retry interval; false when the wait was cancelled (the connection went away).
    private func waitBeforeRetry() async -> Bool {
        do {
            try await self.sleep(self.configuration.retryInterval)
            return !Task.isCancelled
        } catch {
            return false
        }
    }

    static func requestBody(_ credentials: Credentials, connection: JSONValue) -> [UInt8] {
        var fields: [String: JSONValue] = ["connectionData": connection]
        switch credentials {
        case .password(let user, let password):
            fields["user"] = .string(user)
            fields["password"] = .string(password)
        case .token(let token):
            fields["token"] = .string(token)
        case .none:
            break
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        // Encoding a JSONValue cannot fail except for a non-finite number, which connection data never holds.
        return (try? Array(encoder.encode(JSONValue.object(fields)))) ?? Array("{}".utf8)
    }

    /// The user a permitted answer names; anything unexpected rejects.
    static func user(from body: [UInt8]) -> AuthenticationOutcome {
        guard let value = try? JSONDecoder().decode(JSONValue.self, from: Data(body)) else {
            return .rejected("auth webhook accepted but its body is not JSON")
        }
        switch value {
        case .string(let id) where !id.isEmpty:
            return .accepted(AuthenticatedUser(id: id))
        case .object(let fields):
            guard case .string(let id)? = fields["id"], !id.isEmpty else {
                return .rejected("auth webhook accepted but its body has no 'id'")
            }
            var roles: [String] = []
            switch fields["roles"] {
            case nil, .null?: break
            case .array(let values)? where values.allSatisfy({ $0.stringValue != nil }):
                roles = values.compactMap(\.stringValue)
            default: return .rejected("auth webhook accepted but its 'roles' is not a list of strings")
            }
            let data = fields["data"].flatMap { $0 == .null ? nil : $0 } ?? .object([:])
            return .accepted(AuthenticatedUser(id: id, roles: roles, data: data))
        default:
            return .rejected("auth webhook accepted but its body is neither a user id nor {id, roles, data}")
        }
    }
}
