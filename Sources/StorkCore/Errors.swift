// MARK: - StorkError

/// The error type of Stork: a machine-readable code, a message for people, and an optional underlying cause.
public struct StorkError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public var rawValue: String
        public init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { self.rawValue }

        /// Input from outside (a flag, a file, a frame, a body) could not be understood.
        public static let invalidInput = Code("invalid-input")
        /// The request was refused because the sender's and receiver's views of the cluster differ.
        public static let viewMismatch = Code("view-mismatch")
        /// The operation did not finish before its deadline.
        public static let timeout = Code("timeout")
        /// The resource handler reported a failure.
        public static let handlerFailed = Code("handler-failed")
        /// The resource source could not be read.
        public static let sourceFailed = Code("source-failed")
        /// The component is stopping or stopped.
        public static let shutdown = Code("shutdown")
        /// No member of the cluster can take the request.
        public static let noOwner = Code("no-owner")
        /// A store or service Stork depends on cannot be reached or failed.
        public static let unavailable = Code("unavailable")
        /// A client's connection or its handshake failed.
        public static let connectFailed = Code("connect-failed")
        /// A client's connection closed (by either side) before the operation completed.
        public static let connectionClosed = Code("connection-closed")
        /// A request's subject has no subscriber anywhere in the cluster (NATS status 503).
        public static let noResponders = Code("no-responders")
        /// A peer sent something that is not the protocol it should speak.
        public static let protocolError = Code("protocol-error")
        /// A subject (or queue group) that cannot be used: empty, or with whitespace.
        public static let invalidSubject = Code("invalid-subject")
    }

    public var code: Code
    public var message: String
    public var underlying: String?

    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying.map { String(describing: $0) }
    }

    public var description: String {
        if let underlying { return "\(self.code): \(self.message) (\(underlying))" }
        return "\(self.code): \(self.message)"
    }
}
