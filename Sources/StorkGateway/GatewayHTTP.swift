import Foundation
import Hummingbird
import NIOCore
import StorkCore
import StorkBus
import StorkRealtime
import StorkStreaming

// MARK: - HTTP equivalents of the WebSocket actions
//
// For servers and scripts that do not keep a connection: each call authenticates (`Authorization: Bearer <token>`
// or `Basic <user:password>`), is checked against the same rules, and answers JSON. Errors are
// `{"error": {"code", "message"}}` with 400 (bad request), 401 (authentication), 403 (permission), 404, 504 (timeout).

extension Gateway {
    public func addHTTPRoutes<Context: RequestContext>(to router: Router<Context>) {
        router.post("/v1/publish") { request, context -> Response in
            await self.respond {
                let user = try await self.httpUser(request)
                let body = try await Self.jsonBody(request, context: context)
                let subject = try Self.subjectField(body)
                let data = body["data"] ?? .null
                guard self.allows(.publish, subject: subject, user: user, data: data) else {
                    throw HTTPGatewayError(.forbidden, .forbidden(.publish, subject))
                }
                let delivered = self.publish(subject: subject, data: data)
                return ["ok": true, "delivered": .number(Double(delivered))]
            }
        }
        router.post("/v1/request") { request, context -> Response in
            await self.respond {
                let user = try await self.httpUser(request)
                let body = try await Self.jsonBody(request, context: context)
                let subject = try Self.subjectField(body)
                let data = body["data"] ?? .null
                guard self.allows(.request, subject: subject, user: user, data: data) else {
                    throw HTTPGatewayError(.forbidden, .forbidden(.request, subject))
                }
                var timeout = self.configuration.requestTimeout
                if case .number(let milliseconds)? = body["timeout"], milliseconds >= 1, milliseconds <= 600_000 {
                    timeout = .milliseconds(Int64(milliseconds))
                }
                do throws(GatewayActionError) {
                    let reply = try await self.request(subject: subject, data: data, timeout: timeout)
                    let payload = GatewayPayload(bytes: reply.payload.readableBytesView)
                    return .object(["data": (try? JSONValue.parse(payload.encodedData)) ?? .null])
                } catch {
                    throw HTTPGatewayError(error.code == "timeout" ? .gatewayTimeout : .notFound, error)
                }
            }
        }
        router.post("/v1/runners/:runner/run") { request, context -> Response in
            await self.respond {
                let user = try await self.httpUser(request)
                let runner = context.parameters.get("runner") ?? ""
                let body = try await Self.jsonBody(request, context: context)
                var inputs: [String: JSONValue] = [:]
                if case .object(let given)? = body["inputs"] { inputs = given }
                let result: (String, RunnerOutcome)
                do throws(GatewayActionError) {
                    result = try await self.runOnce(runner, inputs: inputs, user: user)
                } catch {
                    let status: HTTPResponse.Status =
                        error.code == "forbidden" ? .forbidden : error.code == "unknown_runner" ? .notFound : .badRequest
                    throw HTTPGatewayError(status, error)
                }
                switch result.1 {
                case .completed(let outputs):
                    return ["runId": .string(result.0), "status": "completed", "outputs": .object(outputs)]
                case .failed(let error):
                    let message = error.nodeId.map { "node '\($0)': \(error.message)" } ?? error.message
                    throw HTTPGatewayError(.unprocessableContent, GatewayActionError(error.code.rawValue, message))
                }
            }
        }
        router.get("/v1/history") { request, _ -> Response in
            await self.respond {
                let user = try await self.httpUser(request)
                let query = request.uri.queryParameters
                guard let subject = query["subject"].map(String.init), !subject.isEmpty else {
                    throw HTTPGatewayError(.badRequest, GatewayActionError("bad_request", "'subject' is required"))
                }
                guard self.allows(.subscribe, subject: subject, user: user) else {
                    throw HTTPGatewayError(.forbidden, .forbidden(.subscribe, subject))
                }
                let limit = min(self.configuration.historyLimit, query["limit"].flatMap { Int($0) } ?? 100)
                var start = JetStreamHistoryStart.last(limit)
                if let seq = query["from"].flatMap({ UInt64($0) }) { start = .sequence(seq) }
                if let time = query["since"].flatMap({ Int64($0) }) { start = Self.historyStart(.time(milliseconds: time)) }
                guard let jetstream = self.jetstream,
                    let history = try await jetstream.history(subject: subject, from: start, limit: max(0, limit))
                else {
                    throw HTTPGatewayError(.notFound, GatewayActionError("no_history", "no stream stores '\(subject)'"))
                }
                let messages: [JSONValue] = history.messages.map { stored in
                    let payload = GatewayPayload(bytes: stored.payload)
                    var fields: [String: JSONValue] = [
                        "seq": .number(Double(stored.sequence)),
                        "subject": .string(stored.subject),
                        "time": .number(Double(stored.timestamp / 1_000_000)),
                        "data": (try? JSONValue.parse(payload.encodedData)) ?? .null,
                    ]
                    switch payload.kind {
                    case .json: break
                    case .text: fields["encoding"] = "text"
                    case .base64: fields["encoding"] = "base64"
                    }
                    return .object(fields)
                }
                return [
                    "stream": .string(history.stream), "lastSeq": .number(Double(history.lastSequence)),
                    "messages": .array(messages),
                ]
            }
        }
    }

    /// Runs a handler and turns its result or error into a JSON response.
    func respond(_ body: () async throws -> JSONValue) async -> Response {
        do {
            return Self.json(try await body(), status: .ok)
        } catch let error as HTTPGatewayError {
            return Self.json(
                ["error": ["code": .string(error.error.code), "message": .string(error.error.message)]],
                status: error.status
            )
        } catch {
            return Self.json(["error": ["code": "internal", "message": .string("\(error)")]], status: .internalServerError)
        }
    }

    static func json(_ value: JSONValue, status: HTTPResponse.Status) -> Response {
        var bytes: [UInt8] = []
        value.appendJSON(to: &bytes)
        bytes.append(UInt8(ascii: "\n"))
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    /// The user the request's `Authorization` header authenticates (no header: the `none` credentials, which only
    /// the `open` authenticator accepts).
    func httpUser(_ request: Request) async throws -> AuthenticatedUser {
        var credentials = Credentials.none
        if let header = request.headers[.authorization] {
            if header.lowercased().hasPrefix("bearer ") {
                credentials = .token(String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces))
            } else if header.lowercased().hasPrefix("basic "),
                let decoded = Data(base64Encoded: String(header.dropFirst(6)).trimmingCharacters(in: .whitespaces)),
                let text = String(data: decoded, encoding: .utf8), let colon = text.firstIndex(of: ":")
            {
                credentials = .password(user: String(text[..<colon]), password: String(text[text.index(after: colon)...]))
            } else {
                throw HTTPGatewayError(.unauthorized, GatewayActionError("auth_failed", "unsupported Authorization scheme"))
            }
        }
        switch await self.authenticate(credentials) {
        case .accepted(let user): return user
        case .rejected(let reason): throw HTTPGatewayError(.unauthorized, GatewayActionError("auth_failed", reason))
        case .notMine:
            throw HTTPGatewayError(.unauthorized, GatewayActionError("auth_failed", "no authenticator accepted these credentials"))
        }
    }

    static func jsonBody(_ request: Request, context: some RequestContext) async throws -> [String: JSONValue] {
        let buffer = try await request.body.collect(upTo: GatewayProtocol.defaultMaxFrameBytes)
        guard case .object(let fields)? = try? JSONValue.parse(buffer.readableBytesView) else {
            throw HTTPGatewayError(.badRequest, GatewayActionError("bad_request", "the body must be a JSON object"))
        }
        return fields
    }

    static func subjectField(_ body: [String: JSONValue]) throws -> String {
        guard case .string(let subject)? = body["subject"], Subject.isValidForPublish(subject), !Subject.hasWildcard(subject)
        else {
            throw HTTPGatewayError(.badRequest, GatewayActionError("bad_request", "'subject' must be a subject without wildcards"))
        }
        return subject
    }
}

struct HTTPGatewayError: Error {
    var status: HTTPResponse.Status
    var error: GatewayActionError

    init(_ status: HTTPResponse.Status, _ error: GatewayActionError) {
        self.status = status
        self.error = error
    }
}
