import Foundation
import StorkCore

// MARK: - ConnectorSecrets

/// Resolves the `{"secret": "NAME"}` references in connector attributes, so that resource lists carry no secrets.
///
/// A name is normalized (upper-cased, every character other than A–Z and 0–9 becomes `_`: `feed-token` →
/// `FEED_TOKEN`) and looked up
///
/// 1. in the environment variable `STORK_SECRET_<NAME>` (`STORK_SECRET_FEED_TOKEN`), then
/// 2. in the secrets file (`connectors.secretsFile` in stork.yaml), if one is configured: either a JSON object of
///    names to strings, or lines of `NAME=value` (blank lines and `#` comments are skipped, spaces around the name
///    and the value are trimmed); names in the file are normalized the same way.
///
/// The file is read at every resolution, so a rotated secret takes effect at the next connect or poll. Secret values
/// are never logged.
public struct ConnectorSecrets: Sendable {
    public var environment: [String: String]
    /// The secrets file, if any.
    public var file: String?

    public init(environment: [String: String] = ProcessInfo.processInfo.environment, file: String? = nil) {
        self.environment = environment
        self.file = file
    }

    /// `feed-token` → `FEED_TOKEN`.
    public static func normalizedName(_ name: String) -> String {
        String(
            name.unicodeScalars.map { scalar -> Character in
                switch scalar {
                case "a"..."z": return Character(String(scalar).uppercased())
                case "A"..."Z", "0"..."9": return Character(scalar)
                default: return "_"
                }
            }
        )
    }

    /// The environment variable that holds secret `name`.
    public static func environmentVariable(for name: String) -> String {
        "STORK_SECRET_" + Self.normalizedName(name)
    }

    /// The value of secret `name`, or a `StorkError(.invalidInput)` saying where it was looked for.
    public func resolve(_ name: String) throws -> String {
        let variable = Self.environmentVariable(for: name)
        if let value = self.environment[variable] { return value }
        if let file = self.file {
            let secrets = try Self.readFile(file)
            if let value = secrets[Self.normalizedName(name)] { return value }
            throw StorkError(
                .invalidInput,
                "secret '\(name)' is not set: set \(variable) or add \(Self.normalizedName(name)) to \(file)"
            )
        }
        throw StorkError(
            .invalidInput,
            "secret '\(name)' is not set: set \(variable) (or configure connectors.secretsFile)"
        )
    }

    /// The secrets of a file, by normalized name.
    static func readFile(_ path: String) throws -> [String: String] {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw StorkError(.unavailable, "cannot read the secrets file \(path)", underlying: error)
        }
        guard data.count <= 1 << 20 else {
            throw StorkError(.invalidInput, "the secrets file \(path) is larger than 1 MiB")
        }
        let text = String(decoding: data, as: UTF8.self)
        var result: [String: String] = [:]
        if text.drop(while: \.isWhitespace).first == "{" {
            guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw StorkError(.invalidInput, "the secrets file \(path) is not a JSON object of names to strings")
            }
            for (name, value) in object {
                guard let string = value as? String else {
                    throw StorkError(.invalidInput, "the secrets file \(path): '\(name)' is not a string")
                }
                result[Self.normalizedName(name)] = string
            }
            return result
        }
        for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            guard let equals = trimmed.firstIndex(of: "=") else {
                throw StorkError(.invalidInput, "the secrets file \(path), line \(number + 1): expected NAME=value")
            }
            let name = trimmed[..<equals].trimmingCharacters(in: .whitespaces)
            let value = trimmed[trimmed.index(after: equals)...].trimmingCharacters(in: .whitespacesAndNewlines)
            result[Self.normalizedName(name)] = value
        }
        return result
    }
}
