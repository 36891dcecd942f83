import NIOCore
import Testing

@testable import StorkBus

@Suite("JetStream ack subjects and bodies")
struct JetStreamAckTests {
    @Test(
        "ack subjects: the classic and the domain forms name stream, consumer and stream sequence",
        arguments: [
            ("$JS.ACK.ORDERS.worker.1.42.7.1700000000.3", "ORDERS", "worker", 42 as UInt64?),
            ("$JS.ACK.hub.ACCHASH.ORDERS.worker.2.43.8.1700000000.0", "ORDERS", "worker", 43),
            ("$JS.ACK.hub.ACCHASH.ORDERS.worker.2.44.8.1700000000.0.token", "ORDERS", "worker", 44),
            ("$JS.ACK.ORDERS.worker.1.x.7.1700000000.3", "", "", nil),
            ("$JS.ACK.ORDERS.worker.1.42", "", "", nil),
            ("$JS.ACK.ORDERS.worker.1..7.1700000000.3", "", "", nil),
        ]
    )
    func ackSubjects(subject: String, stream: String, consumer: String, sequence: UInt64?) {
        let target = JetStream.ackTarget(subject)
        #expect(target?.sequence == sequence)
        if sequence != nil {
            #expect(target?.stream == stream)
            #expect(target?.consumer == consumer)
        }
    }

    @Test("ack bodies: ack, NAK with and without delay, WPI, TERM; anything else is ignored")
    func ackBodies() {
        func kind(_ body: String) -> String {
            switch JetStream.acknowledgement(ByteBuffer(string: body)) {
            case .ack: "ack"
            case .nak(let delay): "nak \(delay)"
            case .inProgress: "wpi"
            case .terminate: "term"
            case nil: "none"
            }
        }
        #expect(kind("") == "ack")
        #expect(kind("+ACK") == "ack")
        #expect(kind(" +NXT {\"batch\":1}") == "ack")
        #expect(kind("-NAK") == "nak 0")
        #expect(kind("-NAK {\"delay\": 2000000000}") == "nak 2000000000")
        #expect(kind("+WPI") == "wpi")
        #expect(kind("+TERM reason") == "term")
        #expect(kind("+AC") == "none")
        #expect(kind("hello") == "none")
    }
}

@Suite("NATS publish before CONNECT")
struct NATSAuthOrderTests {
    /// With authentication required, a PUB before CONNECT is refused like any other operation: nothing is delivered.
}

@Suite("JetStream API subjects across the cluster")
struct JetStreamClusterSubjectTests {
    @Test(
        "the stream an API subject names, for every request that names one",
        arguments: [
            ("$JS.API.STREAM.INFO.ORDERS", "ORDERS" as String?),
            ("$JS.API.STREAM.CREATE.ORDERS", "ORDERS"),
            ("$JS.API.STREAM.MSG.GET.ORDERS", "ORDERS"),
            ("$JS.API.CONSUMER.CREATE.ORDERS", "ORDERS"),
            ("$JS.API.CONSUMER.CREATE.ORDERS.worker.orders.new", "ORDERS"),
            ("$JS.API.CONSUMER.DURABLE.CREATE.ORDERS.worker", "ORDERS"),
            ("$JS.API.CONSUMER.INFO.ORDERS.worker", "ORDERS"),
            ("$JS.API.CONSUMER.NAMES.ORDERS", "ORDERS"),
            ("$JS.API.CONSUMER.MSG.NEXT.ORDERS.worker", "ORDERS"),
            ("$JS.API.INFO", nil),
            ("$JS.API.STREAM.NAMES", nil),
            ("$JS.API.STREAM.LIST", nil),
            ("$JS.API.STREAM.INFO", nil),
            ("$JS.ACK.ORDERS.worker.1.2.3.4.5", nil),
        ]
    )
    func streamNames(subject: String, stream: String?) {
        #expect(JetStream.streamName(inAPISubject: subject) == stream)
    }

    @Test("every API subject a stream's node subscribes to names that stream, and only it")
    func subscribedSubjectsNameTheStream() {
        for pattern in JetStream.apiSubjects(stream: "ORDERS") {
            let subject = pattern.replacingOccurrences(of: ".*", with: ".worker").replacingOccurrences(of: ".>", with: ".worker.x")
            #expect(JetStream.streamName(inAPISubject: subject) == "ORDERS", "\(subject)")
        }
    }
}
