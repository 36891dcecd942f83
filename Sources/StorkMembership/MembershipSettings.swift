import StorkCore

#if canImport(Darwin)
import Darwin
#elseif canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: - MembershipSettings

/// The knobs of SWIM + Lifeguard. The defaults aim at detecting a crashed node on every member within about two
/// seconds for 5–50 members on a LAN, with no false deaths under a few percent of packet loss.
///
/// Every duration marked "scaled by local health" is multiplied by `localHealth + 1` (Lifeguard).
public struct MembershipSettings: Sendable, Hashable {
    /// Time between two probes of our own (scaled by local health). 100 ms keeps the time until somebody probes
    /// a crashed member short in larger clusters: measured with `stork bench detection`, a crash is declared dead
    /// by every member of a 50-node cluster within 1.3 s (see BENCHMARKS.md).
    public var probeInterval: Duration = .milliseconds(100)
    /// How long a direct `ping` waits for its `ack` before helpers are asked (scaled by local health).
    public var probeTimeout: Duration = .milliseconds(100)
    /// How long the indirect phase lasts after the `pingRequest`s are sent; at its end a probe without any ack
    /// marks the target suspect (scaled by local health).
    public var indirectProbeTimeout: Duration = .milliseconds(200)
    /// A helper sends its `nack` after this fraction of `indirectProbeTimeout` if the target has not answered.
    public var nackFraction: Double = 0.8
    /// How many helpers a failed direct probe asks (`pingRequest`s).
    public var indirectProbeCount: Int = 3
    /// Lifeguard suspicion: the minimum suspicion timeout is
    /// `max(suspicionMinimum, suspicionMultiplier × log10(n + 1) × probeInterval)` for `n` alive + suspect members.
    public var suspicionMultiplier: Double = 4
    /// Lower bound of the minimum suspicion timeout.
    public var suspicionMinimum: Duration = .milliseconds(500)
    /// The maximum suspicion timeout (no confirmations) is this multiple of the minimum.
    public var suspicionMaxMultiplier: Double = 3
    /// `K`: with this many independent confirmations the suspicion timeout has shrunk to its minimum.
    public var maxIndependentSuspicions: Int = 3
    /// Time between two gossip rounds.
    public var gossipInterval: Duration = .milliseconds(100)
    /// Members one gossip round sends to.
    public var gossipFanout: Int = 3
    /// For this long after a member's death, gossip rounds also pick it as a target (and tell it it is dead), so a
    /// falsely accused member learns quickly and refutes.
    public var gossipToTheDeadTime: Duration = .seconds(2)
    /// Updates piggybacked on one message at most.
    public var maxUpdatesPerMessage: Int = 12
    /// An update is transmitted at most `retransmitMultiplier × ceil(log10(n + 1))` times.
    public var retransmitMultiplier: Int = 4
    /// Time between two periodic push-pulls (jittered ±10%).
    public var pushPullInterval: Duration = .seconds(10)
    /// At most one push-pull triggered by a checksum mismatch per this much time.
    public var pushPullMinimumGap: Duration = .seconds(1)
    /// Dead and left members are forgotten this long after their status changed.
    public var tombstoneTimeout: Duration = .seconds(60)
    /// First retry of an unanswered join; doubles (±20% jitter) up to `joinBackoffMax`.
    public var joinBackoffInitial: Duration = .milliseconds(100)
    /// Longest wait between two join attempts; also the background retry period once running standalone.
    public var joinBackoffMax: Duration = .seconds(5)
    /// With no seed answering by then, emit `.joined(standalone: true)` and run alone (joining continues).
    public var standaloneAfter: Duration = .seconds(3)
    /// Upper bound of the Lifeguard local health multiplier.
    public var maxLocalHealthMultiplier: Int = 8

    public init() {}

    // MARK: Derived values

    /// Lifeguard's dynamic suspicion timeout for `confirmations` independent confirmations (sources beyond the
    /// first) when `memberCount` members are alive or suspect:
    ///
    ///     min = max(suspicionMinimum, suspicionMultiplier × log10(n + 1) × probeInterval)
    ///     max = suspicionMaxMultiplier × min
    ///     timeout(C) = max(min, max − (max − min) × log(C + 1) / log(K + 1))
    public func suspicionTimeout(confirmations: Int, memberCount: Int) -> Duration {
        let minimum = self.minimumSuspicionTimeout(memberCount: memberCount)
        let maximum = minimum.scaled(by: max(1, self.suspicionMaxMultiplier))
        guard self.maxIndependentSuspicions > 0 else { return minimum }
        let fraction =
            log(Double(max(0, confirmations) + 1)) / log(Double(self.maxIndependentSuspicions + 1))
        let timeout = maximum - (maximum - minimum).scaled(by: fraction)
        return max(minimum, timeout)
    }

    /// `max(suspicionMinimum, suspicionMultiplier × log10(n + 1) × probeInterval)`.
    public func minimumSuspicionTimeout(memberCount: Int) -> Duration {
        let scaled = self.probeInterval.scaled(
            by: self.suspicionMultiplier * log10(Double(max(0, memberCount) + 1))
        )
        return max(self.suspicionMinimum, scaled)
    }

    /// How often one update is transmitted: `retransmitMultiplier × ceil(log10(n + 1))`, at least 1.
    public func retransmitLimit(memberCount: Int) -> Int {
        let factor = Int(log10(Double(max(0, memberCount) + 1)).rounded(.up))
        return max(1, self.retransmitMultiplier * max(1, factor))
    }
}
