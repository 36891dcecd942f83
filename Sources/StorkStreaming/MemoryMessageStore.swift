import DequeModule
import StorkCore
import Synchronization

// MARK: - MemoryMessageStore

/// A message store in memory: fast, and empty after a restart. Also the reference the other stores are tested
/// against.
public final class MemoryMessageStore: MessageStore {
    private struct State {
        /// Present messages in sequence order (removed interior messages are taken out).
        var messages: Deque<StoredMessage> = []
        var lastSequence: UInt64 = 0
        var metadata: [String: [UInt8]] = [:]
    }

    private let state = Mutex(State())

    public init() {}

    public var kind: String { "memory" }

    public func open() async throws -> MessageStoreRecovery {
        self.state.withLock { state in
            MessageStoreRecovery(
                messages: state.messages.map(\.indexEntry),
                lastSequence: state.lastSequence,
                metadata: state.metadata
            )
        }
    }

    public func append(_ messages: [StoredMessage]) async throws {
        try self.state.withLock { state in
            // The whole batch is checked first: a bad batch changes nothing.
            var last = state.lastSequence
            for message in messages {
                guard message.sequence > last else {
                    throw StorkError(
                        .storeFailed,
                        "append of sequence \(message.sequence) after \(last): sequences must grow"
                    )
                }
                last = message.sequence
            }
            state.messages.append(contentsOf: messages)
            state.lastSequence = last
        }
    }

    public func message(_ sequence: UInt64) async throws -> StoredMessage? {
        self.state.withLock { state in
            guard let index = Self.index(of: sequence, in: state.messages) else { return nil }
            return state.messages[index]
        }
    }

    public func messages(from sequence: UInt64, limit: Int) async throws -> [StoredMessage] {
        self.state.withLock { state in
            var start = Self.firstIndex(atOrAfter: sequence, in: state.messages)
            var result: [StoredMessage] = []
            result.reserveCapacity(min(limit, state.messages.count - start))
            while start < state.messages.count, result.count < limit {
                result.append(state.messages[start])
                start += 1
            }
            return result
        }
    }

    public func remove(_ sequences: [UInt64]) async throws {
        self.state.withLock { state in
            let doomed = Set(sequences)
            if doomed.count == 1, let first = state.messages.first, first.sequence == sequences[0] {
                state.messages.removeFirst()
                return
            }
            state.messages.removeAll { doomed.contains($0.sequence) }
        }
    }

    public func purge(through sequence: UInt64) async throws {
        self.state.withLock { state in
            while let first = state.messages.first, first.sequence <= sequence {
                state.messages.removeFirst()
            }
        }
    }

    public func saveMetadata(key: String, value: [UInt8]?) async throws {
        self.state.withLock { $0.metadata[key] = value }
    }

    public func close() async throws {}

    public func destroy() async throws {
        self.state.withLock { $0 = State() }
    }

    // MARK: Binary search over the (sorted) sequences

    private static func firstIndex(atOrAfter sequence: UInt64, in messages: Deque<StoredMessage>) -> Int {
        messages.firstPosition(atOrAfter: sequence) { $0.sequence }
    }

    private static func index(of sequence: UInt64, in messages: Deque<StoredMessage>) -> Int? {
        let index = self.firstIndex(atOrAfter: sequence, in: messages)
        return index < messages.count && messages[index].sequence == sequence ? index : nil
    }
}
