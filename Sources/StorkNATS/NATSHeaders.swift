import NIOCore

// MARK: - NATSHeaders

/// A NATS header block: `NATS/1.0[ <status>[ <description>]]\r\n` then `Name: Value\r\n` lines and a blank line.
public struct NATSHeaders: Sendable, Equatable {
    public var status: Int?
    public var statusDescription: String?
    /// Fields in order; names keep their case, lookups ignore it.
    public var fields: [(name: String, value: String)]

    public init(status: Int? = nil, statusDescription: String? = nil, fields: [(name: String, value: String)] = []) {
        self.status = status
        self.statusDescription = statusDescription
        self.fields = fields
    }

    public static func == (lhs: NATSHeaders, rhs: NATSHeaders) -> Bool {
        lhs.status == rhs.status && lhs.statusDescription == rhs.statusDescription
            && lhs.fields.elementsEqual(rhs.fields) { $0.name == $1.name && $0.value == $1.value }
    }

    /// The first value of `name` (case-insensitive).
    public subscript(_ name: String) -> String? {
        let lowered = name.lowercased()
        return self.fields.first { $0.name.lowercased() == lowered }?.value
    }

    /// Parses a header block; nil when it does not start with `NATS/1.0`.
    public static func parse(_ buffer: ByteBuffer) -> NATSHeaders? {
        let text = String(buffer: buffer)
        var lines = text.split(separator: "\r\n", omittingEmptySubsequences: false)[...]
        guard let first = lines.popFirst(), first.hasPrefix("NATS/1.0") else { return nil }
        var headers = NATSHeaders()
        let statusPart = first.dropFirst("NATS/1.0".count).drop { $0 == " " }
        if !statusPart.isEmpty {
            let code = statusPart.prefix { $0 != " " }
            headers.status = Int(code)
            let description = statusPart.dropFirst(code.count).drop { $0 == " " }
            headers.statusDescription = description.isEmpty ? nil : String(description)
        }
        for line in lines where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].trimmingCharacters(in: " \t")
            let value = line[line.index(after: colon)...].trimmingCharacters(in: " \t")
            headers.fields.append((name, value))
        }
        return headers
    }

    /// The header block as bytes.
    public var encoded: ByteBuffer {
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
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var view = self
        while let first = view.first, set.contains(first) { view = view.dropFirst() }
        while let last = view.last, set.contains(last) { view = view.dropLast() }
        return String(view)
    }
}
