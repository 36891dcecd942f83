import Logging
import StorkCore
import StorkResources

// MARK: - Choosing a store by URL

public enum OwnershipStores {
    /// The store a URL names: `sqlite:PATH` (a file, created if missing), `postgres://user:password@host:port/db`
    /// (also `postgresql://`, with `?sslmode=disable|prefer|require`), or `memory` (this process only: tests).
    public static func make(url: String, cluster: String, logger: Logger) throws -> any OwnershipStore {
        if url == "memory" { return InMemoryOwnershipStore() }
        if url.hasPrefix("sqlite:") {
            var path = String(url.dropFirst("sqlite:".count))
            if path.hasPrefix("//") { path.removeFirst(2) }  // sqlite:///abs/path
            guard !path.isEmpty else { throw StorkError(.invalidInput, "'\(url)': sqlite: needs a file path") }
            return SQLiteOwnershipStore(path: path, cluster: cluster, logger: logger)
        }
        if url.hasPrefix("postgres://") || url.hasPrefix("postgresql://") {
            return try PostgresOwnershipStore(url: url, cluster: cluster, logger: logger)
        }
        throw StorkError(
            .invalidInput,
            "'\(PostgresOwnershipStore.redact(url))' is not an ownership store; expected sqlite:PATH or postgres://…"
        )
    }
}
