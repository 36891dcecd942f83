import Foundation
import NIOSSL
import PostgresNIO
import StorkCore

// MARK: - PostgreSQL URLs

/// A `postgres://user:password@host:port/database?sslmode=disable|prefer|require` URL (also `postgresql://`), read
/// the way the lease store reads it: user `postgres` and port 5432 when missing, `sslmode=disable` by default, a
/// 3-second connect timeout. The password never appears in `redacted`.
struct PostgresURL: Sendable {
    var configuration: PostgresConnection.Configuration
    /// The URL with its password replaced by `***`, for logs and errors.
    var redacted: String

    init(_ url: String) throws {
        let redacted = Self.redact(url)
        guard let components = URLComponents(string: url),
            ["postgres", "postgresql"].contains(components.scheme ?? ""),
            let host = components.host, !host.isEmpty
        else {
            throw StorkError(.invalidInput, "'\(redacted)' is not a postgres://user:password@host:port/database URL")
        }
        let tls: PostgresConnection.Configuration.TLS
        switch components.queryItems?.first(where: { $0.name == "sslmode" })?.value ?? "disable" {
        case "disable":
            tls = .disable
        case "prefer":
            tls = .prefer(try NIOSSLContext(configuration: .makeClientConfiguration()))
        case "require":
            tls = .require(try NIOSSLContext(configuration: .makeClientConfiguration()))
        case let mode:
            throw StorkError(.invalidInput, "sslmode '\(mode)' in '\(redacted)' is not one of disable, prefer, require")
        }
        var configuration = PostgresConnection.Configuration(
            host: host,
            port: components.port ?? 5432,
            username: components.user.flatMap { $0.removingPercentEncoding } ?? "postgres",
            password: components.password.flatMap { $0.removingPercentEncoding },
            database: components.path.split(separator: "/").first.map(String.init),
            tls: tls
        )
        configuration.options.connectTimeout = .seconds(3)
        self.configuration = configuration
        self.redacted = redacted
    }

    static func redact(_ url: String) -> String {
        guard var components = URLComponents(string: url), components.password != nil else { return url }
        components.password = "***"
        return components.string ?? url
    }
}
