import Foundation
import StorkStreamStores
import StorkStreaming
import StorkTestKit
import Testing

// MARK: - Stores under test

/// Every `MessageStore` implementation the contract runs against.
enum ContractStoreKind: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case memory, file

    var testDescription: String { self.rawValue }
}

/// One store of a kind on fresh storage. `reopen()` stands for a restart: the file store is closed and a new
/// instance opened on the same directory; the memory store (which keeps nothing across restarts) is asked to `open()`
/// again, which reports what it holds.
final class ContractStore {
    let kind: ContractStoreKind
    let directory = StoreTestDirectory("contract")
    private(set) var store: any MessageStore

    init(_ kind: ContractStoreKind) {
        self.kind = kind
        self.store = Self.make(kind, self.directory)
    }

    private static func make(_ kind: ContractStoreKind, _ directory: StoreTestDirectory) -> any MessageStore {
        switch kind {
        case .memory: MemoryMessageStore()
        case .file: FileMessageStore(directory: directory.path, configuration: .init(segmentMaxBytes: 4096))
        }
    }

    @discardableResult
    func open() async throws -> MessageStoreRecovery {
        try await self.store.open().expanded(self.store)
    }

    func reopen() async throws -> MessageStoreRecovery {
        if self.kind == .file {
            try await self.store.close()
            self.store = Self.make(self.kind, self.directory)
        }
        return try await self.store.open().expanded(self.store)
    }

    func finish() async {
        try? await self.store.close()
        self.directory.remove()
    }
}

/// Runs `body` with a fresh store of `kind` and cleans it up afterwards, whether `body` throws or not.
func withContractStore(_ kind: ContractStoreKind, _ body: (ContractStore) async throws -> Void) async throws {
    let fixture = ContractStore(kind)
    do {
        try await body(fixture)
    } catch {
        await fixture.finish()
        throw error
    }
    await fixture.finish()
}

// MARK: - The contract

@Suite("MessageStore contract")
struct MessageStoreContractTests {
    @Test("appended messages read back by sequence and in ranges", arguments: ContractStoreKind.allCases)
    func appendAndRead(kind: ContractStoreKind) async throws {
        try await withContractStore(kind) { fixture in
            let recovery = try await fixture.open()
            #expect(recovery == MessageStoreRecovery())
            let store = fixture.store
            let headers = Array("NATS/1.0\r\nA: b\r\n\r\n".utf8)
            let all = storedMessages(1...40) + [storedMessage(41, subject: "with.headers", headers: headers)]
            for batch in stride(from: 0, to: all.count, by: 7) {
                try await store.append(Array(all[batch..<min(batch + 7, all.count)]))
            }
            #expect(try await store.message(1) == all[0])
            #expect(try await store.message(41) == all[40])
            #expect(try await store.message(17) == all[16])
            #expect(try await store.message(0) == nil)
            #expect(try await store.message(42) == nil)
            #expect(try await store.messages(from: 3, limit: 4) == Array(all[2..<6]))
            #expect(try await store.messages(from: 0, limit: 1000) == all)
            #expect(try await store.messages(from: 39, limit: 10) == Array(all[38...]))
            #expect(try await store.messages(from: 42, limit: 10).isEmpty)
            #expect(try await store.messages(from: 1, limit: 0).isEmpty)
            try await store.append([])
            #expect(try await store.messages(from: 0, limit: 1000).count == 41)
        }
    }

    @Test("removed messages are gone and ranges skip them", arguments: ContractStoreKind.allCases)
    func removeAndSkip(kind: ContractStoreKind) async throws {
        try await withContractStore(kind) { fixture in
            try await fixture.open()
            let store = fixture.store
            let all = storedMessages(1...20)
            try await store.append(all)
            try await store.remove([2, 4, 5, 20])
            try await store.remove([4, 100, 0])  // already removed or never stored: ignored
            #expect(try await store.message(4) == nil)
            #expect(try await store.message(3) == all[2])
            #expect(try await store.messages(from: 1, limit: 3) == [all[0], all[2], all[5]])
            #expect(try await store.messages(from: 4, limit: 2) == [all[5], all[6]])
            #expect(try await store.messages(from: 19, limit: 5) == [all[18]])
            try await store.remove([1])
            #expect(try await store.messages(from: 0, limit: 1) == [all[2]])
            let recovery = try await fixture.reopen()
            #expect(recovery.messages.map(\.sequence) == [3] + Array(6...19))
            #expect(recovery.lastSequence == 20)
        }
    }

    @Test("purge removes everything up to a sequence and keeps the highest", arguments: ContractStoreKind.allCases)
    func purgeKeepsLastSequence(kind: ContractStoreKind) async throws {
        try await withContractStore(kind) { fixture in
            try await fixture.open()
            var store = fixture.store
            let all = storedMessages(1...30)
            try await store.append(all)
            try await store.purge(through: 12)
            #expect(try await store.message(12) == nil)
            #expect(try await store.message(13) == all[12])
            #expect(try await store.messages(from: 0, limit: 2) == [all[12], all[13]])
            try await store.purge(through: 5)  // nothing left there
            #expect(try await store.messages(from: 0, limit: 100).count == 18)
            try await store.purge(through: 1000)
            #expect(try await store.messages(from: 0, limit: 100).isEmpty)
            var recovery = try await fixture.reopen()
            #expect(recovery.messages.isEmpty)
            #expect(recovery.lastSequence == 30)
            store = fixture.store
            await #expect(throws: (any Error).self) { try await store.append([storedMessage(30)]) }
            try await store.append([storedMessage(31)])
            #expect(try await store.message(31) == storedMessage(31))
            recovery = try await fixture.reopen()
            #expect(recovery.messages == [storedMessage(31).indexEntry])
            #expect(recovery.lastSequence == 31)
        }
    }

    @Test("metadata records are saved, replaced and deleted", arguments: ContractStoreKind.allCases)
    func metadata(kind: ContractStoreKind) async throws {
        try await withContractStore(kind) { fixture in
            try await fixture.open()
            var store = fixture.store
            try await store.saveMetadata(key: "stream", value: [1, 2, 3])
            try await store.saveMetadata(key: "consumer/a", value: [4])
            try await store.saveMetadata(key: "consumer/b", value: [])
            try await store.saveMetadata(key: "consumer/a", value: [5, 6])
            try await store.saveMetadata(key: "consumer/b", value: nil)
            try await store.saveMetadata(key: "never-saved", value: nil)
            var recovery = try await fixture.reopen()
            #expect(recovery.metadata == ["stream": [1, 2, 3], "consumer/a": [5, 6]])
            store = fixture.store
            try await store.saveMetadata(key: "stream", value: nil)
            recovery = try await fixture.reopen()
            #expect(recovery.metadata == ["consumer/a": [5, 6]])
        }
    }

    @Test("an append whose sequence does not grow is refused", arguments: ContractStoreKind.allCases)
    func nonGrowingAppendThrows(kind: ContractStoreKind) async throws {
        try await withContractStore(kind) { fixture in
            try await fixture.open()
            let store = fixture.store
            try await store.append(storedMessages(1...3))
            await #expect(throws: (any Error).self) { try await store.append([storedMessage(3)]) }
            await #expect(throws: (any Error).self) { try await store.append([storedMessage(1)]) }
            #expect(try await store.messages(from: 0, limit: 10) == storedMessages(1...3))
            try await store.append([storedMessage(4)])
            await #expect(throws: (any Error).self) { try await store.append([storedMessage(6), storedMessage(5)]) }
        }
    }

    @Test("the file store recovers exactly what the memory store holds", arguments: [ContractStoreKind.file])
    func reopenReturnsTheSameRecovery(kind: ContractStoreKind) async throws {
        try await withContractStore(kind) { fixture in
            let reference = MemoryMessageStore()
            _ = try await reference.open()
            try await fixture.open()
            let store = fixture.store
            for target in [store, reference] as [any MessageStore] {
                for batch in 0..<20 {
                    let first = UInt64(batch * 10 + 1)
                    try await target.append(storedMessages(first...(first + 9), payloadSize: batch * 3))
                }
                try await target.remove([3, 50, 51, 52, 120, 199])
                try await target.purge(through: 25)
                try await target.saveMetadata(key: "stream", value: Array("config".utf8))
            }
            let expected = try await reference.open().expanded(reference)
            let first = try await fixture.reopen()
            #expect(first == expected)
            let second = try await fixture.reopen()
            #expect(second == expected)
            #expect(try await fixture.store.messages(from: 0, limit: 1000) == reference.messages(from: 0, limit: 1000))
        }
    }
}
