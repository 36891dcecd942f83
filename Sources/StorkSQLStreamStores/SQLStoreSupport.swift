import StorkCore
import StorkStreaming

// MARK: - Rules both SQL stores apply before they touch the database

enum SQLStoreRules {
    /// The largest sequence a SQL store keeps: both databases store sequences as signed 64-bit integers.
    static let maximumSequence = UInt64(Int64.max)

    /// Checks that the batch's sequences grow, start above `lastSequence` and fit in a signed 64-bit integer;
    /// returns the batch's first and last sequence (nil for an empty batch). A batch that breaks a rule is refused
    /// whole, before anything is written.
    static func checkBatch(
        _ messages: [StoredMessage],
        after lastSequence: UInt64
    ) throws -> (first: UInt64, last: UInt64)? {
        guard let first = messages.first?.sequence, let last = messages.last?.sequence else { return nil }
        var previous = lastSequence
        for message in messages {
            guard message.sequence > previous else {
                throw StorkError(
                    .storeFailed,
                    "append of sequence \(message.sequence) after \(previous): sequences must grow"
                )
            }
            previous = message.sequence
        }
        guard last <= Self.maximumSequence else {
            throw StorkError(
                .storeFailed,
                "sequence \(last) is beyond what a SQL store keeps (\(Self.maximumSequence))"
            )
        }
        return (first, last)
    }

    /// A sequence as the databases store it; sequences beyond the largest storable one are clamped (no stored
    /// message has one, so reads with them find nothing beyond).
    static func column(_ sequence: UInt64) -> Int64 {
        Int64(min(sequence, Self.maximumSequence))
    }

    /// A row limit as the databases take it.
    static func column(limit: Int) -> Int64 {
        Int64(max(0, limit))
    }

    /// The in-memory index entry of a message read back without its payload.
    static func indexEntry(sequence: Int64, subject: String, bodyLength: Int64, timestamp: Int64) -> MessageIndexEntry {
        MessageIndexEntry(
            sequence: UInt64(max(0, sequence)),
            subject: subject,
            // `StoredMessage.accountedSize`: subject, headers, payload and 16 bytes for sequence and time.
            size: UInt64(subject.utf8.count) + UInt64(max(0, bodyLength)) + 16,
            timestamp: timestamp
        )
    }
}
