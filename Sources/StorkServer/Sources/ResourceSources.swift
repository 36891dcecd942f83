import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import StorkCore
import StorkResources
import Yams

// MARK: - Resource lists

/// Parses a list of resources: the original library's `{"data":[{"id":"1", …}]}` or a bare array, in JSON or YAML.
public enum ResourceListParser {
    public static let maximumSize = DocumentFile.maximumSize

    public static func parse(_ data: Data, origin: String = "resource list") throws -> [Resource] {
        let value = try DocumentFile.parse(Array(data), path: origin, empty: .array([]))
        let items: [JSONValue]
        switch value {
        case .array(let array): items = array
        case .object(let object):
            guard case .array(let array)? = object["data"] else {
                throw StorkError(.invalidInput, "\(origin): an object must have a \"data\" array")
            }
            items = array
        default:
            throw StorkError(.invalidInput, "\(origin): expected {\"data\": [...]} or [...]")
        }
        var seen = Set<String>()
        return try items.enumerated().map { index, item in
            guard case .object(let fields) = item else {
                throw StorkError(.invalidInput, "\(origin): item \(index) is not an object")
            }
            guard case .string(let id)? = fields["id"], !id.isEmpty else {
                throw StorkError(.invalidInput, "\(origin): item \(index) has no non-empty string \"id\"")
            }
            guard seen.insert(id).inserted else {
                throw StorkError(.invalidInput, "\(origin): item \(index): duplicate id \"\(id)\"")
            }
            return Resource(id: ResourceID(id), attributes: fields)
        }
    }

    static func json(from value: Any, origin: String, depth: Int = 0) throws -> JSONValue {
        guard depth < 64 else { throw StorkError(.invalidInput, "\(origin): nested too deeply") }
        switch value {
        case is NSNull: return .null
        case let value as Bool: return .bool(value)
        case let value as Int: return .number(Double(value))
        case let value as Double: return .number(value)
        case let value as String: return .string(value)
        case let value as Date: return .string(ISO8601DateFormatter().string(from: value))
        case let value as [Any]: return .array(try value.map { try Self.json(from: $0, origin: origin, depth: depth + 1) })
        case let value as [String: Any]:
            return .object(try value.mapValues { try Self.json(from: $0, origin: origin, depth: depth + 1) })
        case let value as [AnyHashable: Any]:
            var object: [String: JSONValue] = [:]
            for (key, item) in value { object["\(key)"] = try Self.json(from: item, origin: origin, depth: depth + 1) }
            return .object(object)
        default:
            return .string("\(value)")
        }
    }
}

// MARK: - File source

/// Resources listed in a JSON or YAML file. With `reload`, changes to the file are pushed as they happen (the file
/// is checked every 500 ms); a file that does not parse mid-edit is skipped and the last good list stays.
public final class FileResourceSource: ResourceSource, Sendable {
    public let path: String
    public let reload: Bool
    let logger: Logger
    let checkInterval: Duration
    let clock: StorkClock

    /// `clock` is what the checks wait on: the continuous clock, or one a test moves by hand.
    public init(
        path: String,
        reload: Bool = true,
        checkInterval: Duration = .milliseconds(500),
        logger: Logger,
        clock: some Clock<Duration> = ContinuousClock()
    ) {
        self.path = path
        self.reload = reload
        self.checkInterval = checkInterval
        self.logger = logger
        self.clock = StorkClock(clock)
    }

    public func fetch() async throws -> [Resource] {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: self.path))
        } catch {
            throw StorkError(.sourceFailed, "cannot read \(self.path)", underlying: error)
        }
        return try ResourceListParser.parse(data, origin: self.path)
    }

    public func changes() -> AsyncStream<ResourceSourceChange>? {
        guard self.reload else { return nil }
        let path = self.path
        let interval = self.checkInterval
        let clock = self.clock
        let logger = self.logger
        let lastStamp = LockedValue(Self.stamp(path))
        // Polls in the consumer's own task (no background task to leak): each `next()` waits for the next change.
        return AsyncStream(unfolding: {
            while !Task.isCancelled {
                try? await clock.sleep(for: interval)
                let stamp = Self.stamp(path)
                guard stamp != lastStamp.value else { continue }
                lastStamp.value = stamp
                guard stamp != nil else {
                    logger.warning("the resource file disappeared; keeping the last list", metadata: ["stork.path": "\(path)"])
                    continue
                }
                do {
                    let data = try Data(contentsOf: URL(fileURLWithPath: path))
                    return .replaced(try ResourceListParser.parse(data, origin: path))
                } catch {
                    logger.warning(
                        "the resource file does not parse; keeping the last list",
                        metadata: ["stork.error": "\(error)"]
                    )
                }
            }
            return nil
        })
    }

    /// Modification time and size, or nil when the file is missing.
    static func stamp(_ path: String) -> [Double]? {
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path) else { return nil }
        let date = (attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
        let size = (attributes[.size] as? NSNumber)?.doubleValue ?? 0
        return [date, size]
    }
}

// MARK: - HTTP source

/// Resources listed at an HTTP URL, with ETag / If-None-Match so that an unchanged list costs one 304.
public final class HTTPResourceSource: ResourceSource, Sendable {
    public let url: String
    public let headers: [String: String]
    public let timeout: Duration
    let client: HTTPClient
    let cache = LockedValue<(etag: String, resources: [Resource])?>(nil)

    public init(url: String, headers: [String: String] = [:], timeout: Duration = .seconds(5), client: HTTPClient) {
        self.url = url
        self.headers = headers
        self.timeout = timeout
        self.client = client
    }

    public func fetch() async throws -> [Resource] {
        var request = HTTPClientRequest(url: self.url)
        request.method = .GET
        request.headers.add(name: "Accept", value: "application/json, application/yaml")
        for (name, value) in self.headers { request.headers.replaceOrAdd(name: name, value: value) }
        let cached = self.cache.value
        if let cached { request.headers.replaceOrAdd(name: "If-None-Match", value: cached.etag) }
        let response: HTTPClientResponse
        do {
            response = try await self.client.execute(request, timeout: .nanoseconds(self.timeout.nanosecondsClamped))
        } catch {
            throw StorkError(.sourceFailed, "GET \(self.url) failed", underlying: error)
        }
        if response.status == .notModified, let cached {
            return cached.resources
        }
        guard (200..<300).contains(response.status.code) else {
            throw StorkError(.sourceFailed, "GET \(self.url) answered \(response.status.code)")
        }
        let body = try await response.body.collect(upTo: ResourceListParser.maximumSize)
        let resources = try ResourceListParser.parse(Data(body.readableBytesView), origin: self.url)
        if let etag = response.headers.first(name: "ETag") {
            self.cache.value = (etag, resources)
        } else {
            self.cache.value = nil
        }
        return resources
    }
}

/// A value behind a lock, for small shared state in sources and handlers.
final class LockedValue<Value: Sendable>: @unchecked Sendable {
    // @unchecked: every access to `stored` goes through `lock`.
    private let lock = NSLock()
    private var stored: Value

    init(_ value: Value) { self.stored = value }

    var value: Value {
        get { self.lock.withLock { self.stored } }
        set { self.lock.withLock { self.stored = newValue } }
    }
}
