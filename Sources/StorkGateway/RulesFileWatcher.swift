import Foundation
import Logging
import ServiceLifecycle
import StorkCore
import StorkRealtime
import Synchronization

// MARK: - The rules file, reloaded without a restart
//
// The watcher reads the rules file every `interval` and hands it to a `ReloadableRules` behind a lock; the decision
// (unchanged, swap, keep the old rules and record the error) is that value's. Every connection reads `rules` for each
// check, so a swap takes effect on the next action of every client, and a reader never sees half a file.

/// Polls a rules file and keeps the last valid rules for concurrent readers.
public final class RulesFileWatcher<C: Clock>: Service, Sendable where C.Duration == Duration {
    public let path: String
    /// How often the file is read.
    public let interval: Duration
    private let clock: C
    private let logger: Logger
    private let state: Mutex<ReloadableRules>

    /// Loads the file once; a file that cannot be read or is invalid at start is an error (the gateway does not start
    /// with rules it cannot check).
    ///
    /// - Parameter decode: turns the file's bytes into its document (the server passes its YAML decoder; the default
    ///   reads JSON).
    public init(
        path: String,
        interval: Duration = .seconds(1),
        clock: C,
        logger: Logger = Logger(label: "stork.gateway.rules"),
        decode: @escaping @Sendable ([UInt8]) throws -> JSONValue = {
            try JSONDecoder().decode(JSONValue.self, from: Data($0))
        }
    ) throws {
        self.path = path
        self.interval = interval
        self.clock = clock
        self.logger = logger
        var rules = ReloadableRules(decode: decode)
        if case .keptPrevious(let error) = rules.onSnapshot(Self.snapshot(path)) { throw error }
        self.state = Mutex(rules)
    }

    /// The rules in force.
    public var rules: PermissionRules { self.state.withLock { $0.rules } }
    /// Why the file as it is now is not in force; nil when it is.
    public var lastError: StorkError? { self.state.withLock { $0.lastError } }
    /// How many times rules were loaded (the load at start is 1).
    public var generation: Int { self.state.withLock { $0.generation } }

    /// Reads the file every `interval` until cancelled or a graceful shutdown.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while true {
                do {
                    try await self.clock.sleep(for: self.interval)
                } catch {
                    return
                }
                self.poll()
            }
        }
    }

    /// Reads the file now (the loop's step; also for an admin "reload" request).
    @discardableResult
    public func poll() -> RulesReloadAction {
        let snapshot = Self.snapshot(self.path)
        let (action, generation) = self.state.withLock { rules in (rules.onSnapshot(snapshot), rules.generation) }
        switch action {
        case .unchanged:
            break
        case .reloaded:
            self.logger.info(
                "permission rules reloaded",
                metadata: ["rules.path": "\(self.path)", "rules.generation": "\(generation)"]
            )
        case .keptPrevious(let error):
            self.logger.error(
                "permission rules not reloaded; the previous rules stay in force",
                metadata: ["rules.path": "\(self.path)", "rules.error": "\(error.message)"]
            )
        }
        return action
    }

    static func snapshot(_ path: String) -> RulesFileSnapshot {
        do {
            let attributes = try FileManager.default.attributesOfItem(atPath: path)
            let contents = try Data(contentsOf: URL(fileURLWithPath: path))
            let modified = (attributes[.modificationDate] as? Date).map { Int64($0.timeIntervalSince1970 * 1e9) } ?? 0
            return RulesFileSnapshot(
                contents: Array(contents),
                stamp: RulesFileStamp(modified: modified, size: contents.count)
            )
        } catch {
            return RulesFileSnapshot(
                unreadable: StorkError(.invalidInput, "permissions: cannot read \(path)", underlying: error)
            )
        }
    }
}
