import NIOCore

// MARK: - BusMessage

/// A message on the bus, in no wire format: where it was published, where replies go, its headers as fields (nil
/// for none) and its payload bytes. Payloads are slices of what was read; nothing is copied on the way.
public struct BusMessage: Sendable {
    public var subject: String
    public var replyTo: String?
    public var headers: MessageHeaders?
    public var payload: ByteBuffer

    public init(subject: String, replyTo: String? = nil, headers: MessageHeaders? = nil, payload: ByteBuffer) {
        self.subject = subject
        self.replyTo = replyTo
        self.headers = headers
        self.payload = payload
    }

    /// The size that counts against limits and in statistics: payload and header block.
    public var size: Int { self.payload.readableBytes + (self.headers?.encodedSize ?? 0) }
}
