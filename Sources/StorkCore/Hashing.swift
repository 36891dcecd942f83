// MARK: - Stable hashing

/// Stable, platform-independent hashes for checksums and placement. Swift's `Hasher` is randomly seeded per
/// process, so anything two nodes compare must use these instead.
public enum StableHash {
    /// 64-bit FNV-1a over the UTF-8 bytes of a string.
    @inlinable
    public static func fnv1a64(_ string: String) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in string.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01B3
        }
        return hash
    }

    /// Continues an FNV-1a hash with more bytes.
    @inlinable
    public static func fnv1a64(_ string: String, continuing hash: UInt64) -> UInt64 {
        var hash = hash
        for byte in string.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01B3
        }
        return hash
    }

    /// The 64-bit finaliser of MurmurHash3: a fast bijective mixer with good avalanche.
    @inlinable
    public static func mix64(_ value: UInt64) -> UInt64 {
        var k = value
        k ^= k >> 33
        k &*= 0xFF51_AFD7_ED55_8CCD
        k ^= k >> 33
        k &*= 0xC4CE_B9FE_1A85_EC53
        k ^= k >> 33
        return k
    }
}
