import StorkCore

// MARK: - Authenticators by configuration
//
// The gateway's configuration lists authenticators in the order they are asked:
//
//     authentication:
//       - type: users
//         file: users.yaml
//       - type: jwt
//         algorithm: HS256
//         secret: "…"
//         audience: my-app
//
// Each entry's `type` names a factory in an `AuthenticatorRegistry`; the factory reads the entry's other keys. The
// built-ins are `open`, `users`, `jwt` and `http`; a Swift user registers their own the same way.

/// What a factory may use besides its options: the I/O and time the gateway provides.
public struct AuthenticatorContext: Sendable {
    /// Reads a file named in the configuration (the gateway resolves relative paths against the configuration's
    /// directory).
    public var readFile: @Sendable (_ path: String) throws -> [UInt8]
    /// Decodes a configuration document (YAML or JSON) read from `path`.
    public var parseDocument: @Sendable (_ contents: [UInt8], _ path: String) throws -> JSONValue
    /// How the `http` authenticator reaches the app; nil where none is available (an `http` entry is then an error).
    public var httpTransport: (any AuthenticationHTTPTransport)?
    /// Waits between retries.
    public var sleep: @Sendable (Duration) async throws -> Void
    /// The current time in seconds since 1970.
    public var now: @Sendable () -> Double

    public init(
        readFile: @escaping @Sendable (_ path: String) throws -> [UInt8],
        parseDocument: @escaping @Sendable (_ contents: [UInt8], _ path: String) throws -> JSONValue,
        httpTransport: (any AuthenticationHTTPTransport)?,
        sleep: @escaping @Sendable (Duration) async throws -> Void,
        now: @escaping @Sendable () -> Double
    ) {
        self.readFile = readFile
        self.parseDocument = parseDocument
        self.httpTransport = httpTransport
        self.sleep = sleep
        self.now = now
    }
}

/// One configuration entry's keys, read with errors that name the key. Factories call `checkKeys` so that a
/// misspelt key is an error rather than silently ignored.
public struct AuthenticatorOptions: Sendable {
    public let fields: [String: JSONValue]

    public init(_ fields: [String: JSONValue]) {
        self.fields = fields
    }

    /// Fails on a key outside `known` (and `type`).
    public func checkKeys(_ known: Set<String>) throws {
        if let unknown = self.fields.keys.sorted().first(where: { $0 != "type" && !known.contains($0) }) {
            let list = known.sorted().joined(separator: ", ")
            throw StorkError(.invalidInput, "unknown key '\(unknown)' (known: \(list.isEmpty ? "none" : list))")
        }
    }

    public func string(_ key: String) throws -> String? {
        switch self.fields[key] {
        case nil, .null?: return nil
        case .string(let value)?: return value
        default: throw StorkError(.invalidInput, "'\(key)' must be a string")
        }
    }

    public func requiredString(_ key: String) throws -> String {
        guard let value = try self.string(key), !value.isEmpty else {
            throw StorkError(.invalidInput, "'\(key)' is required")
        }
        return value
    }

    /// A string or a list of strings.
    public func strings(_ key: String) throws -> [String]? {
        switch self.fields[key] {
        case nil, .null?: return nil
        case .string(let value)?: return [value]
        case .array(let values)? where values.allSatisfy({ $0.stringValue != nil }):
            return values.compactMap(\.stringValue)
        default: throw StorkError(.invalidInput, "'\(key)' must be a string or a list of strings")
        }
    }

    public func bool(_ key: String) throws -> Bool? {
        switch self.fields[key] {
        case nil, .null?: return nil
        case .bool(let value)?: return value
        default: throw StorkError(.invalidInput, "'\(key)' must be true or false")
        }
    }

    /// A whole number in `range`.
    public func integer(_ key: String, in range: ClosedRange<Int>) throws -> Int? {
        switch self.fields[key] {
        case nil, .null?: return nil
        case .number(let value)?
        where value.rounded() == value && Double(range.lowerBound) <= value && value <= Double(range.upperBound):
            return Int(value)
        default:
            throw StorkError(
                .invalidInput,
                "'\(key)' must be a whole number from \(range.lowerBound) to \(range.upperBound)"
            )
        }
    }

    /// A list of HTTP statuses.
    public func statuses(_ key: String) throws -> Set<Int>? {
        switch self.fields[key] {
        case nil, .null?: return nil
        case .array(let values)?:
            var statuses: Set<Int> = []
            for value in values {
                guard case .number(let number) = value, number.rounded() == number, (100...599).contains(number) else {
                    throw StorkError(.invalidInput, "'\(key)' must be a list of HTTP statuses (100 to 599)")
                }
                statuses.insert(Int(number))
            }
            return statuses
        default: throw StorkError(.invalidInput, "'\(key)' must be a list of HTTP statuses (100 to 599)")
        }
    }

    /// A duration: a number of seconds, or a string with a unit (`500ms`, `5s`, `2m`, `1h`); never negative.
    public func duration(_ key: String) throws -> Duration? {
        let seconds: Double
        switch self.fields[key] {
        case nil, .null?: return nil
        case .number(let value)?: seconds = value
        case .string(let text)?:
            let trimmed = text.trimmingCharacters(in: .whitespaces)
            var parsed: Double?
            for (suffix, scale) in [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)]
            where trimmed.hasSuffix(suffix) {
                parsed = Double(trimmed.dropLast(suffix.count)).map { $0 * scale }
                break
            }
            guard let parsed else {
                throw StorkError(.invalidInput, "'\(key)' must be seconds or a duration like '500ms', '5s', '2m'")
            }
            seconds = parsed
        default:
            throw StorkError(.invalidInput, "'\(key)' must be seconds or a duration like '500ms', '5s', '2m'")
        }
        guard seconds.isFinite, seconds >= 0, seconds <= 86_400 * 365 else {
            throw StorkError(.invalidInput, "'\(key)' must be a duration from 0 to a year")
        }
        return .nanoseconds(Int64((seconds * 1e9).rounded()))
    }

    /// A JSON object whose values are strings.
    public func stringMap(_ key: String) throws -> [String: String]? {
        switch self.fields[key] {
        case nil, .null?: return nil
        case .object(let values)? where values.values.allSatisfy({ $0.stringValue != nil }):
            return values.compactMapValues(\.stringValue)
        default: throw StorkError(.invalidInput, "'\(key)' must be an object of strings")
        }
    }
}

/// Authenticator factories by `type` name.
public struct AuthenticatorRegistry: Sendable {
    /// Builds an authenticator from one configuration entry; throws `StorkError`s that name the key.
    public typealias Factory =
        @Sendable (_ options: AuthenticatorOptions, _ context: AuthenticatorContext) async throws
        -> any Authenticator

    private var factories: [String: Factory]

    /// A registry with the built-ins: `open`, `users`, `jwt`, `http`.
    public init() {
        self.factories = [
            "open": Self.makeOpen,
            "users": Self.makeUsers,
            "jwt": Self.makeJWT,
            "http": Self.makeHTTP,
        ]
    }

    /// The registered type names, sorted.
    public var types: [String] { self.factories.keys.sorted() }

    /// Adds (or replaces) the factory for `type`.
    public mutating func register(type: String, factory: @escaping Factory) {
        self.factories[type] = factory
    }

    /// Builds the authenticators a configuration lists, in order. Errors name the entry (from 1), its type and key:
    /// `authentication entry 2 (jwt): 'secret' is required`.
    public func makeAuthenticators(
        _ configuration: [JSONValue],
        context: AuthenticatorContext
    ) async throws -> [any Authenticator] {
        var authenticators: [any Authenticator] = []
        for (index, entry) in configuration.enumerated() {
            let place = "authentication entry \(index + 1)"
            guard case .object(let fields) = entry else {
                throw StorkError(.invalidInput, "\(place): expected an object with 'type'")
            }
            guard case .string(let type)? = fields["type"] else {
                throw StorkError(.invalidInput, "\(place): 'type' is required")
            }
            guard let factory = self.factories[type] else {
                throw StorkError(
                    .invalidInput,
                    "\(place): unknown type '\(type)' (known: \(self.types.joined(separator: ", ")))"
                )
            }
            do {
                authenticators.append(try await factory(AuthenticatorOptions(fields), context))
            } catch var error as StorkError {
                error.message = "\(place) (\(type)): \(error.message)"
                throw error
            } catch {
                throw StorkError(.invalidInput, "\(place) (\(type)): \(error)", underlying: error)
            }
        }
        return authenticators
    }

    // MARK: - Built-ins

    static func makeOpen(_ options: AuthenticatorOptions, _ context: AuthenticatorContext) throws -> any Authenticator {
        try options.checkKeys([])
        return OpenAuthenticator()
    }

    static func makeUsers(_ options: AuthenticatorOptions, _ context: AuthenticatorContext) throws -> any Authenticator
    {
        try options.checkKeys(["file"])
        let path = try options.requiredString("file")
        let document: JSONValue
        do {
            document = try context.parseDocument(try context.readFile(path), path)
        } catch {
            throw StorkError(.invalidInput, "'file': cannot read '\(path)': \(error)", underlying: error)
        }
        return try UsersFileAuthenticator(document: document)
    }

    static func makeJWT(
        _ options: AuthenticatorOptions,
        _ context: AuthenticatorContext
    ) async throws -> any Authenticator {
        try options.checkKeys([
            "algorithm", "secret", "secretFile", "publicKey", "publicKeyFile", "audience", "issuer", "leeway",
            "requireExpiry", "rolesClaim", "dataClaim",
        ])
        let name = try options.requiredString("algorithm")
        guard let algorithm = JWTAuthenticatorConfiguration.Algorithm(rawValue: name.uppercased()) else {
            let known = JWTAuthenticatorConfiguration.Algorithm.allCases.map(\.rawValue).joined(separator: ", ")
            throw StorkError(.invalidInput, "'algorithm': '\(name)' is not one of \(known)")
        }
        let (inline, file) = algorithm == .hs256 ? ("secret", "secretFile") : ("publicKey", "publicKeyFile")
        let misplaced = algorithm == .hs256 ? ["publicKey", "publicKeyFile"] : ["secret", "secretFile"]
        if let key = misplaced.first(where: { options.fields[$0] != nil }) {
            throw StorkError(
                .invalidInput,
                "'\(key)' does not go with \(algorithm.rawValue) (use '\(inline)' or '\(file)')"
            )
        }
        let keys: [String]
        switch (try options.strings(inline), try options.strings(file)) {
        case (let values?, nil) where !values.isEmpty:
            keys = values
        case (nil, let paths?) where !paths.isEmpty:
            keys = try paths.map { path in
                do {
                    return String(decoding: try context.readFile(path), as: UTF8.self)
                } catch {
                    throw StorkError(.invalidInput, "'\(file)': cannot read '\(path)': \(error)", underlying: error)
                }
            }
        default:
            throw StorkError(
                .invalidInput,
                "exactly one of '\(inline)' and '\(file)' is required for \(algorithm.rawValue)"
            )
        }
        var configuration = JWTAuthenticatorConfiguration(algorithm: algorithm, keys: keys)
        configuration.audiences = try options.strings("audience") ?? []
        configuration.issuer = try options.string("issuer")
        if let leeway = try options.duration("leeway") { configuration.leeway = leeway.secondsDouble }
        if let require = try options.bool("requireExpiry") { configuration.requireExpiry = require }
        if let claim = try options.string("rolesClaim") { configuration.rolesClaim = claim }
        if let claim = try options.string("dataClaim") { configuration.dataClaim = claim }
        return try await JWTAuthenticator(configuration: configuration, now: context.now)
    }

    static func makeHTTP(_ options: AuthenticatorOptions, _ context: AuthenticatorContext) throws -> any Authenticator {
        try options.checkKeys([
            "url", "headers", "permittedStatusCodes", "retryStatusCodes", "retryAttempts", "retryInterval", "timeout",
        ])
        let url = try options.requiredString("url")
        guard url.hasPrefix("http://") || url.hasPrefix("https://") else {
            throw StorkError(.invalidInput, "'url' must start with http:// or https://")
        }
        guard let transport = context.httpTransport else {
            throw StorkError(.invalidInput, "no HTTP transport is available here")
        }
        var configuration = HTTPAuthenticatorConfiguration(url: url)
        if let headers = try options.stringMap("headers") { configuration.headers = headers }
        if let codes = try options.statuses("permittedStatusCodes") {
            guard !codes.isEmpty else { throw StorkError(.invalidInput, "'permittedStatusCodes' must not be empty") }
            configuration.permittedStatusCodes = codes
        }
        if let codes = try options.statuses("retryStatusCodes") { configuration.retryStatusCodes = codes }
        if let both = configuration.permittedStatusCodes.intersection(configuration.retryStatusCodes).min() {
            throw StorkError(.invalidInput, "'retryStatusCodes': \(both) is also in 'permittedStatusCodes'")
        }
        if let attempts = try options.integer("retryAttempts", in: 0...100) { configuration.retryAttempts = attempts }
        if let interval = try options.duration("retryInterval") { configuration.retryInterval = interval }
        if let timeout = try options.duration("timeout") {
            guard timeout > .zero else { throw StorkError(.invalidInput, "'timeout' must be more than 0") }
            configuration.timeout = timeout
        }
        return HTTPAuthenticator(configuration: configuration, transport: transport, sleep: context.sleep)
    }
}

extension AuthenticationChain {
    /// Builds the chain a configuration lists (see `AuthenticatorRegistry.makeAuthenticators`).
    public init(
        configuration: [JSONValue],
        registry: AuthenticatorRegistry = AuthenticatorRegistry(),
        context: AuthenticatorContext
    ) async throws {
        self.init(try await registry.makeAuthenticators(configuration, context: context))
    }
}
