import Foundation
import StorkCore

// MARK: - HTTPPollStateMachine
//
// The decisions of the `http-poll` connector, without I/O: which conditional headers to send, whether a response is
// news, and how long to wait before the next poll. The connector does the requests and the waiting.

/// What one `http-poll` resource knows between polls: its validators, the hash of the last body, its backoff.
public struct HTTPPollStateMachine: Sendable {
    /// `publish` attribute: publish changed bodies only, or every successful poll's body.
    public enum PublishMode: String, Sendable, Hashable, CaseIterable {
        case changes, always
    }

    /// One poll's answer, as far as the decisions need it.
    public struct Response: Sendable, Hashable {
        public var status: Int
        public var etag: String?
        public var lastModified: String?
        public var retryAfter: String?
        /// A digest of the body (any stable hash; the connector uses SHA-256).
        public var bodyHash: [UInt8]

        public init(
            status: Int,
            etag: String? = nil,
            lastModified: String? = nil,
            retryAfter: String? = nil,
            bodyHash: [UInt8] = []
        ) {
            self.status = status
            self.etag = etag
            self.lastModified = lastModified
            self.retryAfter = retryAfter
            self.bodyHash = bodyHash
        }
    }

    /// What to do after a poll.
    public enum Action: Sendable, Hashable {
        /// Publish the body; poll again after the duration.
        case publish(after: Duration)
        /// Nothing new (304, or the same body); poll again after the duration.
        case unchanged(after: Duration)
        /// The poll failed (`reason` is for people); poll again after the duration (backoff, or `Retry-After`).
        case retry(after: Duration, reason: String)
    }

    public let interval: Duration
    public let publish: PublishMode
    public private(set) var etag: String?
    public private(set) var lastModified: String?
    public private(set) var lastBodyHash: [UInt8]?
    public private(set) var backoff: ConnectorBackoff

    public init(interval: Duration, publish: PublishMode, backoff: ConnectorBackoff) {
        self.interval = interval
        self.publish = publish
        self.backoff = backoff
    }

    /// `If-None-Match` and `If-Modified-Since` for the next request (none when every body is published).
    public func conditionalHeaders() -> [(name: String, value: String)] {
        guard self.publish == .changes else { return [] }
        var headers: [(name: String, value: String)] = []
        if let etag = self.etag { headers.append(("If-None-Match", etag)) }
        if let lastModified = self.lastModified { headers.append(("If-Modified-Since", lastModified)) }
        return headers
    }

    /// A response arrived.
    public mutating func received(_ response: Response, now: Date) -> Action {
        switch response.status {
        case 200..<300:
            self.backoff.reset()
            // The validators of the body just received; ones the server stopped sending are not sent back.
            self.etag = response.etag
            self.lastModified = response.lastModified
            let changed = self.lastBodyHash != response.bodyHash
            self.lastBodyHash = response.bodyHash
            if changed || self.publish == .always { return .publish(after: self.interval) }
            return .unchanged(after: self.interval)
        case 304:
            self.backoff.reset()
            if let etag = response.etag { self.etag = etag }
            if let lastModified = response.lastModified { self.lastModified = lastModified }
            return .unchanged(after: self.interval)
        case 429, 503:
            let backoff = self.backoff.nextDelay()
            let reason =
                "HTTP \(response.status)" + (response.status == 429 ? " Too Many Requests" : " Service Unavailable")
            guard let retryAfter = response.retryAfter.flatMap({ Self.retryAfter($0, now: now) }) else {
                return .retry(after: backoff, reason: reason)
            }
            return .retry(after: max(retryAfter, self.backoff.minimum), reason: reason + ", Retry-After \(retryAfter)")
        default:
            return .retry(after: self.backoff.nextDelay(), reason: "HTTP \(response.status)")
        }
    }

    /// The request failed (connection, timeout, body too large, a secret that is not set).
    public mutating func failed(_ reason: String) -> Action {
        .retry(after: self.backoff.nextDelay(), reason: reason)
    }

    /// A `Retry-After` value: seconds, or an HTTP date (then the time until it, zero if past). At most one day.
    public static func retryAfter(_ value: String, now: Date) -> Duration? {
        let trimmed = value.trimmingCharacters(in: .whitespaces)
        if let seconds = Int(trimmed), seconds >= 0 {
            return .seconds(min(seconds, 86_400))
        }
        guard let date = Self.httpDate(trimmed) else { return nil }
        let seconds = min(max(0, date.timeIntervalSince(now)), 86_400)
        return .nanoseconds(Int64((seconds * 1e9).rounded()))
    }

    /// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), or the obsolete RFC 850 and asctime forms.
    static func httpDate(_ text: String) -> Date? {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        for format in ["EEE, dd MMM yyyy HH:mm:ss zzz", "EEEE, dd-MMM-yy HH:mm:ss zzz", "EEE MMM d HH:mm:ss yyyy"] {
            formatter.dateFormat = format
            if let date = formatter.date(from: text) { return date }
        }
        return nil
    }
}
