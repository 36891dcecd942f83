import Foundation
import NIOCore

extension ByteBuffer {
    /// A non-negative integer in decimal, without allocating.
    @inlinable
    public mutating func writeDecimal(_ value: Int) {
        precondition(value >= 0, "negative size \(value)")
        if value < 10 {
            self.writeInteger(UInt8(truncatingIfNeeded: value) + UInt8(ascii: "0"))
            return
        }
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var count = 0
        var rest = value
        withUnsafeMutableBytes(of: &digits) { digits in
            while rest > 0 {
                digits[19 - count] = UInt8(truncatingIfNeeded: rest % 10) + UInt8(ascii: "0")
                rest /= 10
                count += 1
            }
            self.writeBytes(UnsafeRawBufferPointer(rebasing: digits[(20 - count)...]))
        }
    }
}

/// Times in JetStream's JSON: RFC 3339 with fractional seconds, as nats-server writes them.
public enum JetStreamTime {
    /// One shared, immutable format (a formatter per call showed up on the JetStream API paths).
    public static let style = Date.ISO8601FormatStyle(includingFractionalSeconds: true)

    public static func format(_ date: Date) -> String {
        date.formatted(self.style)
    }
}
