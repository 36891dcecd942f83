import Foundation
import StorkBus

// MARK: - Monitoring documents

// The JSON of nats-server's monitoring endpoints, for the fields NATS tools read. Keys are snake_case as in NATS.

/// `/varz`.
public struct NATSVarz: Codable, Sendable {
    public var serverID: String
    public var serverName: String
    public var version: String
    public var host: String
    public var port: Int
    public var maxPayload: Int
    public var maxControlLine: Int
    public var maxPending: Int
    public var maxConnections: Int
    /// Nanoseconds, as nats-server reports it.
    public var pingInterval: Int64
    public var pingMax: Int
    public var authRequired: Bool
    public var jetstream: Bool
    public var start: String
    public var now: String
    public var uptime: String
    public var cores: Int
    public var connections: Int
    public var totalConnections: Int
    public var inMsgs: Int
    public var outMsgs: Int
    public var inBytes: Int
    public var outBytes: Int
    public var slowConsumers: Int
    public var subscriptions: Int

    enum CodingKeys: String, CodingKey {
        case serverID = "server_id"
        case serverName = "server_name"
        case version, host, port
        case maxPayload = "max_payload"
        case maxControlLine = "max_control_line"
        case maxPending = "max_pending"
        case maxConnections = "max_connections"
        case pingInterval = "ping_interval"
        case pingMax = "ping_max"
        case authRequired = "auth_required"
        case jetstream
        case start, now, uptime, cores, connections
        case totalConnections = "total_connections"
        case inMsgs = "in_msgs"
        case outMsgs = "out_msgs"
        case inBytes = "in_bytes"
        case outBytes = "out_bytes"
        case slowConsumers = "slow_consumers"
        case subscriptions
    }
}

/// `/connz`.
public struct NATSConnz: Codable, Sendable {
    public struct Connection: Codable, Sendable {
        public var cid: UInt64
        public var ip: String
        public var port: Int
        public var start: String
        public var lastActivity: String
        public var uptime: String
        public var idle: String
        public var pendingBytes: Int
        public var inMsgs: Int
        public var outMsgs: Int
        public var inBytes: Int
        public var outBytes: Int
        public var subscriptions: Int
        public var name: String?
        public var lang: String?
        public var version: String?
        public var subscriptionsList: [String]?

        enum CodingKeys: String, CodingKey {
            case cid, ip, port, start
            case lastActivity = "last_activity"
            case uptime, idle
            case pendingBytes = "pending_bytes"
            case inMsgs = "in_msgs"
            case outMsgs = "out_msgs"
            case inBytes = "in_bytes"
            case outBytes = "out_bytes"
            case subscriptions, name, lang, version
            case subscriptionsList = "subscriptions_list"
        }
    }

    public var serverID: String
    public var now: String
    public var numConnections: Int
    public var total: Int
    public var offset: Int
    public var limit: Int
    public var connections: [Connection]

    enum CodingKeys: String, CodingKey {
        case serverID = "server_id"
        case now
        case numConnections = "num_connections"
        case total, offset, limit, connections
    }
}

/// `/subsz`.
public struct NATSSubsz: Codable, Sendable {
    public var serverID: String
    public var now: String
    public var numSubscriptions: Int

    enum CodingKeys: String, CodingKey {
        case serverID = "server_id"
        case now
        case numSubscriptions = "num_subscriptions"
    }
}

/// Times and durations as nats-server writes them: RFC 3339 with fractional seconds, and `1h2m3s`.
enum NATSMonitorTime {
    static func format(_ date: Date) -> String {
        JetStreamTime.format(date)
    }

    static func duration(_ seconds: Double) -> String {
        var rest = Int(max(0, seconds))
        let days = rest / 86400
        rest %= 86400
        let hours = rest / 3600
        rest %= 3600
        let minutes = rest / 60
        let secs = rest % 60
        var text = ""
        if days > 0 { text += "\(days)d" }
        if hours > 0 || days > 0 { text += "\(hours)h" }
        if minutes > 0 || hours > 0 || days > 0 { text += "\(minutes)m" }
        return text + "\(secs)s"
    }
}
