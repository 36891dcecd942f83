// MARK: - SeededRandom

/// A small, fast, seedable random number generator (xoshiro256**, seeded through SplitMix64).
///
/// State machines own one of these so that the simulator can replay a run from its seed, event for event. Real
/// drivers seed it from `SystemRandomNumberGenerator`.
public struct SeededRandom: RandomNumberGenerator, Sendable, Hashable {
    @usableFromInline var s0: UInt64
    @usableFromInline var s1: UInt64
    @usableFromInline var s2: UInt64
    @usableFromInline var s3: UInt64

    public init(seed: UInt64) {
        var sm = seed
        self.s0 = SeededRandom.splitMix64(&sm)
        self.s1 = SeededRandom.splitMix64(&sm)
        self.s2 = SeededRandom.splitMix64(&sm)
        self.s3 = SeededRandom.splitMix64(&sm)
    }

    /// Seeds from the system's generator.
    public init() {
        var system = SystemRandomNumberGenerator()
        self.init(seed: system.next())
    }

    @inlinable
    public mutating func next() -> UInt64 {
        let result = (self.s1 &* 5).rotatedLeft(by: 7) &* 9
        let t = self.s1 << 17
        self.s2 ^= self.s0
        self.s3 ^= self.s1
        self.s1 ^= self.s2
        self.s0 ^= self.s3
        self.s2 ^= t
        self.s3 = self.s3.rotatedLeft(by: 45)
        return result
    }

    /// Derives an independent generator, e.g. one per simulated node, without disturbing reproducibility.
    public mutating func split() -> SeededRandom {
        SeededRandom(seed: self.next())
    }

    @inlinable
    static func splitMix64(_ state: inout UInt64) -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension UInt64 {
    @inlinable
    func rotatedLeft(by k: UInt64) -> UInt64 {
        (self << k) | (self >> (64 &- k))
    }
}

extension RandomNumberGenerator {
    /// A uniformly distributed `Double` in `[0, 1)`.
    @inlinable
    public mutating func nextUnitDouble() -> Double {
        Double(self.next() >> 11) * 0x1.0p-53
    }

    /// `base` multiplied by a random factor in `[1 - fraction, 1 + fraction]`.
    @inlinable
    public mutating func jittered(_ base: Duration, fraction: Double) -> Duration {
        let factor = 1 - fraction + 2 * fraction * self.nextUnitDouble()
        return base.scaled(by: factor)
    }
}
