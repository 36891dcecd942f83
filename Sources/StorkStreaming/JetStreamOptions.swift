import StorkCore

// MARK: - Options Stork does not implement

/// Which keys of a stream or consumer configuration Stork acts on, and the refusal for any other.
///
/// NATS clients send whole configurations, with every option they know at its default (nats.go sends
/// `"allow_direct": false`, nats-py `"mirror_direct": false`, newer clients keys that did not exist when Stork was
/// written). An option at its default asks for nothing, so it is accepted; an option set to anything else is refused
/// with an error that names it, never accepted and ignored. Keys a configuration carries that Stork does act on are
/// listed here; `JetStreamAPI` enforces their values.
public enum JetStreamOptions {
    /// Stream configuration keys Stork enforces.
    public static let streamKeys: Set<String> = [
        "name", "description", "subjects", "retention", "max_consumers", "max_msgs", "max_bytes", "max_age",
        "max_msg_size", "max_msgs_per_subject", "storage", "discard", "num_replicas", "no_ack", "duplicate_window",
        "sealed", "deny_delete", "deny_purge", "allow_rollup_hdrs", "stork_store",
    ]

    /// Consumer configuration keys Stork enforces.
    public static let consumerKeys: Set<String> = [
        "name", "durable_name", "description", "deliver_subject", "deliver_group", "deliver_policy", "opt_start_seq",
        "opt_start_time", "ack_policy", "ack_wait", "max_deliver", "filter_subject", "filter_subjects",
        "replay_policy", "max_waiting", "max_ack_pending", "backoff", "headers_only", "inactive_threshold",
        "idle_heartbeat", "flow_control", "num_replicas", "mem_storage",
    ]

    /// Why a stream configuration (the JSON object of a create or update request) cannot be served; nil when every
    /// option it sets is one Stork enforces.
    public static func streamRefusal(_ config: [String: JSONValue]) -> String? {
        if let retention = config["retention"], !Self.isDefault(retention), retention != .string("limits") {
            return "retention \(retention) is not supported: Stork streams keep messages by their limits only "
                + "(retention \"limits\")"
        }
        if let refusal = Self.replicasRefusal(config["num_replicas"]) { return refusal }
        return Self.unknownRefusal(config, known: Self.streamKeys, what: "stream")
    }

    /// Why a consumer configuration (the `config` object of a create request) cannot be served; nil when every
    /// option it sets is one Stork enforces.
    public static func consumerRefusal(_ config: [String: JSONValue]) -> String? {
        if let replay = config["replay_policy"], !Self.isDefault(replay), replay != .string("instant") {
            return "replay_policy \(replay) is not supported: Stork delivers as fast as the consumer takes messages "
                + "(replay_policy \"instant\")"
        }
        if let refusal = Self.replicasRefusal(config["num_replicas"]) { return refusal }
        if let memory = config["mem_storage"], !Self.isDefault(memory) {
            return "mem_storage is not supported: a consumer's state is kept where its stream is"
        }
        return Self.unknownRefusal(config, known: Self.consumerKeys, what: "consumer")
    }

    private static func replicasRefusal(_ value: JSONValue?) -> String? {
        guard let value, !Self.isDefault(value), value != .number(1) else { return nil }
        return "num_replicas \(value) is not supported: Stork keeps one copy of a stream in its store; put the stream "
            + "on a shared store (stork_store \"postgres\") for it to outlive its node"
    }

    private static func unknownRefusal(_ config: [String: JSONValue], known: Set<String>, what: String) -> String? {
        for key in config.keys.sorted() where !known.contains(key) && !Self.isDefault(config[key]!) {
            return "\(what) option \"\(key)\" is not supported by Stork"
        }
        return nil
    }

    /// Null, false, zero, an empty string or list, an object of such values: what a client sends for an option it
    /// does not use.
    public static func isDefault(_ value: JSONValue) -> Bool {
        switch value {
        case .null: return true
        case .bool(let flag): return !flag
        case .number(let number): return number == 0
        case .string(let text): return text.isEmpty
        case .array(let items): return items.isEmpty
        case .object(let fields): return fields.values.allSatisfy(Self.isDefault)
        }
    }
}
