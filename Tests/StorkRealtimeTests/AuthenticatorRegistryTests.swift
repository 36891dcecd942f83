import Foundation
import StorkCore
import Testing

@testable import StorkRealtime

@Suite("Authenticators by configuration")
struct AuthenticatorRegistryTests {
    static let usersFile: JSONValue = [
        "users": [["id": "alice", "password": .string(PasswordHash(password: "s3cret", iterations: 1_000).encoded)]]
    ]

    /// Files from a dictionary, documents as JSON; no HTTP transport unless given.
    static func context(
        files: [String: String] = [:],
        transport: (any AuthenticationHTTPTransport)? = nil
    ) -> AuthenticatorContext {
        AuthenticatorContext(
            readFile: { path in
                guard let text = files[path] else { throw StorkError(.invalidInput, "no such file") }
                return Array(text.utf8)
            },
            parseDocument: { contents, _ in try JSONDecoder().decode(JSONValue.self, from: Data(contents)) },
            httpTransport: transport,
            sleep: { _ in },
            now: { JWTAuthenticatorTests.now }
        )
    }

    static func usersJSON() throws -> String {
        String(decoding: try JSONEncoder().encode(Self.usersFile), as: UTF8.self)
    }

    @Test("a configuration list builds the chain in order, with the built-ins")
    func builds() async throws {
        let issuer = try await TestIssuer.make(.es256)
        let transport = FakeAuthenticationTransport([.response(200, #""from-app""#)])
        let chain = try await AuthenticationChain(
            configuration: [
                ["type": "users", "file": "users.json"],
                [
                    "type": "jwt", "algorithm": "ES256", "publicKeyFile": "jwt.pem", "audience": ["chat"],
                    "leeway": "2s",
                ],
                ["type": "http", "url": "http://127.0.0.1:1/auth", "retryAttempts": 0, "timeout": 3],
            ],
            context: Self.context(
                files: ["users.json": try Self.usersJSON(), "jwt.pem": issuer.verificationKey],
                transport: transport
            )
        )
        #expect(chain.authenticators.map(\.name) == ["users", "jwt", "http"])
        let jwt = try #require(chain.authenticators[1] as? JWTAuthenticator)
        #expect(jwt.configuration.audiences == ["chat"])
        #expect(jwt.configuration.leeway == 2)
        let http = try #require(chain.authenticators[2] as? HTTPAuthenticator)
        #expect(http.configuration.timeout == .seconds(3))
        #expect(http.configuration.retryAttempts == 0)

        #expect(
            await chain.authenticate(.password(user: "alice", password: "s3cret"))
                == .accepted(AuthenticatedUser(id: "alice"))
        )
        let token = try await issuer.sign(JWTAuthenticatorTests.claims(["aud": "chat"]))
        #expect(await chain.authenticate(.token(token)).isAccepted)
        // Neither users nor jwt: the app decides.
        #expect(
            await chain.authenticate(.password(user: "bob", password: "x"))
                == .accepted(AuthenticatedUser(id: "from-app"))
        )
    }

    @Test("an HS256 secret inline; the open authenticator")
    func inline() async throws {
        let chain = try await AuthenticationChain(
            configuration: [
                ["type": "jwt", "algorithm": "HS256", "secret": .string(TestIssuer.secret)], ["type": "open"],
            ],
            context: Self.context()
        )
        let token = try await TestIssuer.make(.hs256).sign(JWTAuthenticatorTests.claims())
        #expect(await chain.authenticate(.token(token)).isAccepted)
        #expect(await chain.authenticate(.none) == .accepted(AuthenticatedUser(id: "anonymous")))
    }

    @Test("a list of key files: the old and the new key of a rotation")
    func keyList() async throws {
        let old = try await TestIssuer.make(.rs256)
        let new = try await TestIssuer.make(.rs256)
        let chain = try await AuthenticationChain(
            configuration: [["type": "jwt", "algorithm": "RS256", "publicKeyFile": ["new.pem", "old.pem"]]],
            context: Self.context(files: ["new.pem": new.verificationKey, "old.pem": old.verificationKey])
        )
        #expect(await chain.authenticate(.token(try await old.sign(JWTAuthenticatorTests.claims()))).isAccepted)
        #expect(await chain.authenticate(.token(try await new.sign(JWTAuthenticatorTests.claims()))).isAccepted)
    }

    static let mistakes: [(JSONValue, String)] = [
        (JSONValue.string("users"), "authentication entry 1: expected an object with 'type'"),
        (["file": "users.json"], "authentication entry 1: 'type' is required"),
        (["type": "ldap"], "authentication entry 1: unknown type 'ldap' (known: http, jwt, open, users)"),
        (["type": "open", "mode": "dev"], "authentication entry 1 (open): unknown key 'mode' (known: none)"),
        (["type": "users"], "authentication entry 1 (users): 'file' is required"),
        (["type": "jwt", "secret": "x"], "authentication entry 1 (jwt): 'algorithm' is required"),
        (
            ["type": "jwt", "algorithm": "HS512", "secret": "x"],
            "authentication entry 1 (jwt): 'algorithm': 'HS512' is not one of HS256, RS256, ES256"
        ),
        (
            ["type": "jwt", "algorithm": "HS256"],
            "authentication entry 1 (jwt): exactly one of 'secret' and 'secretFile' is required for HS256"
        ),
        (
            ["type": "jwt", "algorithm": "RS256", "secret": "x"],
            "authentication entry 1 (jwt): 'secret' does not go with RS256 (use 'publicKey' or 'publicKeyFile')"
        ),
        (
            ["type": "jwt", "algorithm": "HS256", "secret": "short"],
            "authentication entry 1 (jwt): jwt: HS256 secret must be at least 32 bytes"
        ),
        (
            ["type": "jwt", "algorithm": "HS256", "secret": .string(TestIssuer.secret), "audiance": "x"],
            "authentication entry 1 (jwt): unknown key 'audiance' (known: algorithm, audience, dataClaim, issuer, leeway, publicKey, publicKeyFile, requireExpiry, rolesClaim, secret, secretFile)"
        ),
        (
            ["type": "jwt", "algorithm": "HS256", "secret": .string(TestIssuer.secret), "leeway": "soon"],
            "authentication entry 1 (jwt): 'leeway' must be seconds or a duration like '500ms', '5s', '2m'"
        ),
        (["type": "http"], "authentication entry 1 (http): 'url' is required"),
        (
            ["type": "http", "url": "ftp://x"],
            "authentication entry 1 (http): 'url' must start with http:// or https://"
        ),
        (
            ["type": "http", "url": "http://x", "retryAttempts": 1.5],
            "authentication entry 1 (http): 'retryAttempts' must be a whole number from 0 to 100"
        ),
        (
            ["type": "http", "url": "http://x", "permittedStatusCodes": [200, 999]],
            "authentication entry 1 (http): 'permittedStatusCodes' must be a list of HTTP statuses (100 to 599)"
        ),
        (
            ["type": "http", "url": "http://x", "retryStatusCodes": [200]],
            "authentication entry 1 (http): 'retryStatusCodes': 200 is also in 'permittedStatusCodes'"
        ),
        (
            ["type": "http", "url": "http://x", "headers": ["a": 1]],
            "authentication entry 1 (http): 'headers' must be an object of strings"
        ),
    ]

    @Test("mistakes name the entry, its type and the key", arguments: Self.mistakes)
    func errors(entry: JSONValue, message: String) async {
        do {
            _ = try await AuthenticationChain(
                configuration: [entry],
                context: Self.context(transport: FakeAuthenticationTransport([]))
            )
            Issue.record("expected an error: \(message)")
        } catch let error as StorkError {
            #expect(error.message == message)
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test("the entry index counts from 1 across the list; a missing file and a missing transport are named")
    func laterEntries() async throws {
        do {
            _ = try await AuthenticationChain(
                configuration: [["type": "open"], ["type": "users", "file": "gone.yaml"]],
                context: Self.context()
            )
            Issue.record("a missing users file must fail")
        } catch let error as StorkError {
            #expect(error.message.hasPrefix("authentication entry 2 (users): 'file': cannot read 'gone.yaml'"))
        }
        do {
            _ = try await AuthenticationChain(
                configuration: [["type": "http", "url": "http://x"]],
                context: Self.context()
            )
            Issue.record("an http entry without a transport must fail")
        } catch let error as StorkError {
            #expect(error.message == "authentication entry 1 (http): no HTTP transport is available here")
        }
    }

    struct HeaderAuthenticator: Authenticator {
        let name = "header"
        let user: String
        func authenticate(_ credentials: Credentials) async -> AuthenticationOutcome {
            .accepted(AuthenticatedUser(id: self.user))
        }
    }

    @Test("a Swift user registers their own type")
    func custom() async throws {
        var registry = AuthenticatorRegistry()
        registry.register(type: "header") { options, _ in
            try options.checkKeys(["user"])
            return HeaderAuthenticator(user: try options.requiredString("user"))
        }
        #expect(registry.types == ["header", "http", "jwt", "open", "users"])
        let chain = try await AuthenticationChain(
            configuration: [["type": "header", "user": "svc"]],
            registry: registry,
            context: Self.context()
        )
        #expect(await chain.authenticate(.none) == .accepted(AuthenticatedUser(id: "svc")))
        do {
            _ = try await AuthenticationChain(
                configuration: [["type": "header"]],
                registry: registry,
                context: Self.context()
            )
            Issue.record("expected an error")
        } catch let error as StorkError {
            #expect(error.message == "authentication entry 1 (header): 'user' is required")
        }
    }
}
