import Foundation
internal import JWTKit
import StorkCore

// MARK: - JWT
//
// A bearer token with three dot-separated parts is a JSON Web Token. The signature is checked with jwt-kit against the
// keys this authenticator is configured with (HS256: shared secrets; RS256 / ES256: PEM public keys), in order, so
// that a key can be rotated by listing the new one beside the old; the claims are checked here, against the `now`
// the caller injects, so that tests never depend on the wall clock.

/// How a `jwt` authenticator checks tokens.
public struct JWTAuthenticatorConfiguration: Sendable, Hashable {
    public enum Algorithm: String, Sendable, Hashable, CaseIterable {
        /// HMAC-SHA256 with a shared secret.
        case hs256 = "HS256"
        /// RSASSA-PKCS1-v1_5 with SHA-256 and an RSA public key (2048 bits or more).
        case rs256 = "RS256"
        /// ECDSA on P-256 with SHA-256.
        case es256 = "ES256"
    }

    /// The one algorithm accepted; a token whose header names another is rejected.
    public var algorithm: Algorithm
    /// HS256: shared secrets (32 bytes or more each). RS256 / ES256: public keys in PEM form. A token signed with any
    /// of them is accepted (list the new key beside the old one while rotating).
    public var keys: [String]
    /// When set, the token's `aud` (a string or a list) must contain one of these.
    public var audiences: [String]
    /// When set, the token's `iss` must be exactly this.
    public var issuer: String?
    /// Clock skew allowed when checking `exp` and `nbf`, in seconds.
    public var leeway: Double
    /// Whether a token without `exp` is rejected (a token that never expires cannot be withdrawn).
    public var requireExpiry: Bool
    /// The claim that holds the user's roles (a list of strings); a missing claim means no roles. A name that is not
    /// a claim is tried as a dotted path (`realm_access.roles`).
    public var rolesClaim: String
    /// The claim that holds the user's server-side data (any JSON); missing means `{}`.
    public var dataClaim: String

    public init(
        algorithm: Algorithm,
        keys: [String],
        audiences: [String] = [],
        issuer: String? = nil,
        leeway: Double = 5,
        requireExpiry: Bool = true,
        rolesClaim: String = "roles",
        dataClaim: String = "data"
    ) {
        self.algorithm = algorithm
        self.keys = keys
        self.audiences = audiences
        self.issuer = issuer
        self.leeway = leeway
        self.requireExpiry = requireExpiry
        self.rolesClaim = rolesClaim
        self.dataClaim = dataClaim
    }
}

/// Accepts JSON Web Tokens signed with the configured key: `sub` becomes the user id, the roles claim the roles, the
/// data claim the server-side data. Passwords and tokens that are not JWTs are `notMine`; a JWT with a bad signature,
/// outside its validity period, for another audience or issuer, or malformed, is rejected with the reason.
public struct JWTAuthenticator: Authenticator {
    public let name = "jwt"
    public let configuration: JWTAuthenticatorConfiguration
    /// One collection per configured key, tried in order.
    private let keys: [JWTKeyCollection]
    private let now: @Sendable () -> Double

    /// - Parameter now: the current time in seconds since 1970 (injected so that tests control it).
    public init(configuration: JWTAuthenticatorConfiguration, now: @escaping @Sendable () -> Double) async throws {
        guard !configuration.keys.isEmpty else { throw StorkError(.invalidInput, "jwt: no key is configured") }
        var collections: [JWTKeyCollection] = []
        for (index, key) in configuration.keys.enumerated() {
            let keys = JWTKeyCollection()
            let which = configuration.keys.count == 1 ? "" : " \(index + 1)"
            do {
                switch configuration.algorithm {
                case .hs256:
                    guard key.utf8.count >= 32 else {
                        throw StorkError(.invalidInput, "jwt: HS256 secret\(which) must be at least 32 bytes")
                    }
                    await keys.add(hmac: HMACKey(from: key), digestAlgorithm: .sha256)
                case .rs256:
                    await keys.add(rsa: try Insecure.RSA.PublicKey(pem: key), digestAlgorithm: .sha256)
                case .es256:
                    await keys.add(ecdsa: try ES256PublicKey(pem: key))
                }
            } catch let error as StorkError {
                throw error
            } catch {
                throw StorkError(
                    .invalidInput,
                    "jwt: \(configuration.algorithm.rawValue) key\(which) is not a PEM public key of that kind",
                    underlying: error
                )
            }
            collections.append(keys)
        }
        self.configuration = configuration
        self.keys = collections
        self.now = now
    }

    /// Whether a bearer token has the shape of a JWT (exactly three dot-separated parts).
    public static func looksLikeJWT(_ token: String) -> Bool {
        token.utf8.lazy.filter { $0 == UInt8(ascii: ".") }.count == 2
    }

    public func authenticate(_ credentials: Credentials) async -> AuthenticationOutcome {
        guard case .token(let token) = credentials, Self.looksLikeJWT(token) else { return .notMine }
        // The header is read here first so that a token for another algorithm gets a clear reason (jwt-kit would
        // verify it with the configured key anyway, which fails).
        let header = token.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)[0]
        guard case .object(let fields)? = Self.decodeJSON(base64URL: header) else {
            return .rejected("malformed token: the header is not base64url-encoded JSON")
        }
        guard case .string(let algorithm)? = fields["alg"] else {
            return .rejected("malformed token: no 'alg' in the header")
        }
        guard algorithm == self.configuration.algorithm.rawValue else {
            return .rejected(
                "token algorithm '\(algorithm)' is not the configured \(self.configuration.algorithm.rawValue)"
            )
        }
        for keys in self.keys {
            do {
                let claims = try await keys.verify(token, as: Claims.self).fields
                return self.check(claims, now: self.now())
            } catch let error as JWTError where error.errorType == .signatureVerificationFailed {
                continue
            } catch {
                return .rejected("malformed token")
            }
        }
        return .rejected("bad signature")
    }

    /// Checks the verified claims and maps them to a user.
    func check(_ claims: [String: JSONValue], now: Double) -> AuthenticationOutcome {
        let configuration = self.configuration
        switch claims["exp"] {
        case .number(let expiry)?:
            if now >= expiry + configuration.leeway { return .rejected("token expired") }
        case nil where !configuration.requireExpiry:
            break
        case nil:
            return .rejected("token has no 'exp'")
        default:
            return .rejected("token 'exp' is not a number")
        }
        switch claims["nbf"] {
        case .number(let notBefore)?:
            if now + configuration.leeway < notBefore { return .rejected("token not valid yet") }
        case nil:
            break
        default:
            return .rejected("token 'nbf' is not a number")
        }
        if !configuration.audiences.isEmpty {
            let audiences: [String]
            switch claims["aud"] {
            case .string(let audience)?: audiences = [audience]
            case .array(let values)?: audiences = values.compactMap(\.stringValue)
            default: audiences = []
            }
            guard audiences.contains(where: configuration.audiences.contains) else {
                return .rejected("token audience is not \(configuration.audiences.joined(separator: " or "))")
            }
        }
        if let issuer = configuration.issuer, claims["iss"] != .string(issuer) {
            return .rejected("token issuer is not \(issuer)")
        }
        guard case .string(let subject)? = claims["sub"], !subject.isEmpty else {
            return .rejected("token has no 'sub'")
        }
        var roles: [String] = []
        switch Self.claim(configuration.rolesClaim, in: claims) {
        case nil, .null?:
            break
        case .array(let values)? where values.allSatisfy({ $0.stringValue != nil }):
            roles = values.compactMap(\.stringValue)
        default:
            return .rejected("token '\(configuration.rolesClaim)' is not a list of strings")
        }
        let data = Self.claim(configuration.dataClaim, in: claims) ?? .object([:])
        return .accepted(AuthenticatedUser(id: subject, roles: roles, data: data))
    }

    /// A claim by name, else by dotted path through nested objects.
    static func claim(_ name: String, in claims: [String: JSONValue]) -> JSONValue? {
        if let value = claims[name] { return value }
        var current: JSONValue = .object(claims)
        for part in name.split(separator: ".", omittingEmptySubsequences: false) {
            guard case .object(let fields) = current, let next = fields[String(part)] else { return nil }
            current = next
        }
        return current
    }

    static func decodeJSON(base64URL part: Substring) -> JSONValue? {
        var text = part.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        text += String(repeating: "=", count: (4 - text.count % 4) % 4)
        guard let data = Data(base64Encoded: text) else { return nil }
        return try? JSONDecoder().decode(JSONValue.self, from: data)
    }

    /// Every claim of a token, kept as JSON; jwt-kit checks the signature, `check` the claims.
    struct Claims: JWTPayload {
        var fields: [String: JSONValue]

        init(from decoder: any Decoder) throws {
            self.fields = try [String: JSONValue](from: decoder)
        }

        func encode(to encoder: any Encoder) throws {
            try self.fields.encode(to: encoder)
        }

        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }
}
