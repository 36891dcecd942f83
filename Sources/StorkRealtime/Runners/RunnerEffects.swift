import StorkCore

// MARK: - RunnerEffects
//
// Everything a run does to the world goes through the host: HTTP requests, publishing, subscribing, waiting and
// reading the time. The gateway implements this with its HTTP client, the message server and the process clock; tests
// implement it with fakes and a manual clock. Nothing in the engine does I/O or reads a clock.

/// An HTTP request an `http` node asks the host to make.
public struct RunnerHTTPRequest: Sendable, Hashable {
    public var method: String
    public var url: String
    /// Header names as the definition wrote them.
    public var headers: [String: String]
    public var body: [UInt8]?
    /// How long the host should wait for the response; nil leaves it to the host.
    public var timeout: Duration?

    public init(
        method: String = "GET",
        url: String,
        headers: [String: String] = [:],
        body: [UInt8]? = nil,
        timeout: Duration? = nil
    ) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.timeout = timeout
    }
}

/// The host's answer to a `RunnerHTTPRequest`. Any status is an answer; only a request that got no response is an
/// error.
public struct RunnerHTTPResponse: Sendable, Hashable {
    public var status: Int
    /// Header names in lower case.
    public var headers: [String: String]
    public var body: [UInt8]

    public init(status: Int, headers: [String: String] = [:], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }
}

/// A message a `subscribe` node receives.
public struct RunnerMessage: Sendable, Hashable {
    public var subject: String
    /// The payload: the JSON value if the payload is JSON, else its text.
    public var data: JSONValue

    public init(subject: String, data: JSONValue) {
        self.subject = subject
        self.data = data
    }

    /// How the message appears as a stream item: `{"subject": …, "data": …}`.
    public var value: JSONValue {
        .object(["subject": .string(self.subject), "data": self.data])
    }
}

/// What a run may do outside the engine, provided by the host for each run (so that it can act as, and be limited
/// to, the user who started the run).
public protocol RunnerEffects: Sendable {
    /// Makes an HTTP request. Throws only when there is no response (connection refused, timeout, refused by policy).
    func http(_ request: RunnerHTTPRequest) async throws -> RunnerHTTPResponse

    /// Publishes `payload` (JSON) on `subject`. Throws when refused (e.g. by permission rules) or undeliverable.
    func publish(subject: String, payload: JSONValue) async throws

    /// Subscribes to `subject`. The engine iterates the stream while it wants messages and stops iterating when it
    /// has enough, when paused (messages wait in the stream's buffer, so choose its buffering policy), or when the run
    /// is cancelled; the host should unsubscribe in the stream's `onTermination`. Finishing the stream ends the
    /// subscription from the host's side (the node then fails if it wanted more).
    func subscribe(subject: String) async throws -> AsyncStream<RunnerMessage>

    /// Returns after `duration` on the host's clock. Must throw `CancellationError` (or return early) when the task
    /// is cancelled.
    func sleep(for duration: Duration) async throws

    /// The time, in milliseconds since 1970 (what conditions read as `now`).
    func now() -> Double
}
