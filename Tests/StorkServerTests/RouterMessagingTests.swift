import StorkBus
import StorkCore
import StorkResources
import Testing

@testable import StorkServer

@Suite("Handlers' messaging on the node's bus")
struct RouterMessagingTests {
    @Test("request gets the first reply with its headers; nobody listening is no-responders")
    func requestReply() async throws {
        let messaging = RouterMessaging(router: BusRouter())
        let requests = messaging.subscribe("commands.acct-7", queue: nil)
        let responder = Task {
            for await request in requests {
                guard let reply = request.replyTo else { continue }
                _ = messaging.publish(
                    StorkMessage(subject: reply, headers: ["X-Seen": request.headers["X-Ask"] ?? "-"], payload: Array("done".utf8))
                )
            }
        }
        defer { responder.cancel() }

        let reply = try await messaging.request(
            StorkMessage(subject: "commands.acct-7", headers: ["X-Ask": "pause"], payload: Array("pause".utf8)),
            timeout: .seconds(20)
        )
        #expect(reply.payload == Array("done".utf8))
        #expect(reply.headers["X-Seen"] == "pause")

        await #expect(throws: StorkError(.noResponders, "nobody listens on 'commands.nobody'")) {
            try await messaging.request(StorkMessage(subject: "commands.nobody", payload: []), timeout: .seconds(20))
        }
    }
}
