// MARK: - DeterministicMath

/// Math that gives bit-identical results on every platform.
///
/// Weighted placement compares logarithms computed on different nodes; the C library's `log` may differ in the last
/// bit between platforms and versions, which would make two nodes disagree about an owner in rare near-ties. This
/// uses only IEEE 754 addition, multiplication and division (exactly rounded everywhere) in a fixed order.
enum DeterministicMath {
    /// ln 2, split so that `exponent * ln2High` is exact for any exponent of a `Double`.
    static let ln2High = 6.931_471_803_691_238_164_90e-01
    static let ln2Low = 1.908_214_929_270_587_700_02e-10

    /// `-ln(x)` for `x` in (0, 1], accurate to about one unit in the last place.
    @inline(__always)
    static func negativeLog(_ x: Double) -> Double {
        -Self.log(x)
    }

    /// The natural logarithm of a positive, finite, normal `x`.
    @inline(__always)
    static func log(_ x: Double) -> Double {
        assert(x.isNormal && x > 0, "log of \(x)")
        // x = m · 2^e with m in [√½, √2), so that s below is small; read straight from the bits.
        let bits = x.bitPattern
        var exponent = Double(Int((bits >> 52) & 0x7FF) - 1023)
        var m = Double(bitPattern: (bits & 0x000F_FFFF_FFFF_FFFF) | 0x3FF0_0000_0000_0000)  // in [1, 2)
        if m > 1.414_213_562_373_095_048_80 {
            m *= 0.5
            exponent += 1
        }
        // ln(m) = 2·atanh(s) = 2(s + s³/3 + s⁵/5 + …), s = (m − 1)/(m + 1), |s| < 0.1716.
        let s = (m - 1) / (m + 1)
        let s2 = s * s
        // Terms up to s²³/23: the next term is below 2⁻⁵⁸ of the sum.
        var series = 1.0 / 23.0
        series = series * s2 + 1.0 / 21.0
        series = series * s2 + 1.0 / 19.0
        series = series * s2 + 1.0 / 17.0
        series = series * s2 + 1.0 / 15.0
        series = series * s2 + 1.0 / 13.0
        series = series * s2 + 1.0 / 11.0
        series = series * s2 + 1.0 / 9.0
        series = series * s2 + 1.0 / 7.0
        series = series * s2 + 1.0 / 5.0
        series = series * s2 + 1.0 / 3.0
        let lnM = 2 * s + 2 * s * s2 * series
        return exponent * Self.ln2High + (exponent * Self.ln2Low + lnM)
    }
}
