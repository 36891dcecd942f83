import NIOCore

// MARK: - MessageHeaders

/// A message's headers as fields: an optional status (`503` no responders, `404`/`408` from a pull request) with its
/// description, and name/value pairs in order (a name may repeat). Names keep their case; lookups ignore it.
///
/// Stored and carried between nodes as a NATS header block (`NATS/1.0[ <status>[ <description>]]\r\n`, then
/// `Name: Value\r\n` lines and a blank line), the format JetStream keeps in its streams. A message parsed from a block
/// keeps the block as it was read, so that headers passed on unchanged are forwarded byte for byte and never encoded
/// again; changing any field drops it.
public struct MessageHeaders: Sendable, Equatable {
    public var status: Int? { didSet { self.block = nil } }
    public var statusDescription: String? { didSet { self.block = nil } }
    /// Fields in order; names keep their case, lookups ignore it.
    public var fields: [(name: String, value: String)] { didSet { self.block = nil } }
    /// The header block these fields came from (or were last encoded to); nil after a change.
    private var block: ByteBuffer?

    public init(status: Int? = nil, statusDescription: String? = nil, fields: [(name: String, value: String)] = []) {
        self.status = status
        self.statusDescription = statusDescription
        self.fields = fields
        self.block = nil
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
        self.init()
        let text = String(buffer: block)
        var lines = text.split(separator: "\r\n", omittingEmptySubsequences: false)[...]
        if let first = lines.popFirst(), first.hasPrefix("NATS/1.0") {
            let statusPart = first.dropFirst("NATS/1.0".count).drop { $0 == " " }
            if !statusPart.isEmpty {
                let code = statusPart.prefix { $0 != " " }
                self.status = Int(code)
                let description = statusPart.dropFirst(code.count).drop { $0 == " " }
                self.statusDescription = description.isEmpty ? nil : String(description)
            }
        }
        for line in lines where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].trimmingCharacters(in: " \t")
            let value = line[line.index(after: colon)...].trimmingCharacters(in: " \t")
            self.fields.append((name, value))
        }
        self.block = block
    }

    /// The header block as bytes: the one these headers were read from while unchanged, else encoded.
    public var encoded: ByteBuffer {
        if let block { return block }
        var buffer = ByteBuffer()
        buffer.writeStaticString("NATS/1.0")
        if let status {
            buffer.writeString(" \(status)")
            if let statusDescription { buffer.writeString(" \(statusDescription)") }
        }
        buffer.writeStaticString("\r\n")
        for field in self.fields {
            buffer.writeString(field.name)
            buffer.writeStaticString(": ")
            buffer.writeString(field.value)
            buffer.writeStaticString("\r\n")
        }
        buffer.writeStaticString("\r\n")
        return buffer
    }

    /// Size of the header block in bytes (what counts against payload limits and in statistics).
    public var encodedSize: Int { self.block?.readableBytes ?? self.encoded.readableBytes }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var view = self
        while let first = view.first, set.contains(first) { view = view.dropFirst() }
        while let last = view.last, set.contains(last) { view = view.dropLast() }
        return String(view)
    }
}
