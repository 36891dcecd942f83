import Testing
import Foundation
import StorkStreamStores
import StorkStreaming

// MARK: - Temporary store directories

/// A directory of its own under the system's temporary directory, removed by `remove()`.
struct StoreTestDirectory: Sendable {
    let path: String

    init(_ name: String = "store") {
        self.path =
            FileManager.default.temporaryDirectory
            .appendingPathComponent("stork-\(name)-\(UUID().uuidString.prefix(8))").path
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: self.path)
    }

    /// The names of the files directly in the directory with this extension, sorted.
    func files(withExtension suffix: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: self.path)) ?? []
        return names.filter { $0.hasSuffix("." + suffix) }.sorted()
    }

    func url(_ name: String) -> URL {
        URL(fileURLWithPath: self.path).appendingPathComponent(name)
    }

    func size(of name: String) -> Int {
        let attributes = try? FileManager.default.attributesOfItem(atPath: self.url(name).path)
        return (attributes?[.size] as? NSNumber)?.intValue ?? -1
    }
}

// MARK: - Messages

/// The bytes a message record takes in a segment file (the file store's format: 34 bytes of header and checksum).
func fileRecordLength(of message: StoredMessage) -> Int {
    34 + message.subject.utf8.count + message.headers.count + message.payload.count
}

// MARK: - Deterministic randomness

/// SplitMix64: a small seeded generator, so that a failing randomized test can be replayed.
struct StoreTestGenerator: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) {
        self.state = seed
    }

    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension MessageStoreRecovery {
    /// The recovery with block summaries (a store with its own index) expanded into messages through the store's
    /// loader: what the stream's index sees. Checks on the way that the summaries are those of the messages.
    func expanded(_ store: any MessageStore) -> MessageStoreRecovery {
        guard !self.blocks.isEmpty else { return self }
        var copy = self
        copy.messages = Array(StreamIndex(recovery: self, loader: store.indexLoader).entries)
        copy.blocks = []
        #expect(Array(StreamIndex(recovery: copy).blocks) == self.blocks, "the store's block summaries")
        return copy
    }
}
