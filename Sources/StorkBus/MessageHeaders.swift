import NIOCore

// MARK: - MessageHeaders

/// A message's headers as fields: an optional status (`503` no responders, `404`/`408` from a pull request) with its
/// description, and name/value pairs in order (a name may repeat). Names keep their case; lookups ignore it.
///
/// Stored and carried between nodes as a NATS header block (`NATS/1.0[ <status>[ <description>]]\r\n`, then
/// `Name: Value\r\n` lines and a blank line), the format JetStream keeps in its streams. A message parsed from a block
/// keeps the block as it was read, so that headers passed on unchanged are forwarded byte for byte and never encoded
/// again; changing any field encodes the block anew (once per change, not once per delivery).
public struct MessageHeaders: Sendable, Equatable {
    /// One reference, so that a message without headers (nil) or with them stays small and cheap to copy: the router
    /// copies messages on every delivery. Copied on write.
    private final class Storage: @unchecked Sendable {
        var status: Int?
        var statusDescription: String?
        var fields: [(name: String, value: String)]
        /// The block these fields were read from, or their encoding: always in step with the fields.
        var block: ByteBuffer

        init(status: Int?, statusDescription: String?, fields: [(name: String, value: String)], block: ByteBuffer) {
            self.status = status
            self.statusDescription = statusDescription
            self.fields = fields
            self.block = block
        }

        func copy() -> Storage {
            Storage(status: self.status, statusDescription: self.statusDescription, fields: self.fields, block: self.block)
        }
    }

    private var storage: Storage

    /// Changing a field replaces the block it came from with the fields' encoding.
    private mutating func change(_ body: (Storage) -> Void) {
        if !isKnownUniquelyReferenced(&self.storage) { self.storage = self.storage.copy() }
        body(self.storage)
        self.storage.block = Self.encode(
            status: self.storage.status,
            statusDescription: self.storage.statusDescription,
            fields: self.storage.fields
        )
    }

    public var status: Int? {
        get { self.storage.status }
        set { self.change { $0.status = newValue } }
    }

    public var statusDescription: String? {
        get { self.storage.statusDescription }
        set { self.change { $0.statusDescription = newValue } }
    }

    /// Fields in order; names keep their case, lookups ignore it.
    public var fields: [(name: String, value: String)] {
        get { self.storage.fields }
        set { self.change { $0.fields = newValue } }
    }

    public init(status: Int? = nil, statusDescription: String? = nil, fields: [(name: String, value: String)] = []) {
        self.storage = Storage(
            status: status,
            statusDescription: statusDescription,
            fields: fields,
            block: Self.encode(status: status, statusDescription: statusDescription, fields: fields)
        )
    }

    public static func == (lhs: MessageHeaders, rhs: MessageHeaders) -> Bool {
        lhs.status == rhs.status && lhs.statusDescription == rhs.statusDescription
            && lhs.fields.elementsEqual(rhs.fields) { $0.name == $1.name && $0.value == $1.value }
    }

    /// The first value of `name` (case-insensitive).
    public subscript(_ name: String) -> String? {
        self.fields.first { $0.name.utf8.count == name.utf8.count && $0.name.lowercased() == name.lowercased() }?.value
    }

    /// Every value of `name` (case-insensitive), in order.
    public func values(_ name: String) -> [String] {
        let lowered = name.lowercased()
        return self.fields.filter { $0.name.lowercased() == lowered }.map(\.value)
    }

    /// Whether there is neither a status nor any field.
    public var isEmpty: Bool { self.status == nil && self.fields.isEmpty }

    /// Parses a header block; nil when it does not start with `NATS/1.0`.
    public static func parse(_ buffer: ByteBuffer) -> MessageHeaders? {
        guard buffer.readableBytesView.starts(with: "NATS/1.0".utf8) else { return nil }
        return MessageHeaders(block: buffer)
    }

    /// The headers of a block as a client sent it: parsed leniently (lines without a colon are skipped, a block that
    /// does not start with `NATS/1.0` has no status), and kept as they are so that they are passed on byte for byte.
    public init(block: ByteBuffer) {
        var status: Int?
        var statusDescription: String?
        var fields: [(name: String, value: String)] = []
        let text = String(buffer: block)
        var lines = text.split(separator: "\r\n", omittingEmptySubsequences: false)[...]
        if let first = lines.popFirst(), first.hasPrefix("NATS/1.0") {
            let statusPart = first.dropFirst("NATS/1.0".count).drop { $0 == " " }
            if !statusPart.isEmpty {
                let code = statusPart.prefix { $0 != " " }
                status = Int(code)
                let description = statusPart.dropFirst(code.count).drop { $0 == " " }
                statusDescription = description.isEmpty ? nil : String(description)
            }
        }
        for line in lines where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].trimmingCharacters(in: " \t")
            let value = line[line.index(after: colon)...].trimmingCharacters(in: " \t")
            fields.append((name, value))
        }
        self.storage = Storage(status: status, statusDescription: statusDescription, fields: fields, block: block)
    }

    /// The header block as bytes: the one these headers were read from while unchanged, else their encoding (made
    /// when they were built or changed, so that routing a message to many subscribers encodes nothing).
    public var encoded: ByteBuffer { self.storage.block }

    /// Size of the header block in bytes (what counts against payload limits and in statistics).
    public var encodedSize: Int { self.storage.block.readableBytes }

    private static func encode(status: Int?, statusDescription: String?, fields: [(name: String, value: String)]) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeStaticString("NATS/1.0")
        if let status {
            buffer.writeString(" \(status)")
            if let statusDescription { buffer.writeString(" \(statusDescription)") }
        }
        buffer.writeStaticString("\r\n")
        for field in fields {
            buffer.writeString(field.name)
            buffer.writeStaticString(": ")
            buffer.writeString(field.value)
            buffer.writeStaticString("\r\n")
        }
        buffer.writeStaticString("\r\n")
        return buffer
    }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var view = self
        while let first = view.first, set.contains(first) { view = view.dropFirst() }
        while let last = view.last, set.contains(last) { view = view.dropLast() }
        return String(view)
    }
}
