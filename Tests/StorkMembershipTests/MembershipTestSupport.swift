import StorkCore
import Testing

@testable import StorkMembership

// MARK: - Small helpers shared by the membership tests

/// A node named `name`, reachable at `name:7946`.
func node(_ name: String, uid: UInt64 = 1) -> NodeID {
    NodeID(name: name, address: "\(name):7946", uid: uid)
}

/// `ms` milliseconds after the origin.
func at(_ ms: Int) -> StorkInstant {
    StorkInstant.zero + .milliseconds(ms)
}

/// A started machine for `me` with no seeds (so it is standalone at once) and the given members alive.
/// The settings the tests' timing arithmetic is written against: the defaults with a 200 ms probe interval,
/// pinned so that tuning the production default does not rewrite every expected time.
let testSettings: MembershipSettings = {
    var settings = MembershipSettings()
    settings.probeInterval = .milliseconds(200)
    return settings
}()

func machine(
    _ me: NodeID = node("a"),
    seeds: [String] = [],
    settings: MembershipSettings = testSettings,
    seed: UInt64 = 1,
    alive others: [NodeID] = [],
    now: StorkInstant = .zero
) -> MembershipStateMachine {
    var machine = MembershipStateMachine(myself: me, seeds: seeds, settings: settings, random: SeededRandom(seed: seed))
    _ = machine.start(now: now)
    if !others.isEmpty {
        let updates = others.map { MemberUpdate(node: $0, status: .alive, incarnation: 0) }
        _ = machine.receive(.gossip(Gossip(from: others[0], updates: updates)), now: now)
    }
    return machine
}

extension MembershipStateMachine {
    /// Feeds one piggybacked update, as gossip from `sender`.
    mutating func hear(
        _ update: MemberUpdate,
        from sender: NodeID = node("zz"),
        now: StorkInstant = .zero
    )
        -> [MembershipAction]
    {
        self.receive(.gossip(Gossip(from: sender, updates: [update])), now: now)
    }

    /// Runs every timer up to and including `end`, in order, and returns all actions with their instants. Pings to
    /// `responders` are answered at once with an ack carrying our own checksum (so no push-pull is triggered).
    mutating func advance(
        to end: StorkInstant,
        answering responders: Set<NodeID> = []
    ) -> [(StorkInstant, MembershipAction)] {
        var result: [(StorkInstant, MembershipAction)] = []
        while let deadline = self.nextDeadline, deadline <= end {
            let actions = self.tick(now: deadline)
            for action in actions { result.append((deadline, action)) }
            for (ping, _) in actions.pings {
                guard let target = ping.target, responders.contains(target) else { continue }
                let ack = Ack(from: target, sequence: ping.sequence, updates: [], checksum: self.checksum)
                for action in self.receive(.ack(ack), now: deadline) { result.append((deadline, action)) }
            }
        }
        return result
    }
}

extension Array where Element == MembershipAction {
    var sent: [(message: MembershipMessage, to: String)] {
        self.compactMap { if case .send(let message, let to) = $0 { (message, to) } else { nil } }
    }

    var changes: [MemberChange] {
        self.compactMap { if case .memberChanged(let change) = $0 { change } else { nil } }
    }

    var pings: [(Ping, String)] {
        self.sent.compactMap { if case .ping(let ping) = $0.message { (ping, $0.to) } else { nil } }
    }

    var acks: [(Ack, String)] {
        self.sent.compactMap { if case .ack(let ack) = $0.message { (ack, $0.to) } else { nil } }
    }

    var pingRequests: [(PingRequest, String)] {
        self.sent.compactMap { if case .pingRequest(let request) = $0.message { (request, $0.to) } else { nil } }
    }

    var nacks: [(Nack, String)] {
        self.sent.compactMap { if case .nack(let nack) = $0.message { (nack, $0.to) } else { nil } }
    }

    var gossips: [(Gossip, String)] {
        self.sent.compactMap { if case .gossip(let gossip) = $0.message { (gossip, $0.to) } else { nil } }
    }

    var pushPulls: [(PushPull, String)] {
        self.sent.compactMap { if case .pushPull(let pushPull) = $0.message { (pushPull, $0.to) } else { nil } }
    }

    var refutations: [UInt64] {
        self.compactMap { if case .refuted(let incarnation) = $0 { incarnation } else { nil } }
    }

    var joins: [Bool] {
        self.compactMap { if case .joined(let standalone) = $0 { standalone } else { nil } }
    }
}

extension MembershipMessage {
    /// The piggybacked or carried updates of any message.
    var carriedUpdates: [MemberUpdate] {
        switch self {
        case .ping(let ping): ping.updates
        case .ack(let ack): ack.updates
        case .pingRequest(let request): request.updates
        case .nack: []
        case .gossip(let gossip): gossip.updates
        case .pushPull(let pushPull): pushPull.members
        }
    }
}
