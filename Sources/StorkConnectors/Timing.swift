import Foundation
import StorkCore
import Synchronization

// MARK: - ConnectorClock

/// How connectors read the time and wait: injected, so that tests drive backoff and poll intervals without waiting
/// for wall-clock time.
public struct ConnectorClock: Sendable {
    /// The current time (for `Retry-After` dates and the status board's `since`).
    public var now: @Sendable () -> Date
    /// Waits for the duration; throws `CancellationError` when the task is cancelled.
    public var sleep: @Sendable (Duration) async throws -> Void

    public init(now: @escaping @Sendable () -> Date, sleep: @escaping @Sendable (Duration) async throws -> Void) {
        self.now = now
        self.sleep = sleep
    }

    /// The system's time and `Task.sleep`.
    public static let system = ConnectorClock(
        now: { Date() },
        sleep: { duration in try await Task.sleep(for: duration) }
    )
}

// MARK: - ConnectorBackoff

/// Jittered exponential backoff between `minimum` and `maximum`: a pure value, owned by one connector loop.
///
/// The n-th consecutive failure waits a random time between half and all of `minimum · 2^(n-1)` (capped at
/// `maximum`), and never less than `minimum`: the first retry waits `minimum`, later ones spread out so that many
/// resources that failed together do not come back together.
public struct ConnectorBackoff: Sendable, Hashable {
    public var minimum: Duration
    public var maximum: Duration
    /// Consecutive failures since the last ``reset()``.
    public private(set) var failures = 0
    private var random: SeededRandom

    public init(minimum: Duration, maximum: Duration, seed: UInt64? = nil) {
        self.minimum = minimum
        self.maximum = max(minimum, maximum)
        self.random = seed.map { SeededRandom(seed: $0) } ?? SeededRandom()
    }

    /// Counts one more failure and returns how long to wait before the next attempt.
    public mutating func nextDelay() -> Duration {
        self.failures += 1
        let exponent = Double(min(self.failures - 1, 40))
        let step = min(self.maximum.secondsDouble, self.minimum.secondsDouble * pow(2, exponent))
        let jittered = step * (0.5 + 0.5 * Double.random(in: 0...1, using: &self.random))
        let seconds = max(self.minimum.secondsDouble, jittered)
        return .nanoseconds(Int64((seconds * 1e9).rounded()))
    }

    /// Forgets the failures: the next failure waits `minimum` again.
    public mutating func reset() {
        self.failures = 0
    }
}

// MARK: - Signals

/// Fires once; every waiter (before or after) then returns. Waiting is cancellable.
final class ConnectorSignal: Sendable {
    private struct State {
        var fired = false
        var nextWaiter = 0
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
    }

    private let state = Mutex(State())

    func fire() {
        let waiters = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
            guard !state.fired else { return [] }
            state.fired = true
            let waiters = Array(state.waiters.values)
            state.waiters = [:]
            return waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    var isFired: Bool { self.state.withLock { $0.fired } }

    /// Returns when fired, or when the calling task is cancelled.
    func wait() async {
        let id = self.state.withLock { state -> Int in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = self.state.withLock { state -> Bool in
                    if state.fired || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = self.state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume()
        }
    }
}
