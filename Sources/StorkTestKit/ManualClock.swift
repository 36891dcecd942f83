import Synchronization

// MARK: - ManualClock

/// A clock whose time moves only when the test moves it, for drivers that take a clock (`StorkClock`, a `Clock`
/// parameter). Sleepers wake when `advance` passes their deadline. The clock counts the sleeps started, so that a
/// test can tell that code woken by a step has finished it and is asleep again.
public final class ManualClock: Clock, Sendable {
    public struct Instant: InstantProtocol {
        /// Time since the clock was made.
        public var offset: Duration

        public init(offset: Duration) { self.offset = offset }
        public func advanced(by duration: Duration) -> Instant { Instant(offset: self.offset + duration) }
        public func duration(to other: Instant) -> Duration { other.offset - self.offset }
        public static func < (lhs: Instant, rhs: Instant) -> Bool { lhs.offset < rhs.offset }
    }

    private struct Sleeper {
        var deadline: Instant
        var continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var now = Instant(offset: .zero)
        var sleepers: [UInt64: Sleeper] = [:]
        /// Sleeps whose task was cancelled before they were registered.
        var cancelledEarly: Set<UInt64> = []
        var nextID: UInt64 = 0
        var sleepsStarted = 0
        /// Tests waiting for a number of sleeps to have started.
        var sleepWaiters: [(count: Int, continuation: CheckedContinuation<Void, Never>)] = []

        mutating func startSleep() -> [CheckedContinuation<Void, Never>] {
            self.sleepsStarted += 1
            let ready = self.sleepWaiters.filter { $0.count <= self.sleepsStarted }.map(\.continuation)
            self.sleepWaiters.removeAll { $0.count <= self.sleepsStarted }
            return ready
        }
    }

    private let state = Mutex(State())

    public init() {}

    public var now: Instant { self.state.withLock { $0.now } }
    public var minimumResolution: Duration { .zero }

    /// Sleeps registered and not yet woken.
    public var pendingSleeps: Int { self.state.withLock { $0.sleepers.count } }
    /// Sleeps started since the clock was made (also those that returned at once).
    public var sleepsStarted: Int { self.state.withLock { $0.sleepsStarted } }

    public func sleep(until deadline: Instant, tolerance: Duration? = nil) async throws {
        let id = self.state.withLock { state -> UInt64 in
            state.nextID += 1
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let (outcome, waiters) = self.state.withLock {
                    state -> (Result<Void, any Error>?, [CheckedContinuation<Void, Never>]) in
                    let waiters = state.startSleep()
                    if state.cancelledEarly.remove(id) != nil { return (.failure(CancellationError()), waiters) }
                    if deadline <= state.now { return (.success(()), waiters) }
                    state.sleepers[id] = Sleeper(deadline: deadline, continuation: continuation)
                    return (nil, waiters)
                }
                for waiter in waiters { waiter.resume() }
                if let outcome { continuation.resume(with: outcome) }
            }
        } onCancel: {
            let sleeper = self.state.withLock { state -> Sleeper? in
                guard let sleeper = state.sleepers.removeValue(forKey: id) else {
                    state.cancelledEarly.insert(id)
                    return nil
                }
                return sleeper
            }
            sleeper?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Returns once `count` sleeps have started since the clock was made: the code under test has finished what it
    /// did before its `count`th sleep.
    public func sleepsStarted(atLeast count: Int) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = self.state.withLock { state -> Bool in
                if state.sleepsStarted >= count { return true }
                state.sleepWaiters.append((count, continuation))
                return false
            }
            if ready { continuation.resume() }
        }
    }

    /// Moves time forward by `duration` and wakes the sleepers whose deadline has come; returns how many woke.
    @discardableResult
    public func advance(by duration: Duration) -> Int {
        let due = self.state.withLock { state -> [Sleeper] in
            state.now = state.now.advanced(by: duration)
            let now = state.now
            let due = state.sleepers.filter { $0.value.deadline <= now }
            for id in due.keys { state.sleepers[id] = nil }
            return due.values.sorted { $0.deadline < $1.deadline }
        }
        for sleeper in due { sleeper.continuation.resume() }
        return due.count
    }
}

// MARK: - Driving time

extension ManualClock {
    /// Moves time forward `step` at a time until `condition` holds, for at most `limit` of this clock's time;
    /// returns whether it held.
    ///
    /// After each step it waits until the code the step woke is asleep on the clock again and `settled()` holds
    /// (for example: no message in flight on an `InMemoryNetwork`), so that a step never overtakes work still
    /// running: time moves only while the system is idle, however slow the machine. That wait has a bound on the
    /// real clock (`settleBound`) for the code that ends instead of sleeping again; it paces, it decides nothing.
    public func advance(
        by step: Duration,
        until condition: () -> Bool,
        within limit: Duration,
        settled: () -> Bool = { true },
        settleBound: Duration = .seconds(1)
    ) async -> Bool {
        let end = self.now.advanced(by: limit)
        while !condition() {
            guard self.now < end else { return false }
            let before = self.sleepsStarted
            let woken = self.advance(by: step)
            await self.settle(sleepsStarted: before + woken, settled: settled, bound: settleBound)
        }
        return true
    }

    /// Waits (bounded by `bound` on the real clock) until `count` sleeps have started and `settled()` holds.
    public func settle(sleepsStarted count: Int, settled: () -> Bool = { true }, bound: Duration = .seconds(1)) async {
        let real = ContinuousClock()
        let deadline = real.now + bound
        await Task.yield()
        while self.sleepsStarted < count || !settled(), real.now < deadline {
            try? await Task.sleep(for: .milliseconds(1))
        }
    }
}
