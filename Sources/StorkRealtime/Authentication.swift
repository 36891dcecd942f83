import Crypto
import Foundation
import StorkCore

// MARK: - Authentication
//
// A client presents credentials once per connection; a configured list of authenticators is asked in order and the
// first that answers (accepts or rejects) decides — an authenticator that does not recognise the credentials says
// `notMine` and the next one is asked. The result is an `AuthenticatedUser`: an id, roles and server-side data that
// permission conditions read as `user.*`.

/// What a client presents.
public enum Credentials: Sendable, Hashable {
    case password(user: String, password: String)
    /// A bearer token: an API token from a users file, or a JWT.
    case token(String)
    case none
}

/// An authenticator's answer.
public enum AuthenticationOutcome: Sendable, Hashable {
    case accepted(AuthenticatedUser)
    /// The credentials are this authenticator's and they are wrong: the chain stops here.
    case rejected(String)
    /// Not this authenticator's kind of credentials (or user): ask the next one.
    case notMine
}

/// One way of checking credentials.
public protocol Authenticator: Sendable {
    /// The name it is configured by (`open`, `users`, `jwt`, `http`).
    var name: String { get }
    func authenticate(_ credentials: Credentials) async -> AuthenticationOutcome
    /// With what the gateway knows of the connection (remote address, headers, …) as JSON; the default ignores it.
    func authenticate(_ credentials: Credentials, connection: JSONValue) async -> AuthenticationOutcome
}

extension Authenticator {
    public func authenticate(_ credentials: Credentials, connection: JSONValue) async -> AuthenticationOutcome {
        await self.authenticate(credentials)
    }
}

/// Asks each authenticator in order; the first that accepts or rejects decides. Nobody answering is a rejection.
public struct AuthenticationChain: Sendable {
    public var authenticators: [any Authenticator]

    public init(_ authenticators: [any Authenticator]) {
        self.authenticators = authenticators
    }

    /// - Parameter connection: what the gateway knows of the connection, for authenticators that pass it on (`http`).
    public func authenticate(_ credentials: Credentials, connection: JSONValue = .object([:])) async -> AuthenticationOutcome {
        for authenticator in self.authenticators {
            let outcome = await authenticator.authenticate(credentials, connection: connection)
            if outcome != .notMine { return outcome }
        }
        return .rejected("no authenticator accepted these credentials")
    }
}

// MARK: - Open

/// Accepts everyone (development only: the gateway logs a warning when it is configured). The user id is the name
/// given with a password, else `anonymous`; no roles.
public struct OpenAuthenticator: Authenticator {
    public let name = "open"

    public init() {}

    public func authenticate(_ credentials: Credentials) async -> AuthenticationOutcome {
        if case .password(let user, _) = credentials, !user.isEmpty {
            return .accepted(AuthenticatedUser(id: user))
        }
        return .accepted(AuthenticatedUser(id: "anonymous"))
    }
}

// MARK: - Users file

/// Users and API tokens from a file, with secrets stored only as hashes:
///
/// ```yaml
/// users:
///   - id: alice
///     password: "pbkdf2-sha256$210000$<salt, base64>$<hash, base64>"   # stork hash-password
///     roles: [member]
///     data: {rooms: [r1]}
/// tokens:
///   - sha256: "<hex SHA-256 of the token>"
///     user: alice
/// ```
///
/// A password for a user the file does not list is `notMine` (another authenticator may know them); a wrong password
/// for a listed user, or an unknown token, is rejected.
public struct UsersFileAuthenticator: Authenticator {
    public let name = "users"

    struct Entry: Sendable {
        var user: AuthenticatedUser
        var password: PasswordHash?
    }

    private let users: [String: Entry]
    /// Token hashes (lowercase hex) to user ids.
    private let tokens: [String: String]

    /// Reads the file's document (decoded from YAML or JSON); errors name the entry and the key.
    public init(document: JSONValue) throws {
        guard case .object(let top) = document else { throw StorkError(.invalidInput, "users file: expected an object") }
        var users: [String: Entry] = [:]
        if let list = top["users"] {
            guard case .array(let entries) = list else { throw StorkError(.invalidInput, "users file: 'users' must be a list") }
            for (index, entry) in entries.enumerated() {
                let place = "users file: user \(index + 1)"
                guard case .object(let fields) = entry, case .string(let id)? = fields["id"], !id.isEmpty else {
                    throw StorkError(.invalidInput, "\(place): 'id' is required")
                }
                guard users[id] == nil else { throw StorkError(.invalidInput, "\(place): id '\(id)' twice") }
                var roles: [String] = []
                if let value = fields["roles"] {
                    guard case .array(let items) = value, let names = Optional(items.compactMap(\.stringValue)),
                        names.count == items.count
                    else { throw StorkError(.invalidInput, "\(place) ('\(id)'): 'roles' must be a list of strings") }
                    roles = names
                }
                var password: PasswordHash?
                if let value = fields["password"] {
                    guard case .string(let encoded) = value else {
                        throw StorkError(.invalidInput, "\(place) ('\(id)'): 'password' must be a string")
                    }
                    do {
                        password = try PasswordHash(encoded: encoded)
                    } catch let error as StorkError {
                        throw StorkError(.invalidInput, "\(place) ('\(id)'): \(error.message)")
                    }
                }
                let data = fields["data"] ?? .object([:])
                users[id] = Entry(user: AuthenticatedUser(id: id, roles: roles, data: data), password: password)
            }
        }
        var tokens: [String: String] = [:]
        if let list = top["tokens"] {
            guard case .array(let entries) = list else { throw StorkError(.invalidInput, "users file: 'tokens' must be a list") }
            for (index, entry) in entries.enumerated() {
                let place = "users file: token \(index + 1)"
                guard case .object(let fields) = entry, case .string(let hash)? = fields["sha256"],
                    hash.count == 64, hash.allSatisfy(\.isHexDigit)
                else { throw StorkError(.invalidInput, "\(place): 'sha256' must be 64 hex digits") }
                guard case .string(let user)? = fields["user"], users[user] != nil else {
                    throw StorkError(.invalidInput, "\(place): 'user' must name a listed user")
                }
                tokens[hash.lowercased()] = user
            }
        }
        self.users = users
        self.tokens = tokens
    }

    public func authenticate(_ credentials: Credentials) async -> AuthenticationOutcome {
        switch credentials {
        case .password(let user, let password):
            guard let entry = self.users[user] else { return .notMine }
            guard let hash = entry.password, hash.matches(password) else { return .rejected("wrong password") }
            return .accepted(entry.user)
        case .token(let token):
            // A JWT (three dot-separated parts) is for the JWT authenticator.
            if JWTAuthenticator.looksLikeJWT(token) { return .notMine }
            let digest = SHA256.hash(data: Data(token.utf8)).map { String(format: "%02x", $0) }.joined()
            guard let id = self.tokens[digest], let entry = self.users[id] else { return .rejected("unknown token") }
            return .accepted(entry.user)
        case .none:
            return .notMine
        }
    }
}

// MARK: - Password hashes

/// A salted PBKDF2-HMAC-SHA256 password hash, written `pbkdf2-sha256$<iterations>$<salt>$<hash>` (base64).
public struct PasswordHash: Sendable, Hashable {
    public var iterations: Int
    public var salt: [UInt8]
    public var hash: [UInt8]

    public init(encoded: String) throws {
        let parts = encoded.split(separator: "$", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0] == "pbkdf2-sha256" else {
            throw StorkError(.invalidInput, "password hash must be 'pbkdf2-sha256$<iterations>$<salt>$<hash>'")
        }
        guard let iterations = Int(parts[1]), (1...10_000_000).contains(iterations),
            let salt = Data(base64Encoded: String(parts[2])), salt.count >= 8,
            let hash = Data(base64Encoded: String(parts[3])), hash.count >= 16
        else {
            throw StorkError(.invalidInput, "password hash has a bad iteration count, salt (8+ bytes) or hash (16+ bytes)")
        }
        self.iterations = iterations
        self.salt = Array(salt)
        self.hash = Array(hash)
    }

    /// Hashes `password` with a fresh random salt.
    public init(password: String, iterations: Int = 210_000) {
        var generator = SystemRandomNumberGenerator()
        self.iterations = iterations
        self.salt = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
        self.hash = Self.pbkdf2(password: Array(password.utf8), salt: self.salt, iterations: iterations, length: 32)
    }

    public var encoded: String {
        "pbkdf2-sha256$\(self.iterations)$\(Data(self.salt).base64EncodedString())$\(Data(self.hash).base64EncodedString())"
    }

    /// Whether `password` hashes to this hash (compared in constant time).
    public func matches(_ password: String) -> Bool {
        let candidate = Self.pbkdf2(password: Array(password.utf8), salt: self.salt, iterations: self.iterations, length: self.hash.count)
        var difference: UInt8 = 0
        for (a, b) in zip(candidate, self.hash) { difference |= a ^ b }
        return difference == 0 && candidate.count == self.hash.count
    }

    /// PBKDF2 (RFC 8018) with HMAC-SHA256.
    static func pbkdf2(password: [UInt8], salt: [UInt8], iterations: Int, length: Int) -> [UInt8] {
        let key = SymmetricKey(data: password)
        var output: [UInt8] = []
        var block: UInt32 = 1
        while output.count < length {
            var message = salt
            withUnsafeBytes(of: block.bigEndian) { message.append(contentsOf: $0) }
            var u = Array(HMAC<SHA256>.authenticationCode(for: message, using: key))
            var t = u
            for _ in 1..<max(iterations, 1) {
                u = Array(HMAC<SHA256>.authenticationCode(for: u, using: key))
                for index in t.indices { t[index] ^= u[index] }
            }
            output.append(contentsOf: t)
            block += 1
        }
        return Array(output.prefix(length))
    }
}
