import Foundation
import StorkCore
import Synchronization
import Testing

@testable import StorkRealtime

/// Answers from a script, records every request and every wait.
final class FakeAuthenticationTransport: AuthenticationHTTPTransport {
    struct Request: Sendable {
        var url: String
        var headers: [String: String]
        var body: JSONValue
        var timeout: Duration
    }

    enum Answer: Sendable {
        case response(Int, String)
        case failure
    }

    struct TransportFailure: Error {}

    private let state: Mutex<(answers: [Answer], requests: [Request], sleeps: [Duration])>

    init(_ answers: [Answer]) {
        self.state = Mutex((answers, [], []))
    }

    var requests: [Request] { self.state.withLock { $0.requests } }
    var sleeps: [Duration] { self.state.withLock { $0.sleeps } }

    func post(
        url: String,
        headers: [String: String],
        body: [UInt8],
        timeout: Duration
    ) async throws
        -> AuthenticationHTTPResponse
    {
        let decoded = (try? JSONDecoder().decode(JSONValue.self, from: Data(body))) ?? .null
        let answer = self.state.withLock { state -> Answer in
            state.requests.append(Request(url: url, headers: headers, body: decoded, timeout: timeout))
            return state.answers.isEmpty ? .failure : state.answers.removeFirst()
        }
        switch answer {
        case .response(let status, let body): return AuthenticationHTTPResponse(status: status, body: Array(body.utf8))
        case .failure: throw TransportFailure()
        }
    }

    @Sendable func sleep(_ duration: Duration) async throws {
        self.state.withLock { $0.sleeps.append(duration) }
    }
}

@Suite("HTTP webhook authentication")
struct HTTPAuthenticatorTests {
    static func authenticator(
        _ answers: [FakeAuthenticationTransport.Answer],
        _ adjust: (inout HTTPAuthenticatorConfiguration) -> Void = { _ in }
    ) -> (HTTPAuthenticator, FakeAuthenticationTransport) {
        let transport = FakeAuthenticationTransport(answers)
        var configuration = HTTPAuthenticatorConfiguration(url: "http://app.test/auth", headers: ["X-Secret": "s"])
        adjust(&configuration)
        return (
            HTTPAuthenticator(configuration: configuration, transport: transport, sleep: transport.sleep), transport
        )
    }

    @Test("the credentials and connection data are POSTed as JSON with the configured headers and timeout")
    func request() async {
        let (authenticator, transport) = Self.authenticator([
            .response(200, #""alice""#), .response(200, #""t""#), .response(200, #""a""#),
        ])
        let connection: JSONValue = ["remoteAddress": "127.0.0.1"]
        _ = await authenticator.authenticate(.password(user: "alice", password: "pw"), connection: connection)
        _ = await authenticator.authenticate(.token("tok"), connection: connection)
        _ = await authenticator.authenticate(.none)
        let requests = transport.requests
        #expect(requests.count == 3)
        #expect(requests.map(\.url) == Array(repeating: "http://app.test/auth", count: 3))
        #expect(requests[0].headers == ["X-Secret": "s", "Content-Type": "application/json"])
        #expect(requests[0].timeout == .seconds(5))
        #expect(requests[0].body == ["user": "alice", "password": "pw", "connectionData": connection])
        #expect(requests[1].body == ["token": "tok", "connectionData": connection])
        #expect(requests[2].body == ["connectionData": [:]])
    }

    @Test(
        "a permitted status accepts with the user the body names; anything unexpected rejects",
        arguments: [
            (200, #""alice""#, AuthenticationOutcome.accepted(AuthenticatedUser(id: "alice"))),
            (
                200, #"{"id":"bob","roles":["admin"],"data":{"plan":"pro"}}"#,
                .accepted(AuthenticatedUser(id: "bob", roles: ["admin"], data: ["plan": "pro"]))
            ),
            (200, #"{"id":"carol"}"#, .accepted(AuthenticatedUser(id: "carol"))),
            (200, "alice", .rejected("auth webhook accepted but its body is not JSON")),
            (200, "", .rejected("auth webhook accepted but its body is not JSON")),
            (200, #""""#, .rejected("auth webhook accepted but its body is neither a user id nor {id, roles, data}")),
            (200, "true", .rejected("auth webhook accepted but its body is neither a user id nor {id, roles, data}")),
            (200, #"{"roles":["admin"]}"#, .rejected("auth webhook accepted but its body has no 'id'")),
            (
                200, #"{"id":"x","roles":"admin"}"#,
                .rejected("auth webhook accepted but its 'roles' is not a list of strings")
            ),
            (401, #""alice""#, .rejected("auth webhook answered 401")),
            (403, "", .rejected("auth webhook answered 403")),
            (500, "", .rejected("auth webhook answered 500")),
            (204, "", .rejected("auth webhook answered 204")),
        ]
    )
    func answers(status: Int, body: String, expected: AuthenticationOutcome) async {
        let (authenticator, _) = Self.authenticator([.response(status, body)])
        #expect(await authenticator.authenticate(.password(user: "u", password: "p")) == expected)
    }

    @Test("permittedStatusCodes replace the default 200")
    func permitted() async {
        let (authenticator, _) = Self.authenticator([.response(201, #""alice""#), .response(200, #""alice""#)]) {
            $0.permittedStatusCodes = [201]
        }
        #expect(await authenticator.authenticate(.token("t")) == .accepted(AuthenticatedUser(id: "alice")))
        #expect(await authenticator.authenticate(.token("t")) == .rejected("auth webhook answered 200"))
    }

    @Test("retry statuses and transport errors are retried retryAttempts times, waiting retryInterval in between")
    func retries() async {
        let (authenticator, transport) = Self.authenticator([.response(503, ""), .failure, .response(200, #""alice""#)])
        {
            $0.retryAttempts = 2
            $0.retryInterval = .milliseconds(250)
        }
        #expect(await authenticator.authenticate(.token("t")) == .accepted(AuthenticatedUser(id: "alice")))
        #expect(transport.requests.count == 3)
        #expect(transport.sleeps == [.milliseconds(250), .milliseconds(250)])

        let (exhausted, second) = Self.authenticator([
            .response(503, ""), .response(503, ""), .response(200, #""alice""#),
        ]) {
            $0.retryAttempts = 1
        }
        #expect(await exhausted.authenticate(.token("t")) == .rejected("auth webhook answered 503 after 2 attempts"))
        #expect(second.requests.count == 2)

        // A status that is neither permitted nor retried is final at once.
        let (final, third) = Self.authenticator([.response(401, ""), .response(200, #""alice""#)])
        #expect(await final.authenticate(.token("t")) == .rejected("auth webhook answered 401"))
        #expect(third.requests.count == 1)
        #expect(third.sleeps.isEmpty)
    }

    @Test("a transport error or timeout never lets anyone in")
    func failsClosed() async {
        let (authenticator, transport) = Self.authenticator([]) { $0.retryAttempts = 0 }
        #expect(await authenticator.authenticate(.token("t")) == .rejected("auth webhook unreachable (1 attempt)"))
        let (retrying, _) = Self.authenticator([]) { $0.retryAttempts = 3 }
        #expect(await retrying.authenticate(.token("t")) == .rejected("auth webhook unreachable (4 attempts)"))
        #expect(transport.requests.count == 1)
    }

    @Test("a cancelled wait between attempts ends the attempts with a rejection")
    func cancelledWait() async {
        let transport = FakeAuthenticationTransport([.response(503, ""), .response(200, #""alice""#)])
        let authenticator = HTTPAuthenticator(
            configuration: HTTPAuthenticatorConfiguration(url: "http://app.test/auth"),
            transport: transport,
            sleep: { _ in throw CancellationError() }
        )
        #expect(await authenticator.authenticate(.token("t")) == .rejected("auth webhook answered 503"))
        #expect(transport.requests.count == 1)
    }

    @Test("in a chain it receives the connection data")
    func chain() async {
        let (authenticator, transport) = Self.authenticator([.response(200, #""alice""#)])
        let chain = AuthenticationChain([authenticator])
        #expect(
            await chain.authenticate(.token("t"), connection: ["ip": "::1"])
                == .accepted(AuthenticatedUser(id: "alice"))
        )
        #expect(transport.requests.first?.body == ["token": "t", "connectionData": ["ip": "::1"]])
    }
}
