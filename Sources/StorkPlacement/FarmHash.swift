// MARK: - FarmHash Fingerprint32

/// FarmHash's 32-bit fingerprint: farmhash "mk" `Hash32`, the function behind `util::Fingerprint32` in Google's
/// FarmHash, Go's `farm.Fingerprint32` (which ringpop-go hashes its ring with) and `farmhash.fingerprint32` in Node
/// and Python.
///
/// Unlike FarmHash's other 32-bit hashes, a fingerprint is the same on every platform and every build, so it is
/// safe to compare between processes. Stork uses it for the ringpop-compatible ring and its checksum.
///
/// Input is read as little-endian 32-bit words, whatever the host's byte order.
public enum FarmHash {
    /// The fingerprint of the UTF-8 encoding of `string`.
    @inlinable
    public static func fingerprint32(_ string: String) -> UInt32 {
        if let hash = string.utf8.withContiguousStorageIfAvailable({ Self.fingerprint32(UnsafeRawBufferPointer($0)) }) {
            return hash
        }
        return Self.fingerprint32(Array(string.utf8))
    }

    /// The fingerprint of a sequence of bytes.
    @inlinable
    public static func fingerprint32(_ bytes: some Collection<UInt8>) -> UInt32 {
        if let hash = bytes.withContiguousStorageIfAvailable({ Self.fingerprint32(UnsafeRawBufferPointer($0)) }) {
            return hash
        }
        return Array(bytes).withUnsafeBytes { Self.fingerprint32($0) }
    }

    /// The fingerprint of the bytes in `buffer`.
    @inlinable
    public static func fingerprint32(_ buffer: UnsafeRawBufferPointer) -> UInt32 {
        let length = buffer.count
        if length <= 4 { return Self.hashLength0to4(buffer) }
        if length <= 12 { return Self.hashLength5to12(buffer) }
        if length <= 24 { return Self.hashLength13to24(buffer) }
        return Self.hashLongerThan24(buffer)
    }
}

// MARK: - Building blocks (from MurmurHash3)

extension FarmHash {
    @usableFromInline static let c1: UInt32 = 0xCC9E_2D51
    @usableFromInline static let c2: UInt32 = 0x1B87_3593

    /// A little-endian 32-bit word at `offset`, at any alignment.
    @inlinable @inline(__always)
    static func fetch(_ buffer: UnsafeRawBufferPointer, _ offset: Int) -> UInt32 {
        UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    /// FarmHash's `Rotate32`: a rotation to the right.
    @inlinable @inline(__always)
    static func rotate(_ value: UInt32, _ shift: UInt32) -> UInt32 {
        (value >> shift) | (value << (32 &- shift))
    }

    /// MurmurHash3's 32-bit finaliser.
    @inlinable @inline(__always)
    static func fmix(_ value: UInt32) -> UInt32 {
        var h = value
        h ^= h >> 16
        h &*= 0x85EB_CA6B
        h ^= h >> 13
        h &*= 0xC2B2_AE35
        h ^= h >> 16
        return h
    }

    /// MurmurHash3's step combining a word `a` into the state `h`.
    @inlinable @inline(__always)
    static func mur(_ a: UInt32, _ h: UInt32) -> UInt32 {
        var a = a &* Self.c1
        a = Self.rotate(a, 17)
        a &*= Self.c2
        var h = h ^ a
        h = Self.rotate(h, 19)
        return h &* 5 &+ 0xE654_6B64
    }
}

// MARK: - Length classes

extension FarmHash {
    @inlinable
    static func hashLength0to4(_ s: UnsafeRawBufferPointer) -> UInt32 {
        var b: UInt32 = 0
        var c: UInt32 = 9
        for byte in s {
            // The reference reads bytes as `signed char`: bytes ≥ 0x80 are sign-extended.
            let v = UInt32(bitPattern: Int32(Int8(bitPattern: byte)))
            b = b &* Self.c1 &+ v
            c ^= b
        }
        return Self.fmix(Self.mur(b, Self.mur(UInt32(s.count), c)))
    }

    @inlinable
    static func hashLength5to12(_ s: UnsafeRawBufferPointer) -> UInt32 {
        let length = UInt32(s.count)
        var a = length
        var b = length &* 5
        var c: UInt32 = 9
        let d = b
        a &+= Self.fetch(s, 0)
        b &+= Self.fetch(s, s.count - 4)
        c &+= Self.fetch(s, (s.count >> 1) & 4)
        return Self.fmix(Self.mur(c, Self.mur(b, Self.mur(a, d))))
    }

    @inlinable
    static func hashLength13to24(_ s: UnsafeRawBufferPointer) -> UInt32 {
        let count = s.count
        var a = Self.fetch(s, (count >> 1) - 4)
        let b = Self.fetch(s, 4)
        let c = Self.fetch(s, count - 8)
        let d = Self.fetch(s, count >> 1)
        let e = Self.fetch(s, 0)
        let f = Self.fetch(s, count - 4)
        var h = d &* Self.c1 &+ UInt32(count)
        a = Self.rotate(a, 12) &+ f
        h = Self.mur(c, h) &+ a
        a = Self.rotate(a, 3) &+ c
        h = Self.mur(e, h) &+ a
        a = Self.rotate(a &+ f, 12) &+ d
        h = Self.mur(b, h) &+ a
        return Self.fmix(h)
    }

    @inlinable
    static func hashLongerThan24(_ s: UnsafeRawBufferPointer) -> UInt32 {
        let count = s.count
        var h = UInt32(truncatingIfNeeded: count)
        var g = Self.c1 &* h
        var f = g
        let a0 = Self.rotate(Self.fetch(s, count - 4) &* Self.c1, 17) &* Self.c2
        let a1 = Self.rotate(Self.fetch(s, count - 8) &* Self.c1, 17) &* Self.c2
        let a2 = Self.rotate(Self.fetch(s, count - 16) &* Self.c1, 17) &* Self.c2
        let a3 = Self.rotate(Self.fetch(s, count - 12) &* Self.c1, 17) &* Self.c2
        let a4 = Self.rotate(Self.fetch(s, count - 20) &* Self.c1, 17) &* Self.c2
        h ^= a0
        h = Self.rotate(h, 19)
        h = h &* 5 &+ 0xE654_6B64
        h ^= a2
        h = Self.rotate(h, 19)
        h = h &* 5 &+ 0xE654_6B64
        g ^= a1
        g = Self.rotate(g, 19)
        g = g &* 5 &+ 0xE654_6B64
        g ^= a3
        g = Self.rotate(g, 19)
        g = g &* 5 &+ 0xE654_6B64
        f &+= a4
        f = Self.rotate(f, 19) &+ 113
        var iterations = (count - 1) / 20
        var offset = 0
        repeat {
            let a = Self.fetch(s, offset)
            let b = Self.fetch(s, offset + 4)
            let c = Self.fetch(s, offset + 8)
            let d = Self.fetch(s, offset + 12)
            let e = Self.fetch(s, offset + 16)
            h &+= a
            g &+= b
            f &+= c
            h = Self.mur(d, h) &+ e
            g = Self.mur(c, g) &+ a
            f = Self.mur(b &+ e &* Self.c1, f) &+ d
            f &+= g
            g &+= f
            offset += 20
            iterations -= 1
        } while iterations != 0
        g = Self.rotate(g, 11) &* Self.c1
        g = Self.rotate(g, 17) &* Self.c1
        f = Self.rotate(f, 11) &* Self.c1
        f = Self.rotate(f, 17) &* Self.c1
        h = Self.rotate(h &+ g, 19)
        h = h &* 5 &+ 0xE654_6B64
        h = Self.rotate(h, 17) &* Self.c1
        h = Self.rotate(h &+ f, 19)
        h = h &* 5 &+ 0xE654_6B64
        h = Self.rotate(h, 17) &* Self.c1
        return h
    }
}
