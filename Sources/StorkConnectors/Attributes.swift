import Foundation
import StorkCore

// MARK: - ConnectorAttributes
//
// Reading a resource's attributes with errors that name the resource, the kind and the attribute. Connectors only
// read the attributes they know; everything else on a resource (an owner, a tenant, a label) is left alone.

/// A resource's attributes, read for one connector kind. Every error is a `StorkError(.invalidInput)` like
/// `resource acct-42 (websocket): 'url' must be a ws:// or wss:// URL, got 'http://x'`.
public struct ConnectorAttributes: Sendable {
    public let resource: Resource
    public let kind: String

    public init(_ resource: Resource, kind: String) {
        self.resource = resource
        self.kind = kind
    }

    /// An error about attribute `key`.
    public func error(_ key: String, _ message: String) -> StorkError {
        StorkError(.invalidInput, "resource \(self.resource.id) (\(self.kind)): '\(key)' \(message)")
    }

    /// A required non-empty string.
    public func string(_ key: String) throws -> String {
        guard let value = try self.optionalString(key) else { throw self.error(key, "is required") }
        return value
    }

    /// A non-empty string, if the attribute is present (and not null).
    public func optionalString(_ key: String) throws -> String? {
        switch self.resource.attributes[key] {
        case nil, .null?:
            return nil
        case .string(let value)?:
            guard !value.isEmpty else { throw self.error(key, "must not be empty") }
            return value
        case let other?:
            throw self.error(key, "must be a string, got \(other)")
        }
    }

    /// A URL with one of `schemes` and a host.
    public func url(_ key: String, schemes: [String]) throws -> String {
        let text = try self.string(key)
        let expected = schemes.map { "\($0)://" }.joined(separator: " or ")
        guard let url = URL(string: text), let scheme = url.scheme?.lowercased(), schemes.contains(scheme),
            let host = url.host, !host.isEmpty
        else {
            throw self.error(key, "must be a \(expected) URL, got '\(text)'")
        }
        return text
    }

    /// A NATS subject to publish on (no wildcards), or, with `wildcards`, to subscribe to.
    public func subject(_ key: String, wildcards: Bool = false) throws -> String {
        let text = try self.string(key)
        if let problem = Self.subjectProblem(text, wildcards: wildcards) { throw self.error(key, problem) }
        return text
    }

    /// A subject, if the attribute is present.
    public func optionalSubject(_ key: String, wildcards: Bool = false) throws -> String? {
        guard self.resource.attributes[key] != nil, self.resource.attributes[key] != .null else { return nil }
        return try self.subject(key, wildcards: wildcards)
    }

    /// A duration in seconds (a number, or a string like `500ms`, `10s`, `2m`), `fallback` when absent, within
    /// `range` (in seconds).
    public func seconds(_ key: String, default fallback: Duration, range: ClosedRange<Double>) throws -> Duration {
        try self.optionalSeconds(key, range: range) ?? fallback
    }

    /// A duration in seconds, if the attribute is present.
    public func optionalSeconds(_ key: String, range: ClosedRange<Double>) throws -> Duration? {
        let seconds: Double
        switch self.resource.attributes[key] {
        case nil, .null?:
            return nil
        case .number(let value)?:
            seconds = value
        case .string(let text)?:
            guard let value = Self.parseSeconds(text) else {
                throw self.error(key, "must be a number of seconds (or like 500ms, 10s, 2m), got '\(text)'")
            }
            seconds = value
        case let other?:
            throw self.error(key, "must be a number of seconds, got \(other)")
        }
        guard seconds.isFinite, range.contains(seconds) else {
            throw self.error(
                key,
                "must be between \(Self.format(range.lowerBound)) and \(Self.format(range.upperBound)) seconds, got \(Self.format(seconds))"
            )
        }
        return .nanoseconds(Int64((seconds * 1e9).rounded()))
    }

    /// A whole number within `range`, `fallback` when absent.
    public func integer(_ key: String, default fallback: Int, range: ClosedRange<Int>) throws -> Int {
        switch self.resource.attributes[key] {
        case nil, .null?:
            return fallback
        case .number(let value)? where value.rounded() == value && abs(value) < 1e15:
            guard range.contains(Int(value)) else {
                throw self.error(key, "must be between \(range.lowerBound) and \(range.upperBound), got \(Int(value))")
            }
            return Int(value)
        case let other?:
            throw self.error(key, "must be a whole number, got \(other)")
        }
    }

    /// One of `choices`, `fallback` when absent.
    public func choice(_ key: String, _ choices: [String], default fallback: String) throws -> String {
        guard let value = try self.optionalString(key) else { return fallback }
        guard choices.contains(value) else {
            throw self.error(key, "must be one of \(choices.joined(separator: ", ")), got '\(value)'")
        }
        return value
    }

    /// HTTP headers: an object whose values are strings or `{"secret": "NAME"}` references.
    public func headers(_ key: String = "headers") throws -> [ConnectorHeader] {
        switch self.resource.attributes[key] {
        case nil, .null?:
            return []
        case .object(let fields)?:
            return try fields.sorted { $0.key < $1.key }.map { name, value in
                guard !name.isEmpty, name.utf8.allSatisfy(Self.isTokenByte) else {
                    throw self.error(key, "has a header name that is not an HTTP token: '\(name)'")
                }
                switch value {
                case .string(let text):
                    guard !text.contains(where: { $0 == "\r" || $0 == "\n" || $0 == "\0" }) else {
                        throw self.error(key, "header '\(name)' has a line break in its value")
                    }
                    return ConnectorHeader(name: name, value: .literal(text))
                case .object(let reference) where reference.count == 1:
                    guard case .string(let secret)? = reference["secret"], !secret.isEmpty else {
                        throw self.error(key, "header '\(name)' must be a string or {\"secret\": \"NAME\"}")
                    }
                    return ConnectorHeader(name: name, value: .secret(secret))
                default:
                    throw self.error(key, "header '\(name)' must be a string or {\"secret\": \"NAME\"}")
                }
            }
        case let other?:
            throw self.error(key, "must be an object of header names to values, got \(other)")
        }
    }

    // MARK: Helpers

    /// Why `subject` is not a valid subject, or nil. Publish subjects have no wildcards.
    static func subjectProblem(_ subject: String, wildcards: Bool) -> String? {
        guard subject.utf8.count <= 1024 else { return "is longer than 1024 bytes" }
        if subject.contains(where: { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" }) {
            return "must be a subject without spaces, got '\(subject)'"
        }
        let tokens = subject.split(separator: ".", omittingEmptySubsequences: false)
        for (index, token) in tokens.enumerated() {
            if token.isEmpty { return "must be a subject like 'feeds.acct-42' (no empty tokens), got '\(subject)'" }
            if token == "*" || token == ">" || token.contains("*") || token.contains(">") {
                guard wildcards else { return "must be a subject without wildcards, got '\(subject)'" }
                if token.count > 1 { return "has a wildcard inside a token: '\(subject)'" }
                if token == ">" && index != tokens.count - 1 {
                    return "may have '>' only as its last token: '\(subject)'"
                }
            }
        }
        return nil
    }

    /// "1.5", "500ms", "10s", "2m", "1h" in seconds.
    static func parseSeconds(_ text: String) -> Double? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        for (suffix, scale) in [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)] where trimmed.hasSuffix(suffix) {
            if let value = Double(trimmed.dropLast(suffix.count)) { return value * scale }
        }
        return Double(trimmed)
    }

    static func format(_ seconds: Double) -> String {
        seconds.rounded() == seconds && abs(seconds) < 1e15 ? String(Int64(seconds)) : String(seconds)
    }

    static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }
}

// MARK: - Headers with secrets

/// One configured HTTP header of a connector.
public struct ConnectorHeader: Sendable, Hashable {
    public enum Value: Sendable, Hashable {
        /// The value as written in the attributes.
        case literal(String)
        /// A secret's name, resolved by ``ConnectorSecrets`` at every connect or poll (a rotated secret takes effect
        /// on the next one).
        case secret(String)
    }

    public var name: String
    public var value: Value

    public init(name: String, value: Value) {
        self.name = name
        self.value = value
    }
}

extension [ConnectorHeader] {
    /// The headers with every secret resolved.
    public func resolved(with secrets: ConnectorSecrets) throws -> [(name: String, value: String)] {
        try self.map { header in
            switch header.value {
            case .literal(let value): return (header.name, value)
            case .secret(let name): return (header.name, try secrets.resolve(name))
            }
        }
    }
}
