// MARK: - Replay protection
//
// With a cluster key every frame is authenticated, but an attacker on the network can still record a datagram and
// send it again. Each frame's authenticated header carries the sender's uid (random per transport instance), a
// channel flag (datagram or stream) and a sequence number that the sender increases by one per frame and channel.
// A receiver keeps, per (uid, channel), the highest sequence seen and a bitmap of the sequences up to 1,984 below
// it, and drops a frame whose sequence it has already seen or that is older than that window (counted as `stale`).
// Frames from one sender may reorder (UDP; frames to several peers share the counter, so one receiver sees gaps),
// and the window tolerates that. The flag is authenticated, so a recorded TCP frame cannot be replayed as a
// datagram into the other sequence space. TCP frames get the same check (a recorded stream replayed on a new
// connection is dropped).
//
// Limits: windows live in memory, so a receiver that restarts accepts frames recorded before its restart once more
// (their senders' members are then usually stale and the protocols ignore them); at most `replayWindowSenders`
// senders are remembered (least recently heard forgotten first). Without a key there is no replay protection: anyone
// could forge frames anyway.

/// Which sequences of one sender and channel were seen: the highest, and a ring of 32 64-bit words indexed by
/// `sequence / 64` (as in WireGuard). The ring always holds the current block, so the window reaches
/// `size` = 31 × 64 = 1,984 sequences below the highest.
struct ReplayWindow: Sendable {
    static let words = 32
    static let size = UInt64((words - 1) * 64)

    private(set) var highest: UInt64 = 0
    private var bitmap = [UInt64](repeating: 0, count: ReplayWindow.words)

    /// Records `sequence` and returns true the first time it is seen within the window; false when it was seen
    /// before or is older than the window (sequence 0 is never valid: senders start at 1).
    mutating func accept(_ sequence: UInt64) -> Bool {
        guard sequence > 0 else { return false }
        if self.highest >= Self.size, sequence <= self.highest - Self.size { return false }
        let block = sequence / 64
        if sequence > self.highest {
            let current = self.highest / 64
            let advance = min(block - current, UInt64(Self.words))
            var step: UInt64 = 1
            while step <= advance {
                self.bitmap[Int((current + step) % UInt64(Self.words))] = 0
                step += 1
            }
            self.highest = sequence
        }
        let index = Int(block % UInt64(Self.words))
        let bit: UInt64 = 1 << (sequence % 64)
        if self.bitmap[index] & bit != 0 { return false }
        self.bitmap[index] |= bit
        return true
    }
}

/// The replay windows of every sender heard, bounded in number.
struct ReplayGuard: Sendable {
    struct Key: Hashable, Sendable {
        var sender: UInt64
        var isDatagram: Bool
    }

    struct Entry: Sendable {
        var window = ReplayWindow()
        var lastHeard: UInt64 = 0
    }

    let maximumSenders: Int
    private(set) var entries: [Key: Entry] = [:]
    private var tick: UInt64 = 0

    init(maximumSenders: Int) {
        self.maximumSenders = max(1, maximumSenders)
    }

    mutating func accept(_ header: WireHeader) -> Bool {
        let key = Key(sender: header.senderUID, isDatagram: header.isDatagram)
        self.tick += 1
        if self.entries[key] == nil, self.entries.count >= self.maximumSenders {
            // Forget the sender heard least recently (a linear scan, only when a new sender arrives at the bound).
            if let oldest = self.entries.min(by: { $0.value.lastHeard < $1.value.lastHeard })?.key {
                self.entries[oldest] = nil
            }
        }
        var entry = self.entries[key] ?? Entry()
        entry.lastHeard = self.tick
        let fresh = entry.window.accept(header.sequence)
        self.entries[key] = entry
        return fresh
    }
}
