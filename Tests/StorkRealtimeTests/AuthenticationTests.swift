import Crypto
import Foundation
import StorkCore
import Testing

@testable import StorkRealtime

@Suite("Authentication")
struct AuthenticationTests {
    /// RFC 7914, section 11: PBKDF2-HMAC-SHA256 of "passwd" / "salt", 1 iteration, 64 bytes.
    @Test("PBKDF2-HMAC-SHA256 matches the published test vector")
    func pbkdf2Vector() {
        let derived = PasswordHash.pbkdf2(password: Array("passwd".utf8), salt: Array("salt".utf8), iterations: 1, length: 64)
        let hex = derived.map { String(format: "%02x", $0) }.joined()
        #expect(
            hex == "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
                + "49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"
        )
    }

    @Test("a hash round-trips through its text form and only its password matches")
    func passwordHash() throws {
        let hash = PasswordHash(password: "correct horse", iterations: 1_000)
        let decoded = try PasswordHash(encoded: hash.encoded)
        #expect(decoded == hash)
        #expect(decoded.matches("correct horse"))
        #expect(!decoded.matches("correct horse "))
        #expect(!decoded.matches(""))
        #expect(PasswordHash(password: "correct horse", iterations: 1_000).salt != hash.salt)
    }

    static func usersFile() throws -> UsersFileAuthenticator {
        let token = "tok-alice-1"
        let tokenHash = SHA256.hash(data: Data(token.utf8)).map { String(format: "%02x", $0) }.joined()
        return try UsersFileAuthenticator(
            document: .object([
                "users": .array([
                    .object([
                        "id": .string("alice"),
                        "password": .string(PasswordHash(password: "s3cret", iterations: 1_000).encoded),
                        "roles": .array([.string("member")]),
                        "data": .object(["rooms": .array([.string("r1")])]),
                    ]),
                    .object(["id": .string("service")]),
                ]),
                "tokens": .array([.object(["sha256": .string(tokenHash), "user": .string("alice")])]),
            ])
        )
    }

    @Test("users file: password and token accepted with roles and data; wrong ones rejected; strangers passed on")
    func usersFile() async throws {
        let users = try Self.usersFile()
        let alice = AuthenticatedUser(id: "alice", roles: ["member"], data: .object(["rooms": .array([.string("r1")])]))
        #expect(await users.authenticate(.password(user: "alice", password: "s3cret")) == .accepted(alice))
        #expect(await users.authenticate(.token("tok-alice-1")) == .accepted(alice))
        #expect(await users.authenticate(.password(user: "alice", password: "S3cret")) == .rejected("wrong password"))
        #expect(await users.authenticate(.password(user: "service", password: "")) == .rejected("wrong password"))
        #expect(await users.authenticate(.token("tok-alice-2")) == .rejected("unknown token"))
        #expect(await users.authenticate(.password(user: "mallory", password: "x")) == .notMine)
        #expect(await users.authenticate(.token("a.b.c")) == .notMine)
        #expect(await users.authenticate(.none) == .notMine)
    }

    @Test("the chain: the first authenticator that answers decides; nobody answering is a rejection")
    func chain() async throws {
        let users = try Self.usersFile()
        let strict = AuthenticationChain([users])
        #expect(await strict.authenticate(.password(user: "mallory", password: "x")) != .notMine)
        if case .accepted = await strict.authenticate(.password(user: "mallory", password: "x")) {
            Issue.record("an unknown user must not be accepted without an open authenticator")
        }
        let open = AuthenticationChain([users, OpenAuthenticator()])
        #expect(await open.authenticate(.password(user: "mallory", password: "x")) == .accepted(AuthenticatedUser(id: "mallory")))
        // A listed user with a wrong password is rejected by the users file: the open authenticator is not asked.
        #expect(await open.authenticate(.password(user: "alice", password: "nope")) == .rejected("wrong password"))
        #expect(await open.authenticate(.none) == .accepted(AuthenticatedUser(id: "anonymous")))
    }

    @Test(
        "bad users files are refused with the entry named",
        arguments: [
            (JSONValue.object(["users": .array([.object([:])])]), "user 1: 'id' is required"),
            (.object(["users": .array([.object(["id": .string("a")]), .object(["id": .string("a")])])]), "id 'a' twice"),
            (.object(["users": .array([.object(["id": .string("a"), "password": .string("plain")])])]), "pbkdf2-sha256"),
            (.object(["users": .array([.object(["id": .string("a"), "roles": .string("x")])])]), "'roles' must be a list"),
            (.object(["tokens": .array([.object(["sha256": .string("abc"), "user": .string("a")])])]), "64 hex digits"),
            (
                .object(["tokens": .array([.object(["sha256": .string(String(repeating: "a", count: 64)), "user": .string("b")])])]),
                "must name a listed user"
            ),
        ]
    )
    func badFiles(document: JSONValue, message: String) {
        #expect {
            _ = try UsersFileAuthenticator(document: document)
        } throws: { error in
            "\(error)".contains(message)
        }
    }
}
