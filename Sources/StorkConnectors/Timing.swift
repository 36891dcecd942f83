import Foundation
import StorkCore

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
