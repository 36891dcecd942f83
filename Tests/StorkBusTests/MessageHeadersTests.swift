import NIOCore
import StorkBus
import Testing

@Suite("MessageHeaders: fields, the block they came from, and bad blocks")
struct MessageHeadersTests {
    @Test("a block read from a client is kept byte for byte until a field changes; then it is encoded from the fields")
    func blockKeptUntilChanged() {
        let raw = "NATS/1.0\r\nX-Multi: a\r\nX-Multi:  b \r\nOther:c\r\n\r\n"
        var headers = MessageHeaders(block: ByteBuffer(string: raw))
        #expect(String(buffer: headers.encoded) == raw)
        #expect(headers.fields.map(\.name) == ["X-Multi", "X-Multi", "Other"])
        #expect(headers.values("x-multi") == ["a", "b"])
        #expect(headers["OTHER"] == "c")
        let copy = headers
        headers.fields.append(("New", "1"))
        #expect(String(buffer: headers.encoded) == "NATS/1.0\r\nX-Multi: a\r\nX-Multi: b\r\nOther: c\r\nNew: 1\r\n\r\n")
        #expect(String(buffer: copy.encoded) == raw, "a copy keeps its own fields and block")
        #expect(copy != headers)
    }

    @Test("a status line is parsed into status and description, and encoded back")
    func status() {
        let headers = MessageHeaders(block: ByteBuffer(string: "NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 3\r\n\r\n"))
        #expect(headers.status == 408)
        #expect(headers.statusDescription == "Request Timeout")
        #expect(headers["nats-pending-messages"] == "3")
        var made = MessageHeaders(status: 503)
        #expect(String(buffer: made.encoded) == "NATS/1.0 503\r\n\r\n")
        made.statusDescription = "No Responders"
        #expect(String(buffer: made.encoded) == "NATS/1.0 503 No Responders\r\n\r\n")
        #expect(MessageHeaders.parse(ByteBuffer(string: "HTTP/1.1 200\r\n\r\n")) == nil)
    }

    @Test("random bytes never crash the lenient reader, and what it keeps is what it read", arguments: [1, 2, 3, 4])
    func fuzz(seed: UInt64) {
        var state = seed &* 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        let alphabet = Array("NATS/1.0 :\r\n\tab\u{00e9}".utf8) + [0, 0xff, 0xc3]
        for _ in 0..<2000 {
            let count = Int(next() % 64)
            let bytes = (0..<count).map { _ in alphabet[Int(next() % UInt64(alphabet.count))] }
            let buffer = ByteBuffer(bytes: bytes)
            let headers = MessageHeaders(block: buffer)
            #expect(headers.encoded == buffer)
            _ = headers.fields.count
            _ = MessageHeaders.parse(buffer)
        }
    }
}
