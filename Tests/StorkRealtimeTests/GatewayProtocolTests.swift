import Foundation
import StorkCore
import Testing

@testable import StorkRealtime

@Suite("Gateway protocol v1")
struct GatewayProtocolTests {
    func decode(_ text: String) throws(GatewayProtocolError) -> GatewayClientFrame {
        try GatewayClientFrame.decode(Array(text.utf8))
    }

    @Test("every client message decodes with its id")
    func decodesEachType() throws {
        #expect(try decode(#"{"type":"auth","v":1,"id":1,"token":"t"}"#) == GatewayClientFrame(id: 1, message: .auth(credentials: .token("t"), resume: nil)))
        #expect(try decode(#"{"type":"auth","user":"a","password":"p","resume":{"session":"s1","lastSeq":7}}"#).message
            == .auth(credentials: .password(user: "a", password: "p"), resume: GatewayResume(session: "s1", lastSequence: 7)))
        #expect(try decode(#"{"type":"auth","user":"a"}"#).message == .auth(credentials: .password(user: "a", password: ""), resume: nil))
        #expect(try decode(#"{"type":"auth"}"#).message == .auth(credentials: .none, resume: nil))
        #expect(try decode(#"{"type":"subscribe","id":"x","subject":"a.*.>","from":{"seq":5}}"#)
            == GatewayClientFrame(id: "x", message: .subscribe(subject: "a.*.>", from: .sequence(5))))
        #expect(try decode(#"{"type":"subscribe","subject":"a","from":{"last":3}}"#).message == .subscribe(subject: "a", from: .last(3)))
        #expect(try decode(#"{"type":"subscribe","subject":"a","from":{"time":1700000000000}}"#).message
            == .subscribe(subject: "a", from: .time(milliseconds: 1_700_000_000_000)))
        #expect(try decode(#"{"type":"unsubscribe","subject":"a"}"#).message == .unsubscribe(subject: "a"))
        #expect(try decode(#"{"type":"publish","subject":"a.b","data":{"k":[1]}}"#).message == .publish(subject: "a.b", data: ["k": [1]]))
        #expect(try decode(#"{"type":"publish","subject":"a.b"}"#).message == .publish(subject: "a.b", data: .null))
        #expect(try decode(#"{"type":"request","subject":"a","data":1,"timeout":250}"#).message
            == .request(subject: "a", data: 1, timeoutMilliseconds: 250))
        #expect(try decode(#"{"type":"respond","to":"_GW.n.1","data":2}"#).message == .respond(to: "_GW.n.1", data: 2))
        #expect(try decode(#"{"type":"presence","subject":"room"}"#).message == .presence(subject: "room"))
        #expect(try decode(#"{"type":"runner.open","runner":"greeting"}"#).message == .runnerOpen(runner: "greeting"))
        #expect(try decode(#"{"type":"runner.run","instance":"i","inputs":{"name":"x"}}"#).message
            == .runnerRun(instance: "i", inputs: ["name": "x"]))
        #expect(try decode(#"{"type":"runner.pause","instance":"i"}"#).message == .runnerPause(instance: "i"))
        #expect(try decode(#"{"type":"runner.resume","instance":"i"}"#).message == .runnerResume(instance: "i"))
        #expect(try decode(#"{"type":"runner.close","instance":"i"}"#).message == .runnerClose(instance: "i"))
        #expect(try decode(#"{"type":"ping"}"#).message == .ping)
    }

    @Test("bad frames are refused with a stable code, keeping the id when it could be read")
    func refusals() {
        let cases: [(String, GatewayProtocolError.Code)] = [
            ("", .badFrame), ("nope", .badFrame), ("[]", .badFrame), ("42", .badFrame), (#"{"id":1}"#, .badFrame),
            (#"{"type":"warp"}"#, .unknownType), (#"{"type":"auth","v":2}"#, .unsupportedVersion),
            (#"{"type":"subscribe"}"#, .badField), (#"{"type":"subscribe","subject":""}"#, .badField),
            (#"{"type":"subscribe","subject":"a..b"}"#, .badField), (#"{"type":"subscribe","subject":"a.>.b"}"#, .badField),
            (#"{"type":"subscribe","subject":"a.b*"}"#, .badField), (#"{"type":"subscribe","subject":"a b"}"#, .badField),
            (#"{"type":"subscribe","subject":"a","from":{"seq":-1}}"#, .badField),
            (#"{"type":"subscribe","subject":"a","from":{"last":0}}"#, .badField),
            (#"{"type":"subscribe","subject":"a","from":{"when":1}}"#, .badField),
            (#"{"type":"request","subject":"a","timeout":0}"#, .badField),
            (#"{"type":"runner.run","instance":"i","inputs":[1]}"#, .badField),
            (#"{"type":"ping","id":[1]}"#, .badField), (#"{"type":"auth","token":""}"#, .badField),
            (#"{"type":"auth","user":"a","password":5}"#, .badField),
            (#"{"type":"auth","resume":{"session":"s"}}"#, .badField),
        ]
        for (text, code) in cases {
            #expect(throws: GatewayProtocolError.self, "\(text)") { try decode(text) }
            do {
                _ = try decode(text)
            } catch {
                #expect(error.code == code, "\(text): \(error)")
            }
        }
        do {
            _ = try decode(#"{"type":"warp","id":"q"}"#)
        } catch {
            #expect(error.id == "q")
        }
        #expect(throws: GatewayProtocolError.self) {
            try GatewayClientFrame.decode(Array(repeating: UInt8(ascii: " "), count: 100), maxBytes: 10)
        }
    }

    @Test("server frames are valid JSON with escaped strings; payloads are embedded, text marked, binary in base64")
    func serverFrames() throws {
        let user = AuthenticatedUser(id: "a\"b", roles: ["r"])
        let welcome = try JSONValue.parse(GatewayServerFrame.welcome(id: 1, session: "s", user: user, recovered: true).encoded)
        #expect(welcome == ["type": "welcome", "id": 1, "v": 1, "session": "s", "user": ["id": "a\"b", "roles": ["r"]], "recovered": true])
        let json = GatewayServerFrame.message(seq: 3, subject: "x.y", data: GatewayPayload(bytes: Array(#"{"a":[1,"\n"]}"#.utf8)), replyTo: "r", stream: "S", streamSeq: 9)
        #expect(try JSONValue.parse(json.encoded) == ["type": "message", "seq": 3, "subject": "x.y", "data": ["a": [1, "\n"]], "replyTo": "r", "stream": "S", "streamSeq": 9])
        let text = GatewayServerFrame.message(seq: 1, subject: "x", data: GatewayPayload(bytes: Array("say \"hi\"\n".utf8)), replyTo: nil, stream: nil, streamSeq: nil)
        #expect(try JSONValue.parse(text.encoded) == ["type": "message", "seq": 1, "subject": "x", "data": "say \"hi\"\n", "encoding": "text"])
        let binary = GatewayServerFrame.message(seq: 1, subject: "x", data: GatewayPayload(bytes: [0, 0xff]), replyTo: nil, stream: nil, streamSeq: nil)
        #expect(try JSONValue.parse(binary.encoded)["encoding"] == "base64")
        let error = GatewayServerFrame.error(id: nil, code: "c", message: "line\u{01}")
        #expect(try JSONValue.parse(error.encoded) == ["type": "error", "code": "c", "message": "line\u{01}"])
        let ok = GatewayServerFrame.ok(id: "i", fields: ["type": "spoof", "n": 2])
        #expect(try JSONValue.parse(ok.encoded) == ["type": "ok", "id": "i", "n": 2])
    }

    @Test("fuzz: mutated and random frames never trap, and every refusal carries a code")
    func fuzz() {
        var random = SeededRandom(seed: 7)
        let seeds = [
            #"{"type":"auth","v":1,"id":1,"user":"a","password":"p","resume":{"session":"s","lastSeq":3}}"#,
            #"{"type":"subscribe","id":2,"subject":"a.*.>","from":{"seq":5}}"#,
            #"{"type":"request","subject":"a","data":{"x":[1,2,{"y":null}]},"timeout":250}"#,
            #"{"type":"runner.run","instance":"i","inputs":{"n":"x"}}"#,
        ].map { Array($0.utf8) }
        var decoded = 0
        for round in 0..<20_000 {
            var bytes = seeds[round % seeds.count]
            let mutations = 1 + Int(random.next() % 4)
            for _ in 0..<mutations {
                guard !bytes.isEmpty else { break }
                let position = Int(random.next() % UInt64(bytes.count))
                switch random.next() % 4 {
                case 0: bytes[position] = UInt8(truncatingIfNeeded: random.next())
                case 1: bytes.remove(at: position)
                case 2: bytes.insert(UInt8(truncatingIfNeeded: random.next()), at: position)
                default: bytes = Array(bytes[..<position])
                }
            }
            do {
                _ = try GatewayClientFrame.decode(bytes)
                decoded += 1
            } catch {
                #expect(!error.message.isEmpty)
            }
        }
        #expect(decoded > 0)
    }
}
