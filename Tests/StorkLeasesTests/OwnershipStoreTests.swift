import Foundation
import Logging
import StorkCore
import StorkLeases
import StorkResources
import StorkTestKit
import Testing

/// The stores under test. PostgreSQL is the real server that scripts/test starts on loopback
/// (`STORK_TEST_POSTGRES_URL`); without it those cases are skipped with that reason.
enum StoreKind: String, CaseIterable, CustomTestStringConvertible {
    case memory, sqlite, postgres

    var testDescription: String { self.rawValue }

    static var postgresURL: String? { ProcessInfo.processInfo.environment["STORK_TEST_POSTGRES_URL"] }
    static var available: [StoreKind] { Self.allCases.filter { $0 != .postgres || Self.postgresURL != nil } }
}

/// A fresh store of `kind` with a cluster name of its own, so that tests never see each other's rows. `reopen`
/// gives another instance on the same data (a restart of Stork).
struct StoreFixture: Sendable {
    let kind: StoreKind
    let cluster: String
    let directory: URL
    let memory = InMemoryOwnershipStore()

    init(_ kind: StoreKind) {
        self.kind = kind
        self.cluster = "test-\(UUID().uuidString.prefix(8))"
        self.directory = FileManager.default.temporaryDirectory.appendingPathComponent("stork-leases-\(self.cluster)")
    }

    func open() async throws -> any OwnershipStore {
        let store: any OwnershipStore
        switch self.kind {
        case .memory:
            store = self.memory
        case .sqlite:
            try FileManager.default.createDirectory(at: self.directory, withIntermediateDirectories: true)
            store = SQLiteOwnershipStore(path: self.directory.appendingPathComponent("leases.db").path, cluster: self.cluster)
        case .postgres:
            store = try PostgresOwnershipStore(url: StoreKind.postgresURL ?? "", cluster: self.cluster)
        }
        try await store.prepare()
        return store
    }

    func cleanUp() {
        try? FileManager.default.removeItem(at: self.directory)
    }
}

func ids(_ range: Range<Int>) -> [ResourceID] { range.map { ResourceID("r\($0)") } }

@Suite("Ownership stores (memory, SQLite, PostgreSQL)", .serialized, .timeLimit(.minutes(2)))
struct OwnershipStoreTests {
    @Test("acquire grants free leases with token 1, refuses another holder, re-grants to the holder with a new token", arguments: StoreKind.available)
    func acquire(kind: StoreKind) async throws {
        let fixture = StoreFixture(kind)
        defer { fixture.cleanUp() }
        let store = try await fixture.open()
        let first = try await store.acquire(ids(0..<5), holder: "a/1", duration: .seconds(30))
        #expect(first.granted == ids(0..<5).map { LeaseKey(id: $0, token: 1) })
        #expect(first.refused.isEmpty)
        let other = try await store.acquire(ids(3..<8), holder: "b/1", duration: .seconds(30))
        #expect(other.granted == ids(5..<8).map { LeaseKey(id: $0, token: 1) })
        #expect(other.refused == ids(3..<5))
        let again = try await store.acquire([ResourceID("r0"), ResourceID("r0")], holder: "a/1", duration: .seconds(30))
        #expect(again.granted == [LeaseKey(id: "r0", token: 2)], "duplicates count once; the holder gets a new token")
        let records = try await store.records([ResourceID("r0"), ResourceID("r6")])
        #expect(records.map(\.holder) == ["a/1", "b/1"])
        #expect(records.allSatisfy { $0.remainingMilliseconds > 20_000 })
        await store.close()
    }

    @Test("renew extends every lease of a batch in one call; wrong tokens and other holders' leases are lost", arguments: StoreKind.available)
    func renewBatch(kind: StoreKind) async throws {
        let fixture = StoreFixture(kind)
        defer { fixture.cleanUp() }
        let store = try await fixture.open()
        let granted = try await store.acquire(ids(0..<2_500), holder: "a/1", duration: .seconds(5)).granted
        #expect(granted.count == 2_500)
        _ = try await store.acquire(ids(5_000..<5_001), holder: "b/1", duration: .seconds(30))
        var asked = granted
        asked.append(LeaseKey(id: "r0", token: 99))  // a token that was never granted
        asked.append(LeaseKey(id: "r5000", token: 1))  // b's lease
        let result = try await store.renew(asked, holder: "a/1", duration: .seconds(60))
        #expect(result.renewed == granted)
        #expect(result.lost == [LeaseKey(id: "r0", token: 99), LeaseKey(id: "r5000", token: 1)])
        let records = try await store.records(ids(0..<2_500))
        #expect(records.count == 2_500)
        #expect(records.allSatisfy { $0.remainingMilliseconds > 30_000 }, "renewed to 60 s by the store's clock")
        await store.close()
    }

    @Test("an expired lease cannot be renewed and goes to the next holder with the next token", arguments: StoreKind.available)
    func expiry(kind: StoreKind) async throws {
        let fixture = StoreFixture(kind)
        defer { fixture.cleanUp() }
        let store = try await fixture.open()
        let granted = try await store.acquire(ids(0..<3), holder: "a/1", duration: .milliseconds(300)).granted
        #expect(try await store.acquire(ids(0..<3), holder: "b/1", duration: .seconds(30)).refused == ids(0..<3))
        let expired = try await eventually {
            try await store.records(ids(0..<3)).allSatisfy { $0.remainingMilliseconds <= 0 }
        }
        #expect(expired)
        let renewal = try await store.renew(granted, holder: "a/1", duration: .seconds(30))
        #expect(renewal.renewed.isEmpty && renewal.lost == granted)
        let taken = try await store.acquire(ids(0..<3), holder: "b/1", duration: .seconds(30))
        #expect(taken.granted == ids(0..<3).map { LeaseKey(id: $0, token: 2) })
        await store.close()
    }

    @Test("a released lease goes to another holder at once; releasing with a stale token changes nothing", arguments: StoreKind.available)
    func release(kind: StoreKind) async throws {
        let fixture = StoreFixture(kind)
        defer { fixture.cleanUp() }
        let store = try await fixture.open()
        _ = try await store.acquire(ids(0..<4), holder: "a/1", duration: .seconds(30))
        try await store.release([LeaseKey(id: "r0", token: 1), LeaseKey(id: "r1", token: 7)], holder: "a/1")
        try await store.release([LeaseKey(id: "r2", token: 1)], holder: "b/1")
        let taken = try await store.acquire(ids(0..<4), holder: "b/1", duration: .seconds(30))
        #expect(taken.granted == [LeaseKey(id: "r0", token: 2)])
        #expect(taken.refused == ids(1..<4))
        let record = try await store.records([ResourceID("r0")]).first
        #expect(record?.holder == "b/1" && record?.token == 2)
        await store.close()
    }

    @Test("tokens keep growing across releases and a restart of Stork (a new store instance on the same data)", arguments: StoreKind.available)
    func tokensSurviveRestart(kind: StoreKind) async throws {
        let fixture = StoreFixture(kind)
        defer { fixture.cleanUp() }
        var store = try await fixture.open()
        var last: UInt64 = 0
        for round in 0..<6 {
            if round == 3 {
                await store.close()
                store = try await fixture.open()  // prepare() again on an existing schema is harmless
            }
            let holder = "n\(round % 2)/\(round)"
            guard let key = try await store.acquire(["res"], holder: holder, duration: .seconds(30)).granted.first else {
                Issue.record("round \(round): not granted")
                return
            }
            #expect(key.token > last)
            last = key.token
            try await store.release([key], holder: holder)
        }
        #expect(last == 6)
        await store.close()
    }

    @Test("concurrent holders racing for the same 300 leases: each lease goes to exactly one", arguments: StoreKind.available)
    func race(kind: StoreKind) async throws {
        let fixture = StoreFixture(kind)
        defer { fixture.cleanUp() }
        let stores = [try await fixture.open(), try await fixture.open(), try await fixture.open()]
        let results = try await withThrowingTaskGroup(of: (Int, LeaseGrants).self) { group in
            for (index, store) in stores.enumerated() {
                group.addTask {
                    var all = LeaseGrants(granted: [], refused: [])
                    for start in stride(from: 0, to: 300, by: 30) {
                        let part = try await store.acquire(ids(start..<start + 30).shuffled(), holder: "h\(index)/1", duration: .seconds(30))
                        all.granted += part.granted
                        all.refused += part.refused
                    }
                    return (index, all)
                }
            }
            var results: [Int: LeaseGrants] = [:]
            for try await (index, grants) in group { results[index] = grants }
            return results
        }
        let granted = results.values.flatMap(\.granted)
        #expect(granted.count == 300)
        #expect(Set(granted.map(\.id)).count == 300)
        for store in stores { await store.close() }
    }
}

extension OwnershipStoreTests {
/// Nested in the serialized suite above: restarting PostgreSQL must not run alongside the other store tests.
@Suite("PostgreSQL ownership store: restarts and outages", .enabled(if: StoreKind.postgresURL != nil))
struct PostgresOutageTests {
    static var restartCommand: String? { ProcessInfo.processInfo.environment["STORK_TEST_POSTGRES_RESTART"] }

    static func restartPostgres() throws {
        let status = try runWithDefaultSignals(Self.restartCommand ?? "false")
        guard status == 0 else { throw StorkError(.unavailable, "'\(Self.restartCommand ?? "")' exited with \(status)") }
    }

    @Test("a PostgreSQL restart fails operations in flight, the store reconnects, and tokens continue", .enabled(if: restartCommand != nil))
    func restart() async throws {
        let fixture = StoreFixture(.postgres)
        let store = try await fixture.open()
        let first = try await store.acquire(ids(0..<10), holder: "a/1", duration: .seconds(30)).granted
        #expect(first.allSatisfy { $0.token == 1 })
        try Self.restartPostgres()
        // The first operation after the restart may fail (the old connection is gone); the store reconnects.
        var renewed: LeaseRenewals?
        let recovered = await eventually(.seconds(30)) {
            renewed = try? await store.renew(first, holder: "a/1", duration: .seconds(30))
            return renewed != nil
        }
        #expect(recovered)
        #expect(renewed?.renewed == first, "leases live in the database, not in the connection")
        try await store.release(first, holder: "a/1")
        let again = try await store.acquire(ids(0..<10), holder: "b/1", duration: .seconds(30)).granted
        #expect(again.allSatisfy { $0.token == 2 })
        await store.close()
    }

    @Test("an unreachable server is a clear error (unavailable), never a hang")
    func unreachable() async throws {
        let store = try PostgresOwnershipStore(url: "postgres://stork:stork@127.0.0.1:9/stork_test", cluster: "none")
        await #expect(throws: StorkError.self) { try await store.prepare() }
        do {
            _ = try await store.acquire(["x"], holder: "a/1", duration: .seconds(1))
            Issue.record("acquire succeeded without a server")
        } catch let error as StorkError {
            #expect(error.code == .unavailable)
            #expect(!error.description.contains(":stork@"), "the password is not in the message")
        }
        await store.close()
    }

    @Test("bad URLs are rejected with a message that names the problem")
    func badURLs() {
        #expect(throws: StorkError.self) { try PostgresOwnershipStore(url: "mysql://x@y/z") }
        #expect(throws: StorkError.self) { try PostgresOwnershipStore(url: "postgres://u:p@127.0.0.1/db?sslmode=maybe") }
    }
}
}
