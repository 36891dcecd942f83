import StorkCore
import Testing

@testable import StorkStreaming

/// A stream index with `count` messages on `subject` (sequences 1…count, timestamps 1000·sequence).
func makeIndex(_ count: Int, subject: (UInt64) -> String = { _ in "orders.new" }) -> StreamIndex {
    var index = StreamIndex()
    for sequence in 1...UInt64(max(count, 1)) where count > 0 {
        index.append(MessageIndexEntry(sequence: sequence, subject: subject(sequence), size: 10, timestamp: Int64(sequence) * 1000))
    }
    return index
}

func pullConsumer(_ configure: (inout ConsumerConfig) -> Void = { _ in }, index: StreamIndex) -> ConsumerStateMachine {
    var config = ConsumerConfig()
    config.durableName = "c"
    configure(&config)
    return ConsumerStateMachine(name: "c", config: config, created: "now", index: index, startTime: nil)
}

@Suite("Consumer state machine")
struct ConsumerStateMachineTests {
    @Test(
        "deliver policies choose the first message",
        arguments: [
            (DeliverPolicy.all, nil as UInt64?, nil as Int64?, 1 as UInt64?),
            (.last, nil, nil, 5),
            (.new, nil, nil, nil),
            (.byStartSequence, 3, nil, 3),
            (.byStartTime, nil, 4000, 4),
        ]
    )
    func deliverPolicies(policy: DeliverPolicy, startSequence: UInt64?, startTime: Int64?, first: UInt64?) {
        let index = makeIndex(5)
        var config = ConsumerConfig()
        config.durableName = "c"
        config.deliverPolicy = policy
        config.optStartSeq = startSequence
        var consumer = ConsumerStateMachine(name: "c", config: config, created: "", index: index, startTime: startTime)
        _ = consumer.pull(.init(replyTo: "inbox", batch: 1, expires: nil, noWait: false), index: index)
        #expect(consumer.nextDelivery(index: index, now: 0)?.streamSequence == first)
    }

    @Test("a pull request is served up to its batch, then nothing more without a new request")
    func pullBatches() {
        let index = makeIndex(5)
        var consumer = pullConsumer(index: index)
        #expect(consumer.nextDelivery(index: index, now: 0) == nil)  // nobody asked
        #expect(consumer.pull(.init(replyTo: "inbox", batch: 2, expires: nil, noWait: false), index: index) == nil)
        #expect(consumer.nextDelivery(index: index, now: 0)?.streamSequence == 1)
        #expect(consumer.nextDelivery(index: index, now: 0)?.streamSequence == 2)
        #expect(consumer.nextDelivery(index: index, now: 0) == nil)
        #expect(consumer.pending.count == 2)
    }

    @Test("no_wait on an empty consumer answers 404 at once; with expires it waits and times out with 408")
    func noWaitAndExpiry() {
        let index = makeIndex(0)
        var consumer = pullConsumer(index: index)
        let immediate = consumer.pull(.init(replyTo: "a", batch: 1, expires: nil, noWait: true), index: index)
        #expect(immediate?.code == 404)
        #expect(consumer.pull(.init(replyTo: "b", batch: 1, expires: 5_000, noWait: true), index: index) == nil)
        #expect(consumer.tick(now: 4_999, index: index).isEmpty)
        #expect(consumer.tick(now: 5_000, index: index).map(\.code) == [408])
        #expect(consumer.waiting.isEmpty)
    }

    @Test("the ack wait runs out: redelivered with a new consumer sequence and a higher delivery count")
    func ackWaitRedelivery() {
        let index = makeIndex(2)
        var consumer = pullConsumer({ $0.ackWait = 1_000 }, index: index)
        _ = consumer.pull(.init(replyTo: "inbox", batch: 10, expires: nil, noWait: false), index: index)
        let first = consumer.nextDelivery(index: index, now: 0)!
        let second = consumer.nextDelivery(index: index, now: 0)!
        let acked = consumer.acknowledge(.ack, streamSequence: second.streamSequence, now: 10)
        #expect(acked)
        #expect(consumer.ackFloorStream == 0)  // 1 still pending
        _ = consumer.tick(now: 999, index: index)
        #expect(consumer.nextDelivery(index: index, now: 999) == nil)
        _ = consumer.tick(now: 1_000, index: index)
        let again = consumer.nextDelivery(index: index, now: 1_000)!
        #expect(again.streamSequence == first.streamSequence)
        #expect(again.deliveries == 2)
        #expect(again.consumerSequence == 3)
        #expect(consumer.pendingRedelivered == 1)
        let ackedAgain = consumer.acknowledge(.ack, streamSequence: 1, now: 1_001)
        #expect(ackedAgain)
        #expect(consumer.ackFloorStream == 2)
        #expect(consumer.pendingRedelivered == 0)
    }

    @Test("acks in any order keep the ack floor at the lowest pending message, with gaps in the stream", arguments: [7, 8, 9])
    func ackFloorInAnyOrder(seed: UInt64) {
        // Every third message is on another subject and filtered out: the pending sequences have gaps.
        let index = makeIndex(3_000) { $0 % 3 == 0 ? "other" : "orders.new" }
        var consumer = pullConsumer({ $0.filterSubject = "orders.new"; $0.maxAckPending = 0 }, index: index)
        _ = consumer.pull(.init(replyTo: "inbox", batch: 10_000, expires: nil, noWait: false), index: index)
        var delivered: [UInt64] = []
        while let delivery = consumer.nextDelivery(index: index, now: 0) { delivered.append(delivery.streamSequence) }
        #expect(delivered.count == 2_000)
        var random = SeededRandom(seed: seed)
        // Mostly in order with local shuffles, and a long-unacked message now and then.
        for start in stride(from: 0, to: delivered.count, by: 50) {
            let end = min(start + 50, delivered.count)
            delivered[start..<end].shuffle(using: &random)
        }
        for (position, sequence) in delivered.enumerated() {
            let changed = consumer.acknowledge(.ack, streamSequence: sequence, now: 1)
            #expect(changed)
            if let lowest = consumer.pending.keys.min() {
                #expect(consumer.ackFloorStream == lowest - 1, "after \(position + 1) acks")
                #expect(consumer.ackFloorConsumer == consumer.pending[lowest]!.consumerSequence - 1)
            } else {
                // Everything acked: the floor is the last delivered message (3,000 is on the other subject).
                #expect(consumer.ackFloorStream == 2_999)
                #expect(consumer.ackFloorConsumer == 2_000)
            }
        }
    }

    @Test("after everything was acked, a delivery past a gap still moves the floor when it is acked")
    func ackFloorAfterGap() {
        // Filter orders.a over 1:a 2:a 3:b 4:a 5:a.
        let index = makeIndex(5) { $0 == 3 ? "orders.b" : "orders.a" }
        var consumer = pullConsumer({ $0.filterSubject = "orders.a" }, index: index)
        _ = consumer.pull(.init(replyTo: "inbox", batch: 10, expires: nil, noWait: false), index: index)
        #expect(consumer.nextDelivery(index: index, now: 0)?.streamSequence == 1)
        consumer.acknowledge(.ack, streamSequence: 1, now: 0)
        #expect(consumer.nextDelivery(index: index, now: 0)?.streamSequence == 2)
        consumer.acknowledge(.ack, streamSequence: 2, now: 0)
        #expect(consumer.ackFloorStream == 2)
        #expect(consumer.nextDelivery(index: index, now: 0)?.streamSequence == 4)
        consumer.acknowledge(.ack, streamSequence: 4, now: 0)
        #expect(consumer.ackFloorStream == 4)
        #expect(consumer.ackFloorConsumer == 3)
    }

    @Test("a NAK delay too large to add to the clock saturates instead of trapping")
    func hugeNakDelay() {
        let index = makeIndex(1)
        var consumer = pullConsumer(index: index)
        _ = consumer.pull(.init(replyTo: "inbox", batch: 1, expires: nil, noWait: false), index: index)
        _ = consumer.nextDelivery(index: index, now: 1_000)
        let changed = consumer.acknowledge(.nak(delay: .max), streamSequence: 1, now: 1_000)
        #expect(changed)
        #expect(consumer.tick(now: 2_000_000, index: index).isEmpty)
        #expect(consumer.nextDelivery(index: index, now: 2_000_000) == nil)
    }

    @Test("the ack wait of a message acked long ago does not hide a later one: redelivery is on time")
    func ackDeadlinesAfterAcks() {
        let index = makeIndex(3)
        var consumer = pullConsumer({ $0.ackWait = 1_000 }, index: index)
        _ = consumer.pull(.init(replyTo: "inbox", batch: 10, expires: nil, noWait: false), index: index)
        _ = consumer.nextDelivery(index: index, now: 0)  // 1, due at 1_000
        _ = consumer.nextDelivery(index: index, now: 500)  // 2, due at 1_500
        #expect(consumer.nextDeadline == 1_000)
        consumer.acknowledge(.ack, streamSequence: 1, now: 600)
        _ = consumer.tick(now: 1_000, index: index)  // nothing due; the earliest deadline is now 1_500
        #expect(consumer.nextDelivery(index: index, now: 1_000)?.streamSequence == 3)
        #expect(consumer.nextDeadline == 1_500)
        _ = consumer.tick(now: 1_499, index: index)
        #expect(consumer.nextDelivery(index: index, now: 1_499) == nil)
        _ = consumer.tick(now: 1_500, index: index)
        let again = consumer.nextDelivery(index: index, now: 1_500)
        #expect(again?.streamSequence == 2)
        #expect(again?.deliveries == 2)
    }

    @Test("NAK redelivers at once or after its delay; WPI restarts the ack wait; TERM never redelivers")
    func acknowledgementKinds() {
        let index = makeIndex(3)
        var consumer = pullConsumer({ $0.ackWait = 1_000 }, index: index)
        _ = consumer.pull(.init(replyTo: "inbox", batch: 10, expires: nil, noWait: false), index: index)
        for _ in 0..<3 { _ = consumer.nextDelivery(index: index, now: 0) }

        consumer.acknowledge(.nak(delay: 0), streamSequence: 1, now: 10)
        #expect(consumer.nextDelivery(index: index, now: 10)?.streamSequence == 1)

        consumer.acknowledge(.nak(delay: 500), streamSequence: 2, now: 10)
        _ = consumer.tick(now: 509, index: index)
        #expect(consumer.nextDelivery(index: index, now: 509) == nil)
        _ = consumer.tick(now: 510, index: index)
        #expect(consumer.nextDelivery(index: index, now: 510)?.streamSequence == 2)

        consumer.acknowledge(.inProgress, streamSequence: 3, now: 900)
        _ = consumer.tick(now: 1_500, index: index)  // would have expired at 1000 without WPI
        #expect(consumer.pending[3]?.deliveries == 1)
        consumer.acknowledge(.terminate, streamSequence: 3, now: 1_600)
        _ = consumer.tick(now: 10_000, index: index)
        #expect(consumer.pending[3] == nil)
    }

    @Test("max ack pending holds back new deliveries until acks arrive")
    func maxAckPending() {
        let index = makeIndex(5)
        var consumer = pullConsumer({ $0.maxAckPending = 2 }, index: index)
        _ = consumer.pull(.init(replyTo: "inbox", batch: 10, expires: nil, noWait: false), index: index)
        #expect(consumer.nextDelivery(index: index, now: 0) != nil)
        #expect(consumer.nextDelivery(index: index, now: 0) != nil)
        #expect(consumer.nextDelivery(index: index, now: 0) == nil)
        consumer.acknowledge(.ack, streamSequence: 1, now: 1)
        #expect(consumer.nextDelivery(index: index, now: 1)?.streamSequence == 3)
    }

    @Test("ack policy all acknowledges everything up to the acked message; none tracks nothing")
    func ackPolicies() {
        let index = makeIndex(3)
        var all = pullConsumer({ $0.ackPolicy = .all }, index: index)
        _ = all.pull(.init(replyTo: "inbox", batch: 3, expires: nil, noWait: false), index: index)
        for _ in 0..<3 { _ = all.nextDelivery(index: index, now: 0) }
        all.acknowledge(.ack, streamSequence: 2, now: 1)
        #expect(all.pending.keys.sorted() == [3])
        #expect(all.ackFloorStream == 2)

        var none = pullConsumer({ $0.ackPolicy = .none }, index: index)
        _ = none.pull(.init(replyTo: "inbox", batch: 3, expires: nil, noWait: false), index: index)
        for _ in 0..<3 { _ = none.nextDelivery(index: index, now: 0) }
        #expect(none.pending.isEmpty)
        #expect(none.ackFloorStream == 3)
    }

    @Test("filters skip other subjects, and a filter covering the whole stream counts without matching")
    func filters() {
        let index = makeIndex(6) { $0 % 2 == 0 ? "orders.paid" : "orders.new" }
        var consumer = pullConsumer({ $0.filterSubject = "orders.paid" }, index: index)
        consumer.streamSubjects(["orders.>"])
        #expect(consumer.unprocessed(index: index) == 3)
        _ = consumer.pull(.init(replyTo: "inbox", batch: 10, expires: nil, noWait: false), index: index)
        var seen: [UInt64] = []
        while let delivery = consumer.nextDelivery(index: index, now: 0) { seen.append(delivery.streamSequence) }
        #expect(seen == [2, 4, 6])

        var everything = pullConsumer({ $0.filterSubject = "orders.>" }, index: index)
        everything.streamSubjects(["orders.>"])
        #expect(everything.filters.isEmpty)
        #expect(everything.unprocessed(index: index) == 6)
    }

    @Test("a snapshot restores position and ack floor; what was in flight is due again at once")
    func snapshotRestore() {
        let index = makeIndex(4)
        var consumer = pullConsumer(index: index)
        _ = consumer.pull(.init(replyTo: "inbox", batch: 3, expires: nil, noWait: false), index: index)
        for _ in 0..<3 { _ = consumer.nextDelivery(index: index, now: 0) }
        consumer.acknowledge(.ack, streamSequence: 1, now: 1)
        var restored = ConsumerStateMachine(name: "c", snapshot: consumer.snapshot)
        #expect(restored.ackFloorStream == 1)
        _ = restored.pull(.init(replyTo: "inbox", batch: 10, expires: nil, noWait: false), index: index)
        var seen: [UInt64] = []
        while let delivery = restored.nextDelivery(index: index, now: 5) { seen.append(delivery.streamSequence) }
        #expect(seen == [2, 3, 4])
    }

    @Test("idle heartbeats: a quiet push consumer and a waiting pull request get 100 with the last sequences")
    func heartbeats() {
        let index = makeIndex(1)
        var config = ConsumerConfig()
        config.durableName = "p"
        config.deliverSubject = "deliver.p"
        config.idleHeartbeat = 1_000
        var push = ConsumerStateMachine(name: "p", config: config, created: "", index: index, startTime: nil)
        push.pushActive = true
        #expect(push.nextDelivery(index: index, now: 100)?.streamSequence == 1)
        #expect(push.tick(now: 1_099, index: index).isEmpty)
        let beat = push.tick(now: 1_100, index: index)
        #expect(beat.map(\.code) == [100])
        #expect(beat.first?.replyTo == "deliver.p")
        #expect(beat.first?.lastStreamSequence == 1 && beat.first?.lastConsumerSequence == 1)
        #expect(push.tick(now: 1_500, index: index).isEmpty)

        var pull = pullConsumer(index: makeIndex(0))
        var request = ConsumerStateMachine.PullRequest(replyTo: "inbox", batch: 1, expires: 10_000, noWait: false)
        request.heartbeat = 2_000
        #expect(pull.pull(request, index: makeIndex(0)) == nil)
        #expect(pull.tick(now: 1_999, index: makeIndex(0)).isEmpty)
        #expect(pull.tick(now: 2_000, index: makeIndex(0)).map(\.code) == [100])
        #expect(pull.tick(now: 10_000, index: makeIndex(0)).map(\.code) == [408])
    }

    @Test("an ephemeral consumer unused past its threshold is inactive; a durable never")
    func inactivity() {
        let index = makeIndex(1)
        var ephemeral = ConsumerStateMachine(
            name: "e",
            config: ConsumerConfig(),
            created: "",
            index: index,
            startTime: nil,
            now: 1_000
        )
        #expect(!ephemeral.isInactive(now: 1_000 + 5_000_000_000))
        #expect(ephemeral.isInactive(now: 1_001 + 5_000_000_000))
        ephemeral.touch(6_000_000_000)
        #expect(!ephemeral.isInactive(now: 6_000_000_000 + 1))
        let durable = pullConsumer(index: index)
        #expect(!durable.isInactive(now: Int64.max / 2))
    }
}

@Suite("Stream index and limits")
struct StreamIndexTests {
    @Test("max_msgs, max_bytes and max_age drop the oldest; sequences never go back")
    func limits() {
        var config = StreamConfig(name: "S", subjects: ["s.>"])
        config.maxMsgs = 3
        var index = makeIndex(5)
        #expect(index.evict(config: config, now: 0) == [1, 2])
        #expect(index.firstSequence == 3)
        #expect(index.lastSequence == 5)

        config.maxMsgs = -1
        config.maxBytes = 15
        #expect(index.evict(config: config, now: 0) == [3, 4])

        config.maxBytes = -1
        config.maxAge = 1_000
        index.append(MessageIndexEntry(sequence: 6, subject: "s.x", size: 10, timestamp: 10_000))
        #expect(index.evict(config: config, now: 10_500) == [5])
        #expect(index.entries.map(\.sequence) == [6])
    }

    @Test("discard new refuses instead of dropping")
    func discardNew() {
        var config = StreamConfig(name: "S")
        config.discard = .new
        config.maxMsgs = 2
        let index = makeIndex(2)
        #expect(index.refusal(for: 10, config: config) == .maximumMessagesExceeded)
        config.maxMsgs = -1
        config.maxBytes = 25
        #expect(index.refusal(for: 10, config: config) == .maximumBytesExceeded)
        #expect(index.refusal(for: 5, config: config) == nil)
    }

    @Test("purge keeps the last sequence and an empty stream starts after it")
    func purge() {
        var index = makeIndex(4)
        #expect(index.purge() == 4)
        #expect(index.count == 0)
        #expect(index.firstSequence == 5)
        #expect(index.lastSequence == 4)
        index.append(MessageIndexEntry(sequence: 5, subject: "x", size: 1, timestamp: 0))
        #expect(index.firstSequence == 5)
    }

    @Test("the duplicate window remembers ids for its length only")
    func duplicates() {
        var window = DuplicateWindow()
        window.record("a", sequence: 7, timestamp: 1_000)
        #expect(window.sequence(of: "a", now: 1_500, window: 1_000) == 7)
        #expect(window.sequence(of: "a", now: 2_001, window: 1_000) == nil)
    }
}
