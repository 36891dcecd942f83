import StorkCore
import Testing

@testable import StorkStreaming

@Suite("Push consumers' flow control, and options Stork refuses")
struct FlowControlAndOptionsTests {
    func pushConsumer(flowControl: Bool, messages: Int) -> (ConsumerStateMachine, StreamIndex) {
        let index = makeIndex(messages)
        var config = ConsumerConfig()
        config.durableName = "p"
        config.deliverSubject = "deliver.p"
        config.ackPolicy = .none
        config.flowControl = flowControl
        var consumer = ConsumerStateMachine(name: "p", config: config, created: "", index: index, startTime: nil)
        consumer.pushActive = true
        return (consumer, index)
    }

    func drain(_ consumer: inout ConsumerStateMachine, _ index: StreamIndex) -> [UInt64] {
        var delivered: [UInt64] = []
        while let delivery = consumer.nextDelivery(index: index, now: 0) { delivered.append(delivery.streamSequence) }
        return delivered
    }

    @Test("deliveries stop after the interval until the client answers the request that follows them")
    func holdsUntilAnswered() {
        let interval = ConsumerStateMachine.flowControlInterval
        var (consumer, index) = self.pushConsumer(flowControl: true, messages: interval + 10)
        let early = consumer.flowControlRequest(answerTo: "$JS.FC.S.p.1", now: 0)
        #expect(early == nil, "nothing delivered yet")
        #expect(self.drain(&consumer, index) == Array(1...UInt64(interval)))
        let request = consumer.flowControlRequest(answerTo: "$JS.FC.S.p.1", now: 0)
        #expect(request?.code == 100 && request?.description == "FlowControl Request")
        #expect(request?.replyTo == "deliver.p" && request?.answerTo == "$JS.FC.S.p.1")
        let held = consumer.nextDelivery(index: index, now: 0)
        #expect(held == nil, "held while the request is unanswered")
        let second = consumer.flowControlRequest(answerTo: "$JS.FC.S.p.2", now: 0)
        #expect(second == nil, "one request at a time")
        let other = consumer.flowControlAnswered("$JS.FC.S.p.other")
        #expect(!other, "an answer to another request changes nothing")
        let stillHeld = consumer.nextDelivery(index: index, now: 0)
        #expect(stillHeld == nil)
        let answered = consumer.flowControlAnswered("$JS.FC.S.p.1")
        #expect(answered)
        #expect(self.drain(&consumer, index) == Array(UInt64(interval + 1)...UInt64(interval + 10)))
    }

    @Test("an unanswered request is given up after its timeout, so a new client is not held forever")
    func timeout() {
        let interval = ConsumerStateMachine.flowControlInterval
        var (consumer, index) = self.pushConsumer(flowControl: true, messages: interval + 1)
        _ = self.drain(&consumer, index)
        _ = consumer.flowControlRequest(answerTo: "$JS.FC.S.p.1", now: 1_000)
        #expect(consumer.sendsHeartbeats, "the driver keeps ticking while a request waits")
        _ = consumer.tick(now: 1_000 + ConsumerStateMachine.flowControlTimeout - 1, index: index)
        let before = consumer.nextDelivery(index: index, now: 0)
        #expect(before == nil)
        _ = consumer.tick(now: 1_000 + ConsumerStateMachine.flowControlTimeout, index: index)
        let after = consumer.nextDelivery(index: index, now: 0)
        #expect(after?.streamSequence == UInt64(interval + 1))
    }

    @Test("without flow control nothing is held and no request is made")
    func uncontrolled() {
        let interval = ConsumerStateMachine.flowControlInterval
        var (consumer, index) = self.pushConsumer(flowControl: false, messages: interval + 5)
        #expect(self.drain(&consumer, index).count == interval + 5)
        let request = consumer.flowControlRequest(answerTo: "$JS.FC.S.p.1", now: 0)
        #expect(request == nil)
    }

    @Test("options at their defaults are accepted; set ones Stork does not implement are refused by name")
    func refusals() throws {
        func object(_ json: String) throws -> [String: JSONValue] {
            guard case .object(let fields) = try JSONValue.parse(Array(json.utf8)) else { throw JSONValueError() }
            return fields
        }
        let defaults = try object(
            #"{"name":"S","retention":"limits","num_replicas":1,"allow_direct":false,"mirror":null,"sources":[],"placement":{"cluster":"","tags":[]},"first_seq":0}"#
        )
        #expect(JetStreamOptions.streamRefusal(defaults) == nil)
        #expect(JetStreamOptions.streamRefusal(try object(#"{"num_replicas":0}"#)) == nil)
        #expect(JetStreamOptions.streamRefusal(try object(#"{"num_replicas":3}"#))?.contains("num_replicas") == true)
        #expect(JetStreamOptions.streamRefusal(try object(#"{"retention":"workqueue"}"#))?.contains("retention") == true)
        #expect(JetStreamOptions.streamRefusal(try object(#"{"mirror":{"name":"O"}}"#))?.contains("\"mirror\"") == true)
        #expect(JetStreamOptions.streamRefusal(try object(#"{"placement":{"tags":["ssd"]}}"#))?.contains("placement") == true)
        #expect(JetStreamOptions.consumerRefusal(try object(#"{"replay_policy":"instant","flow_control":true}"#)) == nil)
        #expect(JetStreamOptions.consumerRefusal(try object(#"{"replay_policy":"original"}"#))?.contains("replay_policy") == true)
        #expect(JetStreamOptions.consumerRefusal(try object(#"{"mem_storage":true}"#))?.contains("mem_storage") == true)
        #expect(JetStreamOptions.consumerRefusal(try object(#"{"sample_freq":"100%"}"#))?.contains("sample_freq") == true)
    }
}

struct JSONValueError: Error {}
