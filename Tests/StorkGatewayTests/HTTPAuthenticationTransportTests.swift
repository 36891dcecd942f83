import AsyncHTTPClient
import Foundation
import Hummingbird
import Logging
import NIOCore
import StorkCore
import StorkRealtime
import Testing

@testable import StorkGateway

@Suite("Auth webhook over HTTP")
struct HTTPAuthenticationTransportTests {
    /// The app: `POST /auth` accepts alice with her password (answering `{id, roles, data}`) and echoes what it saw of
    /// the request in `data`; anyone else gets 401.
    static func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.post("/auth") { request, context -> Response in
            let body = try await request.body.collect(upTo: 64 * 1024)
            let sent = try JSONDecoder().decode(JSONValue.self, from: Data(buffer: body))
            guard case .object(let fields) = sent, fields["user"] == "alice", fields["password"] == "s3cret" else {
                return Response(status: .unauthorized)
            }
            let answer: JSONValue = [
                "id": "alice",
                "roles": ["member"],
                "data": [
                    "secretHeader": .string(request.headers[.init("X-App-Secret")!] ?? ""),
                    "contentType": .string(request.headers[.contentType] ?? ""),
                    "connectionData": fields["connectionData"] ?? .null,
                ],
            ]
            return Response(
                status: .ok,
                headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(bytes: try JSONEncoder().encode(answer)))
            )
        }
        return router
    }

    @Test("a real app on 127.0.0.1 accepts and rejects through the AsyncHTTPClient transport")
    func roundTrip() async throws {
        let (ports, portContinuation) = AsyncStream.makeStream(of: Int.self)
        let app = Application(
            router: Self.router(),
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in
                portContinuation.yield(channel.localAddress?.port ?? 0)
                portContinuation.finish()
            },
            logger: Logger(label: "test.auth-app", factory: { _ in SwiftLogNoOpLogHandler() })
        )
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await app.runService() }
            var iterator = ports.makeAsyncIterator()
            let port = try #require(await iterator.next())
            let authenticator = HTTPAuthenticator(
                configuration: HTTPAuthenticatorConfiguration(
                    url: "http://127.0.0.1:\(port)/auth",
                    headers: ["X-App-Secret": "shared"],
                    retryAttempts: 0
                ),
                transport: HTTPAuthenticationTransport(client: client),
                sleep: { _ in }
            )
            let accepted = await authenticator.authenticate(
                .password(user: "alice", password: "s3cret"),
                connection: ["ip": "127.0.0.1"]
            )
            #expect(
                accepted
                    == .accepted(
                        AuthenticatedUser(
                            id: "alice",
                            roles: ["member"],
                            data: [
                                "secretHeader": "shared", "contentType": "application/json",
                                "connectionData": ["ip": "127.0.0.1"],
                            ]
                        )
                    )
            )
            #expect(
                await authenticator.authenticate(.password(user: "alice", password: "wrong"))
                    == .rejected("auth webhook answered 401")
            )
            group.cancelAll()
        }
        try await client.shutdown()
    }
}
