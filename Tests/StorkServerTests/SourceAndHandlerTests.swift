import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import StorkCore
import StorkResources
import StorkTestKit
import Synchronization
import Testing

@testable import StorkServer

/// Runs a Hummingbird app on an ephemeral loopback port for the duration of `body`.
func withServer(
    _ router: Router<BasicRequestContext>,
    _ body: @Sendable (Int) async throws -> Void
) async throws {
    var logger = Logger(label: "test-server")
    logger.logLevel = .critical
    let port = Mutex<Int?>(nil)
    let app = Application(
        router: router,
        configuration: .init(address: .hostname("127.0.0.1", port: 0)),
        onServerRunning: { channel in port.withLock { $0 = channel.localAddress?.port } },
        logger: logger
    )
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await app.runService() }
        _ = await eventually(.seconds(60)) { port.withLock { $0 } != nil }
        guard let bound = port.withLock({ $0 }) else { throw StorkError(.timeout, "server did not start") }
        try await body(bound)
        group.cancelAll()
    }
}

func context(attempt: Int = 1, token: UInt64? = nil) -> ResourceContext {
    ResourceContext(node: NodeID(name: "n1", address: "127.0.0.1:1", uid: 1), attempt: attempt, fencingToken: token, logger: Logger(label: "t"))
}

@Suite("Resource lists, file and HTTP sources", .timeLimit(.minutes(1)))
struct SourceTests {
    @Test("both shapes, JSON and YAML")
    func parser() throws {
        let shapes = [
            #"{"data":[{"id":"1","kind":"x"},{"id":"2"}]}"#,
            #"[{"id":"1","kind":"x"},{"id":"2"}]"#,
            "data:\n  - {id: '1', kind: x}\n  - id: '2'\n",
            "- id: '1'\n  kind: x\n- id: '2'\n",
        ]
        for shape in shapes {
            let resources = try ResourceListParser.parse(Data(shape.utf8))
            #expect(resources.map(\.id) == ["1", "2"], "\(shape)")
            #expect(resources[0][string: "kind"] == "x")
        }
        for bad in [#"{"items":[]}"#, #"[{"kind":"x"}]"#, #"[{"id":""}]"#, #"[{"id":"1"},{"id":"1"}]"#, "42", "[1]"] {
            #expect(throws: StorkError.self) { try ResourceListParser.parse(Data(bad.utf8)) }
        }
    }

    @Test("the file source reloads on change and keeps the last good list over a broken edit")
    func fileSource() async throws {
        let path = NSTemporaryDirectory() + "stork-resources-\(UUID().uuidString).json"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try #"[{"id":"a"}]"#.write(toFile: path, atomically: true, encoding: .utf8)
        // The checks run on a manual clock: each step of 50 ms is one check, and the clock counts the sleeps between
        // checks, so the test knows when a check is done. (Every edit changes the size: the stamp always moves.)
        let clock = ManualClock()
        let source = FileResourceSource(path: path, checkInterval: .milliseconds(50), logger: Logger(label: "t"), clock: clock)
        #expect(try await source.fetch().map(\.id) == ["a"])
        let changes = source.changes()!
        final class Seen: Sendable {
            let changes = Mutex<[ResourceSourceChange]>([])
            func withLock<T>(_ body: (inout [ResourceSourceChange]) -> T) -> T { self.changes.withLock { body(&$0) } }
        }
        let seen = Seen()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { for await change in changes { seen.withLock { $0.append(change) } } }
            await clock.sleepsStarted(atLeast: 1)
            try #"[{"id":"a"},{"id":"b"}]"#.write(toFile: path, atomically: true, encoding: .utf8)
            clock.advance(by: .milliseconds(50))
            await clock.sleepsStarted(atLeast: 2)
            guard case .replaced(let list)? = seen.withLock({ $0.first }) else {
                Issue.record("no change")
                return
            }
            #expect(list.map(\.id) == ["a", "b"])
            try #"[{"id":"a"},{"#.write(toFile: path, atomically: true, encoding: .utf8)
            clock.advance(by: .milliseconds(50))
            // The check that read the broken edit is over once the next sleep starts; it reported nothing.
            await clock.sleepsStarted(atLeast: 3)
            #expect(seen.withLock { $0.count } == 1, "a broken edit is no change")
            try #"{"data":[{"id":"c"}]}"#.write(toFile: path, atomically: true, encoding: .utf8)
            clock.advance(by: .milliseconds(50))
            await clock.sleepsStarted(atLeast: 4)
            guard case .replaced(let next)? = seen.withLock({ $0.count == 2 ? $0.last : nil }) else {
                Issue.record("no change")
                return
            }
            #expect(next.map(\.id) == ["c"], "the broken edit in between was skipped")
            group.cancelAll()
        }
    }

    @Test("the HTTP source uses ETag / If-None-Match, sends headers, and reports errors")
    func httpSource() async throws {
        let hits = Mutex<[String]>([])
        let failing = Mutex(false)
        let router = Router()
        router.get("/resources") { request, _ -> Response in
            hits.withLock { $0.append("\(request.headers[HTTPField.Name("X-Token")!] ?? "-")|\(request.headers[.ifNoneMatch] ?? "-")") }
            if failing.withLock({ $0 }) { return Response(status: .internalServerError) }
            if request.headers[.ifNoneMatch] == "\"v1\"" { return Response(status: .notModified) }
            var headers = HTTPFields()
            headers[.eTag] = "\"v1\""
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: #"{"data":[{"id":"x"}]}"#)))
        }
        try await withServer(router) { port in
            let source = HTTPResourceSource(
                url: "http://127.0.0.1:\(port)/resources",
                headers: ["X-Token": "t0k"],
                client: HTTPClient.shared
            )
            let first = try await source.fetch()
            let second = try await source.fetch()
            #expect(first.map(\.id) == ["x"])
            #expect(second.map(\.id) == ["x"], "a 304 returns the last list")
            #expect(hits.withLock { $0 } == ["t0k|-", "t0k|\"v1\""])
            failing.withLock { $0 = true }
            await #expect(throws: StorkError.self) { try await source.fetch() }
        }
    }
}

@Suite("Sidecar handler", .timeLimit(.minutes(1)))
struct SidecarTests {
    @Test("POST on handle and DELETE on terminate, with Stork headers; non-2xx and timeouts throw")
    func sidecar() async throws {
        let calls = Mutex<[String]>([])
        // The slow resource's answer waits until its handle has timed out: slow by construction, not by a guess.
        let slowAnswered = OneShotSignal()
        let router = Router()
        router.post("/resources/:id") { request, context -> Response in
            let body = try await request.body.collect(upTo: 1 << 16)
            let id = context.parameters.get("id")?.removingPercentEncoding ?? "?"
            calls.withLock {
                $0.append("POST \(id) node=\(request.headers[HTTPField.Name("Stork-Node")!] ?? "-") attempt=\(request.headers[HTTPField.Name("Stork-Attempt")!] ?? "-") token=\(request.headers[HTTPField.Name("Stork-Fencing-Token")!] ?? "-") body=\(String(buffer: body))")
            }
            if id == "fail" { return Response(status: .serviceUnavailable) }
            if id == "slow" { await slowAnswered.wait() }
            return Response(status: .ok)
        }
        router.delete("/resources/:id") { request, context -> Response in
            calls.withLock {
                $0.append("DELETE \(context.parameters.get("id")?.removingPercentEncoding ?? "?") reason=\(request.headers[HTTPField.Name("Stork-Reason")!] ?? "-")")
            }
            return Response(status: .noContent)
        }
        try await withServer(router) { port in
            // A generous timeout for calls that are answered (a busy machine is not a failure), and a short one for
            // the call that is not answered until it has timed out.
            let url = "http://127.0.0.1:\(port)"
            let handler = SidecarHandler(url: url, timeout: .seconds(30), client: HTTPClient.shared)
            let impatient = SidecarHandler(url: url, timeout: .milliseconds(200), client: HTTPClient.shared)
            let resource = Resource(id: "acct 1", attributes: ["kind": "websocket"])
            try await handler.handle(resource, context: context(attempt: 2, token: 42))
            try await handler.terminate(resource, reason: .moved, context: context())
            await #expect(throws: StorkError.self) { try await handler.handle(Resource(id: "fail"), context: context()) }
            await #expect(throws: StorkError.self) { try await impatient.handle(Resource(id: "slow"), context: context()) }
            slowAnswered.fire()
            let recorded = calls.withLock { $0 }
            #expect(recorded[0] == #"POST acct 1 node=n1 attempt=2 token=42 body={"id":"acct 1","kind":"websocket"}"#)
            #expect(recorded[1] == "DELETE acct 1 reason=moved")
        }
    }
}
