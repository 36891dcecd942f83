import Crypto
import CryptoExtras
import Foundation
import JWTKit
import StorkCore
import Testing

@testable import StorkRealtime

/// Claims as the tests mint them: any JSON.
struct MintedClaims: JWTPayload {
    var fields: [String: JSONValue]

    init(_ fields: [String: JSONValue]) { self.fields = fields }
    init(from decoder: any Decoder) throws { self.fields = try [String: JSONValue](from: decoder) }
    func encode(to encoder: any Encoder) throws { try self.fields.encode(to: encoder) }
    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

/// A signer for one algorithm and the matching configuration key.
struct TestIssuer {
    let keys: JWTKeyCollection
    /// The secret (HS256) or PEM public key (RS256, ES256) a verifier is configured with.
    let verificationKey: String
    let algorithm: JWTAuthenticatorConfiguration.Algorithm

    static let secret = "a-test-secret-that-is-at-least-32-bytes-long"

    static func make(_ algorithm: JWTAuthenticatorConfiguration.Algorithm) async throws -> TestIssuer {
        let keys = JWTKeyCollection()
        switch algorithm {
        case .hs256:
            await keys.add(hmac: HMACKey(from: Self.secret), digestAlgorithm: .sha256)
            return TestIssuer(keys: keys, verificationKey: Self.secret, algorithm: algorithm)
        case .rs256:
            let key = try Insecure.RSA.PrivateKey(backing: _RSA.Signing.PrivateKey(keySize: .bits2048))
            await keys.add(rsa: key, digestAlgorithm: .sha256)
            return TestIssuer(keys: keys, verificationKey: key.publicKey.pemRepresentation, algorithm: algorithm)
        case .es256:
            let key = ES256PrivateKey()
            await keys.add(ecdsa: key)
            return TestIssuer(keys: keys, verificationKey: key.publicKey.pemRepresentation, algorithm: algorithm)
        }
    }

    func sign(_ claims: [String: JSONValue]) async throws -> String {
        try await self.keys.sign(MintedClaims(claims))
    }

    func authenticator(
        now: Double,
        _ adjust: (inout JWTAuthenticatorConfiguration) -> Void = { _ in }
    ) async throws -> JWTAuthenticator {
        var configuration = JWTAuthenticatorConfiguration(algorithm: self.algorithm, keys: [self.verificationKey])
        adjust(&configuration)
        return try await JWTAuthenticator(configuration: configuration, now: { now })
    }
}

@Suite("JWT authentication")
struct JWTAuthenticatorTests {
    static let now: Double = 1_800_000_000

    static func claims(_ extra: [String: JSONValue] = [:]) -> [String: JSONValue] {
        var claims: [String: JSONValue] = [
            "sub": "alice",
            "exp": .number(Self.now + 600),
            "roles": ["member", "editor"],
            "data": ["rooms": ["r1"]],
        ]
        claims.merge(extra) { _, new in new }
        return claims
    }

    @Test(
        "a token signed with the configured key is accepted, claims mapped to the user",
        arguments: JWTAuthenticatorConfiguration.Algorithm.allCases
    )
    func accepts(_ algorithm: JWTAuthenticatorConfiguration.Algorithm) async throws {
        let issuer = try await TestIssuer.make(algorithm)
        let authenticator = try await issuer.authenticator(now: Self.now)
        let token = try await issuer.sign(Self.claims())
        let expected = AuthenticatedUser(id: "alice", roles: ["member", "editor"], data: ["rooms": ["r1"]])
        #expect(await authenticator.authenticate(.token(token)) == .accepted(expected))
    }

    @Test(
        "a token signed with another key of the same kind is a bad signature",
        arguments: JWTAuthenticatorConfiguration.Algorithm.allCases
    )
    func otherKey(_ algorithm: JWTAuthenticatorConfiguration.Algorithm) async throws {
        let verifier = try await TestIssuer.make(algorithm)
        let forger: TestIssuer
        if algorithm == .hs256 {
            let keys = JWTKeyCollection()
            await keys.add(hmac: HMACKey(from: "another-secret-that-is-also-32-bytes-long!"), digestAlgorithm: .sha256)
            forger = TestIssuer(keys: keys, verificationKey: "", algorithm: .hs256)
        } else {
            forger = try await TestIssuer.make(algorithm)
        }
        let authenticator = try await verifier.authenticator(now: Self.now)
        let token = try await forger.sign(Self.claims())
        #expect(await authenticator.authenticate(.token(token)) == .rejected("bad signature"))
    }

    @Test(
        "with several keys (a rotation) a token signed with any of them is accepted",
        arguments: JWTAuthenticatorConfiguration.Algorithm.allCases
    )
    func rotation(_ algorithm: JWTAuthenticatorConfiguration.Algorithm) async throws {
        let old = try await TestIssuer.make(algorithm)
        let new: TestIssuer
        if algorithm == .hs256 {
            let keys = JWTKeyCollection()
            let secret = "the-new-secret-that-is-also-32-bytes-long"
            await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
            new = TestIssuer(keys: keys, verificationKey: secret, algorithm: .hs256)
        } else {
            new = try await TestIssuer.make(algorithm)
        }
        let stranger = try await TestIssuer.make(algorithm == .hs256 ? .es256 : algorithm)
        let authenticator = try await JWTAuthenticator(
            configuration: .init(algorithm: algorithm, keys: [new.verificationKey, old.verificationKey]),
            now: { Self.now }
        )
        #expect(await authenticator.authenticate(.token(try await old.sign(Self.claims()))).isAccepted)
        #expect(await authenticator.authenticate(.token(try await new.sign(Self.claims()))).isAccepted)
        if algorithm != .hs256 {
            #expect(
                await authenticator.authenticate(.token(try await stranger.sign(Self.claims())))
                    == .rejected("bad signature")
            )
        }
        await #expect(throws: StorkError.self) {
            try await JWTAuthenticator(configuration: .init(algorithm: algorithm, keys: []), now: { 0 })
        }
    }

    @Test("a changed payload under the original signature is a bad signature")
    func tampered() async throws {
        let issuer = try await TestIssuer.make(.hs256)
        let authenticator = try await issuer.authenticator(now: Self.now)
        let token = try await issuer.sign(Self.claims())
        let other = try await issuer.sign(Self.claims(["sub": "mallory"]))
        let parts = token.split(separator: ".")
        let otherParts = other.split(separator: ".")
        let spliced = "\(parts[0]).\(otherParts[1]).\(parts[2])"
        #expect(await authenticator.authenticate(.token(spliced)) == .rejected("bad signature"))
    }

    @Test("a token for another algorithm than the configured one is rejected (no HS256 with an RSA public key)")
    func algorithmConfusion() async throws {
        let rsa = try await TestIssuer.make(.rs256)
        let authenticator = try await rsa.authenticator(now: Self.now)
        // The classic attack: sign HS256 with the RSA public key's text as the secret.
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: rsa.verificationKey), digestAlgorithm: .sha256)
        let forged = try await keys.sign(MintedClaims(Self.claims()))
        #expect(
            await authenticator.authenticate(.token(forged))
                == .rejected("token algorithm 'HS256' is not the configured RS256")
        )
        // And "none".
        let header = Data(#"{"alg":"none","typ":"JWT"}"#.utf8).testBase64URL()
        let payload = Data(#"{"sub":"alice","exp":1900000000}"#.utf8).testBase64URL()
        #expect(
            await authenticator.authenticate(.token("\(header).\(payload)."))
                == .rejected("token algorithm 'none' is not the configured RS256")
        )
    }

    @Test("exp and nbf are checked against the injected now, with the leeway")
    func validityPeriod() async throws {
        let issuer = try await TestIssuer.make(.hs256)
        let token = try await issuer.sign(Self.claims(["exp": .number(Self.now), "nbf": .number(Self.now - 60)]))
        // exp == now: expired, unless the leeway covers it.
        #expect(
            try await issuer.authenticator(now: Self.now) { $0.leeway = 0 }.authenticate(.token(token))
                == .rejected("token expired")
        )
        #expect(
            try await issuer.authenticator(now: Self.now + 4) { $0.leeway = 5 }.authenticate(.token(token))
                != .rejected("token expired")
        )
        #expect(
            try await issuer.authenticator(now: Self.now + 5) { $0.leeway = 5 }.authenticate(.token(token))
                == .rejected("token expired")
        )
        // nbf in the future.
        let early = try await issuer.sign(Self.claims(["nbf": .number(Self.now + 30)]))
        #expect(
            try await issuer.authenticator(now: Self.now).authenticate(.token(early))
                == .rejected("token not valid yet")
        )
        #expect(
            try await issuer.authenticator(now: Self.now + 26).authenticate(.token(early))
                != .rejected("token not valid yet")
        )
        // No exp: rejected unless not required.
        var claims = Self.claims()
        claims["exp"] = nil
        let forever = try await issuer.sign(claims)
        #expect(
            try await issuer.authenticator(now: Self.now).authenticate(.token(forever))
                == .rejected("token has no 'exp'")
        )
        if case .accepted = try await issuer.authenticator(now: Self.now, { $0.requireExpiry = false }).authenticate(
            .token(forever)
        ) {
        } else {
            Issue.record("a token without exp must be accepted when requireExpiry is false")
        }
        let textual = try await issuer.sign(Self.claims(["exp": "tomorrow"]))
        #expect(
            try await issuer.authenticator(now: Self.now).authenticate(.token(textual))
                == .rejected("token 'exp' is not a number")
        )
    }

    @Test("audience (string or list) and issuer, when configured, must match")
    func audienceAndIssuer() async throws {
        let issuer = try await TestIssuer.make(.es256)
        let strict = try await issuer.authenticator(now: Self.now) {
            $0.audiences = ["chat-app"]
            $0.issuer = "https://auth.example.com"
        }
        let good = try await issuer.sign(Self.claims(["aud": "chat-app", "iss": "https://auth.example.com"]))
        let listed = try await issuer.sign(
            Self.claims(["aud": ["other", "chat-app"], "iss": "https://auth.example.com"])
        )
        let wrongAudience = try await issuer.sign(Self.claims(["aud": "billing", "iss": "https://auth.example.com"]))
        let noAudience = try await issuer.sign(Self.claims(["iss": "https://auth.example.com"]))
        let wrongIssuer = try await issuer.sign(Self.claims(["aud": "chat-app", "iss": "https://evil.example.com"]))
        #expect(await strict.authenticate(.token(good)).isAccepted)
        #expect(await strict.authenticate(.token(listed)).isAccepted)
        #expect(await strict.authenticate(.token(wrongAudience)) == .rejected("token audience is not chat-app"))
        #expect(await strict.authenticate(.token(noAudience)) == .rejected("token audience is not chat-app"))
        #expect(
            await strict.authenticate(.token(wrongIssuer)) == .rejected("token issuer is not https://auth.example.com")
        )
        // Without a configured audience, any aud is fine.
        #expect(try await issuer.authenticator(now: Self.now).authenticate(.token(wrongAudience)).isAccepted)
    }

    @Test("configurable roles and data claims, including a dotted path; bad roles or no sub rejected")
    func claimMapping() async throws {
        let issuer = try await TestIssuer.make(.hs256)
        let authenticator = try await issuer.authenticator(now: Self.now) {
            $0.rolesClaim = "realm_access.roles"
            $0.dataClaim = "https://example.com/data"
        }
        let token = try await issuer.sign(
            Self.claims(["realm_access": ["roles": ["admin"]], "https://example.com/data": ["tier": "gold"]])
        )
        #expect(
            await authenticator.authenticate(.token(token))
                == .accepted(AuthenticatedUser(id: "alice", roles: ["admin"], data: ["tier": "gold"]))
        )
        var bare = Self.claims()
        bare["roles"] = nil
        bare["data"] = nil
        let plain = try await issuer.sign(bare)
        #expect(
            try await issuer.authenticator(now: Self.now).authenticate(.token(plain))
                == .accepted(AuthenticatedUser(id: "alice"))
        )
        let badRoles = try await issuer.sign(Self.claims(["roles": "admin"]))
        #expect(
            try await issuer.authenticator(now: Self.now).authenticate(.token(badRoles))
                == .rejected("token 'roles' is not a list of strings")
        )
        var anonymous = Self.claims()
        anonymous["sub"] = nil
        let noSubject = try await issuer.sign(anonymous)
        #expect(
            try await issuer.authenticator(now: Self.now).authenticate(.token(noSubject))
                == .rejected("token has no 'sub'")
        )
    }

    @Test("passwords, opaque tokens and no credentials are not the JWT authenticator's")
    func notMine() async throws {
        let authenticator = try await TestIssuer.make(.hs256).authenticator(now: Self.now)
        #expect(await authenticator.authenticate(.password(user: "alice", password: "a.b.c")) == .notMine)
        #expect(await authenticator.authenticate(.token("opaque-api-token")) == .notMine)
        #expect(await authenticator.authenticate(.token("a.b.c.d")) == .notMine)
        #expect(await authenticator.authenticate(.none) == .notMine)
        #expect(
            await authenticator.authenticate(.token("a.b.c"))
                == .rejected("malformed token: the header is not base64url-encoded JSON")
        )
    }

    @Test("bad keys are refused when the authenticator is made")
    func badKeys() async throws {
        await #expect(throws: StorkError.self) {
            try await JWTAuthenticator(configuration: .init(algorithm: .hs256, keys: ["short"]), now: { 0 })
        }
        await #expect(throws: StorkError.self) {
            try await JWTAuthenticator(configuration: .init(algorithm: .rs256, keys: ["not a pem"]), now: { 0 })
        }
        let ec = try await TestIssuer.make(.es256)
        await #expect(throws: StorkError.self) {
            try await JWTAuthenticator(configuration: .init(algorithm: .rs256, keys: [ec.verificationKey]), now: { 0 })
        }
    }

    /// Thousands of random and mutated tokens: every one is answered (rejected or notMine), none crashes, and none
    /// but the unmodified token is accepted.
    @Test("fuzz: random and mutated tokens never crash and are never accepted")
    func fuzz() async throws {
        let issuer = try await TestIssuer.make(.hs256)
        let authenticator = try await issuer.authenticator(now: Self.now)
        let valid = try await issuer.sign(Self.claims())
        var random = SeededRandom(seed: 0x5EED_1A7)
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ {}\":,\u{0}é")
        let pieces = [
            "eyJhbGciOiJIUzI1NiJ9", "eyJhbGciOiJub25lIn0", "e30", "", "!!!!", "eyJ", "bnVsbA", "W10", "MQ",
            Data(#"{"alg":"HS256","kid":"x"}"#.utf8).testBase64URL(),
            Data(#"{"alg":"HS256","crit":["exp"]}"#.utf8).testBase64URL(),
            Data(#"{"sub":"alice","exp":1e400}"#.utf8).testBase64URL(),
            Data(#"{"sub":["a"],"exp":"x","roles":{"a":1}}"#.utf8).testBase64URL(),
        ]
        var accepted = 0
        for round in 0..<3_000 {
            var token: String
            switch round % 3 {
            case 0:
                // Flip, insert or delete a few characters of the valid token.
                var characters = Array(valid)
                for _ in 0..<Int.random(in: 1...4, using: &random) {
                    let index = Int.random(in: 0..<characters.count, using: &random)
                    switch Int.random(in: 0..<3, using: &random) {
                    case 0: characters[index] = alphabet.randomElement(using: &random)!
                    case 1: characters.insert(alphabet.randomElement(using: &random)!, at: index)
                    default: if characters.count > 1 { characters.remove(at: index) }
                    }
                }
                token = String(characters)
            case 1:
                // Three parts from a list of plausible and broken pieces.
                token = (0..<3).map { _ in pieces.randomElement(using: &random)! }.joined(separator: ".")
            default:
                // Random characters with two dots.
                let length = Int.random(in: 0...120, using: &random)
                var characters = (0..<length).map { _ in alphabet.randomElement(using: &random)! }.filter { $0 != "." }
                for _ in 0..<2 { characters.insert(".", at: Int.random(in: 0...characters.count, using: &random)) }
                token = String(characters)
            }
            let outcome = await authenticator.authenticate(.token(token))
            if case .accepted(let user) = outcome {
                // A mutation may still decode to the same bytes (base64url's unused low bits): then it carries the
                // original, signed claims and nothing else.
                #expect(user == AuthenticatedUser(id: "alice", roles: ["member", "editor"], data: ["rooms": ["r1"]]))
                accepted += 1
            }
        }
        #expect(accepted < 100)
    }
}

extension AuthenticationOutcome {
    var isAccepted: Bool {
        if case .accepted = self { return true }
        return false
    }
}

extension Data {
    func testBase64URL() -> String {
        self.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
}
