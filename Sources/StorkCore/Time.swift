// MARK: - StorkInstant

/// A point in time as the state machines see it: nanoseconds since an arbitrary origin chosen by the driver.
///
/// The pure cores never read a clock. Drivers pass `now` into every event: a real driver measures it from a
/// `ContinuousClock` started with the process, the simulator from its virtual clock.
public struct StorkInstant: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var nanoseconds: Int64

    @inlinable
    public init(nanoseconds: Int64) {
        self.nanoseconds = nanoseconds
    }

    public static let zero = StorkInstant(nanoseconds: 0)

    @inlinable
    public static func < (lhs: StorkInstant, rhs: StorkInstant) -> Bool {
        lhs.nanoseconds < rhs.nanoseconds
    }

    @inlinable
    public static func + (lhs: StorkInstant, rhs: Duration) -> StorkInstant {
        StorkInstant(nanoseconds: lhs.nanoseconds &+ rhs.nanosecondsClamped)
    }

    @inlinable
    public static func - (lhs: StorkInstant, rhs: Duration) -> StorkInstant {
        StorkInstant(nanoseconds: lhs.nanoseconds &- rhs.nanosecondsClamped)
    }

    @inlinable
    public static func - (lhs: StorkInstant, rhs: StorkInstant) -> Duration {
        .nanoseconds(lhs.nanoseconds &- rhs.nanoseconds)
    }

    @inlinable
    public static func += (lhs: inout StorkInstant, rhs: Duration) {
        lhs = lhs + rhs
    }

    /// Seconds since the origin, for printing.
    public var seconds: Double { Double(self.nanoseconds) / 1e9 }

    public var description: String { "t=\(self.seconds)s" }
}

extension Duration {
    /// The duration in whole nanoseconds, clamped to `Int64`.
    @inlinable
    public var nanosecondsClamped: Int64 {
        let (seconds, attoseconds) = self.components
        let (secondsPart, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        let (total, overflow2) = secondsPart.addingReportingOverflow(attoseconds / 1_000_000_000)
        if overflow2 { return seconds < 0 ? .min : .max }
        return total
    }

    /// The duration in seconds as a `Double`.
    @inlinable
    public var secondsDouble: Double {
        Double(self.nanosecondsClamped) / 1e9
    }

    /// This duration multiplied by a real factor, rounded to nanoseconds.
    @inlinable
    public func scaled(by factor: Double) -> Duration {
        .nanoseconds(Int64((Double(self.nanosecondsClamped) * factor).rounded()))
    }
}

// MARK: - StorkClock

/// The clock a driver reads and sleeps on: time since the driver started it, as a ``StorkInstant``, and sleeping
/// for a duration. It wraps any `Clock` measured in `Duration`: `ContinuousClock` in production, a clock the test
/// moves by hand in tests, so that nothing in a test waits for a timer on the wall clock.
public struct StorkClock: Sendable {
    private let elapsed: @Sendable () -> Duration
    private let sleeper: @Sendable (Duration) async throws -> Void

    /// Starts measuring from `clock`'s present instant.
    public init<C: Clock>(_ clock: C) where C.Duration == Duration {
        let origin = clock.now
        self.elapsed = { origin.duration(to: clock.now) }
        self.sleeper = { duration in try await clock.sleep(until: clock.now.advanced(by: duration), tolerance: nil) }
    }

    /// The continuous clock (time keeps running while the machine sleeps).
    public static var continuous: StorkClock { StorkClock(ContinuousClock()) }

    /// Time since this value was made.
    public var now: StorkInstant { StorkInstant(nanoseconds: self.elapsed().nanosecondsClamped) }

    /// Sleeps for `duration` of this clock's time; throws `CancellationError` when the task is cancelled.
    public func sleep(for duration: Duration) async throws {
        try await self.sleeper(duration)
    }
}
