import Foundation
import Logging
import StorkCore
import StorkRealtime
import StorkTestKit
import Testing

@testable import StorkGateway

@Suite("Rules file watcher")
struct RulesFileWatcherTests {
    static let open = #"{"rules": [{"subject": "public.>", "subscribe": true}]}"#
    static let closed = #"{"rules": [{"subject": "public.>", "subscribe": false}]}"#
    static let broken = #"{"rules": [{"subject": "public.>", "subscribe": "user.id =="}]}"#

    /// A fresh directory with `rules.json`, removed afterwards.
    static func withRulesFile(_ contents: String, _ body: (URL) async throws -> Void) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "stork-rules-\(UUID().uuidString)"
        )
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("rules.json")
        try Data(contents.utf8).write(to: file)
        try await body(file)
    }

    static func allowsSubscribe(_ rules: PermissionRules) -> Bool {
        rules.decide(.subscribe, subject: "public.news", user: AuthenticatedUser(id: "u")).allowed
    }

    static let quiet = Logger(label: "test.rules", factory: { _ in SwiftLogNoOpLogHandler() })

    @Test("polls every interval: swaps in a valid file, keeps the old rules over an invalid or missing one")
    func reloads() async throws {
        try await Self.withRulesFile(Self.open) { file in
            let clock = ManualClock()
            let watcher = try RulesFileWatcher(path: file.path, interval: .seconds(1), clock: clock, logger: Self.quiet)
            #expect(Self.allowsSubscribe(watcher.rules))
            #expect(watcher.generation == 1)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await watcher.run() }
                await clock.sleepsStarted(atLeast: 1)

                try Data(Self.closed.utf8).write(to: file)
                clock.advance(by: .milliseconds(999))
                #expect(clock.pendingSleeps == 1)  // not yet due: the file was not read
                #expect(Self.allowsSubscribe(watcher.rules))
                clock.advance(by: .milliseconds(1))
                await clock.sleepsStarted(atLeast: 2)  // the poll is done when the next sleep starts
                #expect(!Self.allowsSubscribe(watcher.rules))
                #expect(watcher.generation == 2)
                #expect(watcher.lastError == nil)

                try Data(Self.broken.utf8).write(to: file)
                clock.advance(by: .seconds(1))
                await clock.sleepsStarted(atLeast: 3)
                #expect(!Self.allowsSubscribe(watcher.rules))
                #expect(watcher.generation == 2)
                let error = try #require(watcher.lastError)
                #expect(error.message.hasPrefix("permissions: rule 1 ('public.>'), subscribe: condition"))

                try Data(Self.open.utf8).write(to: file)
                clock.advance(by: .seconds(1))
                await clock.sleepsStarted(atLeast: 4)
                #expect(Self.allowsSubscribe(watcher.rules))
                #expect(watcher.generation == 3)
                #expect(watcher.lastError == nil)

                try FileManager.default.removeItem(at: file)
                clock.advance(by: .seconds(1))
                await clock.sleepsStarted(atLeast: 5)
                #expect(Self.allowsSubscribe(watcher.rules))
                #expect(watcher.lastError?.message == "permissions: cannot read \(file.path)")

                group.cancelAll()
            }
        }
    }

    @Test("an invalid file at start is an error")
    func invalidAtStart() async throws {
        try await Self.withRulesFile(Self.broken) { file in
            #expect(throws: StorkError.self) {
                try RulesFileWatcher(path: file.path, clock: ManualClock(), logger: Self.quiet)
            }
        }
        #expect(throws: StorkError.self) {
            try RulesFileWatcher(path: "/nonexistent/stork/rules.json", clock: ManualClock(), logger: Self.quiet)
        }
    }

    @Test("concurrent readers always see one whole rule set while the file is swapped")
    func concurrentReaders() async throws {
        try await Self.withRulesFile(Self.open) { file in
            let watcher = try RulesFileWatcher(path: file.path, clock: ManualClock(), logger: Self.quiet)
            let openRules = watcher.rules
            try Data(Self.closed.utf8).write(to: file)
            watcher.poll()
            let closedRules = watcher.rules
            #expect(openRules != closedRules)
            try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<4 {
                    group.addTask {
                        var torn = 0
                        for _ in 0..<2_000 {
                            let rules = watcher.rules
                            if rules != openRules && rules != closedRules { torn += 1 }
                        }
                        return torn
                    }
                }
                for round in 0..<40 {
                    try Data((round.isMultiple(of: 2) ? Self.open : Self.closed).utf8).write(to: file)
                    watcher.poll()
                }
                for try await torn in group { #expect(torn == 0) }
            }
            #expect(watcher.generation == 42)
        }
    }
}
