import NIOCore
import Testing

@testable import StorkNATS

/// A readable form of an operation, for comparisons.
func describe(_ operation: NATSClientOperation) -> String {
    switch operation {
    case .connect(let json): return "CONNECT \(String(buffer: json))"
    case .publish(let message):
        let headers = message.headers.map { "[\(String(buffer: $0.encoded))]" } ?? ""
        return "PUB \(message.subject) \(message.replyTo ?? "-") \(headers)\(String(buffer: message.payload))"
    case .subscribe(let subject, let queue, let sid): return "SUB \(subject) \(queue ?? "-") \(sid)"
    case .unsubscribe(let sid, let max): return "UNSUB \(sid) \(max.map(String.init) ?? "-")"
    case .ping: return "PING"
    case .pong: return "PONG"
    }
}

/// Parses all of `input`, fed in pieces of `chunk` bytes (0: at once). Returns the operations and the error, if any.
func parseAll(
    _ input: [UInt8],
    chunk: Int = 0,
    parser: NATSClientParser = NATSClientParser()
) -> (operations: [String], error: NATSProtocolError?) {
    var parser = parser
    var buffer = ByteBuffer()
    var operations: [String] = []
    var offset = 0
    repeat {
        let end = chunk == 0 ? input.count : min(input.count, offset + chunk)
        buffer.writeBytes(input[offset..<end])
        offset = end
        do {
            while let operation = try parser.next(&buffer) { operations.append(describe(operation)) }
        } catch {
            return (operations, error)
        }
    } while offset < input.count
    return (operations, nil)
}

@Suite("NATS client protocol parser")
struct NATSParserTests {
    static let conversation = Array(
        ("CONNECT {\"verbose\":false,\"name\":\"x\"}\r\n" + "PUB foo.bar 5\r\nhello\r\n" + "PUB foo.bar  2\r\nhi\r\n"
            + "pub foo reply.to 0\r\n\r\n" + "HPUB foo.bar  24 26\r\nNATS/1.0\r\nA: 1\r\nB: 2\r\n\r\nok\r\n"
            + "HPUB foo INBOX.1 12 12\r\nNATS/1.0\r\n\r\n\r\n" + "SUB foo.*  1\r\n" + "SUB foo.bar workers 2\r\n"
            + "sub\tfoo.>\t\t3\r\n" + "UNSUB 1 \r\n" + "UNSUB 2 5\r\n" + "PING\r\n" + "pong\r\n" + "PING\n")
            .utf8
    )

    static let expected = [
        "CONNECT {\"verbose\":false,\"name\":\"x\"}",
        "PUB foo.bar - hello",
        "PUB foo.bar - hi",
        "PUB foo reply.to ",
        "PUB foo.bar - [NATS/1.0\r\nA: 1\r\nB: 2\r\n\r\n]ok",
        "PUB foo INBOX.1 [NATS/1.0\r\n\r\n]",
        "SUB foo.* - 1",
        "SUB foo.bar workers 2",
        "SUB foo.> - 3",
        "UNSUB 1 -",
        "UNSUB 2 5",
        "PING",
        "PONG",
        "PING",
    ]

    @Test("what real clients send, with the tolerance they need")
    func conversationAtOnce() {
        let result = parseAll(Self.conversation)
        #expect(result.error == nil)
        #expect(result.operations == Self.expected)
    }

    @Test("the same operations however the bytes are split", arguments: [1, 2, 3, 7, 16, 64])
    func conversationInPieces(chunk: Int) {
        let result = parseAll(Self.conversation, chunk: chunk)
        #expect(result.error == nil)
        #expect(result.operations == Self.expected)
    }

    @Test(
        "bad input is a protocol error with NATS's text",
        arguments: [
            ("FOO bar\r\n", "Unknown Protocol Operation"),
            ("+OK\r\n", "Unknown Protocol Operation"),
            ("INFO {}\r\n", "Unknown Protocol Operation"),
            ("PUB foo\r\n", "Parser Error"),
            ("PUB foo x\r\n", "Parser Error"),
            ("PUB foo 3\r\nabcd\r\n", "Parser Error"),
            ("PUB a b c 3\r\n", "Parser Error"),
            ("HPUB foo 5 3\r\n", "Parser Error"),
            ("SUB foo\r\n", "Parser Error"),
            ("SUB a b c d\r\n", "Parser Error"),
            ("UNSUB\r\n", "Parser Error"),
            ("UNSUB 1 x\r\n", "Parser Error"),
            ("PUB foo 2000000\r\n", "Maximum Payload Violation"),
            ("\r\n", "Unknown Protocol Operation"),
            ("PUB foo 99999999999999999999\r\n", "Parser Error"),
        ]
    )
    func errors(input: String, message: String) {
        let result = parseAll(Array(input.utf8))
        #expect(result.error?.message == message, "\(input.debugDescription)")
        #expect(result.error?.closesConnection == true)
    }

    @Test("a control line longer than the limit is refused, with or without its line end")
    func controlLineLimit() {
        let parser = NATSClientParser(maxControlLine: 64, maxPayload: 1024)
        let long = "SUB " + String(repeating: "a", count: 100)
        #expect(parseAll(Array(long.utf8), parser: parser).error == .maxControlLineExceeded)
        #expect(parseAll(Array((long + " 1\r\n").utf8), parser: parser).error == .maxControlLineExceeded)
        #expect(parseAll(Array("SUB a 1\r\n".utf8), parser: parser).error == nil)
    }

    @Test("the server-side parser reads MSG, HMSG, INFO, +OK and -ERR")
    func serverParser() throws {
        let input = "INFO {\"server_id\":\"x\"}\r\nMSG foo 1 5\r\nhello\r\nMSG foo 1 reply 0\r\n\r\n"
            + "HMSG _INBOX.a 2 16 16\r\nNATS/1.0 503\r\n\r\n\r\n+OK\r\n-ERR 'Slow Consumer'\r\nPING\r\n"
        var parser = NATSServerParser()
        var buffer = ByteBuffer(string: input)
        var seen: [String] = []
        while let operation = try parser.next(&buffer) {
            switch operation {
            case .info(let json): seen.append("INFO \(String(buffer: json).trimmingSpaces())")
            case .message(let message, let sid):
                seen.append(
                    "MSG \(message.subject) \(sid) \(message.replyTo ?? "-") \(message.headers?.encodedSize ?? 0) \(String(buffer: message.payload))"
                )
            case .ping: seen.append("PING")
            case .pong: seen.append("PONG")
            case .ok: seen.append("+OK")
            case .error(let text): seen.append("-ERR \(text)")
            }
        }
        #expect(
            seen == [
                "INFO {\"server_id\":\"x\"}", "MSG foo 1 - 0 hello", "MSG foo 1 reply 0 ", "MSG _INBOX.a 2 - 16 ", "+OK",
                "-ERR Slow Consumer", "PING",
            ]
        )
    }

    @Test("MSG and HMSG are written as clients parse them")
    func encoding() {
        var buffer = ByteBuffer()
        buffer.writeNATSMessage(
            subject: "foo.bar",
            sid: "12",
            replyTo: nil,
            headers: nil,
            payload: ByteBuffer(string: "hello")
        )
        buffer.writeNATSMessage(
            subject: "foo",
            sid: "1",
            replyTo: "_INBOX.x",
            headers: ByteBuffer(string: "NATS/1.0\r\nA: 1\r\n\r\n"),
            payload: ByteBuffer(string: "ok")
        )
        buffer.writeDecimal(1_234_567_890)
        #expect(
            String(buffer: buffer)
                == "MSG foo.bar 12 5\r\nhello\r\nHMSG foo 1 _INBOX.x 18 20\r\nNATS/1.0\r\nA: 1\r\n\r\nok\r\n1234567890"
        )
    }
}
