import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import StorkCore

// MARK: - Talking to a node's admin API

/// Where a client command finds a node: `--node HOST:PORT`, else `STORK_HTTP`, else 127.0.0.1:8080.
struct NodeAddressOptions: ParsableArguments {
    @Option(name: .customLong("node"), help: "The admin address (host:port) of the node to ask. Default: $STORK_HTTP or 127.0.0.1:8080.")
    var node: String?

    var baseURL: String {
        let address = self.node ?? ProcessInfo.processInfo.environment["STORK_HTTP"] ?? "127.0.0.1:8080"
        return address.hasPrefix("http://") || address.hasPrefix("https://") ? address : "http://\(address)"
    }
}

struct AdminResponse {
    var status: Int
    var body: Data

    var json: JSONValue? { try? JSONDecoder().decode(JSONValue.self, from: self.body) }
    var text: String { String(decoding: self.body, as: UTF8.self) }
}

enum AdminClient {
    static func call(_ method: HTTPMethod, _ url: String, body: Data? = nil) async throws -> AdminResponse {
        var request = HTTPClientRequest(url: url)
        request.method = method
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        do {
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
            let bytes = try await response.body.collect(upTo: 64 << 20)
            return AdminResponse(status: Int(response.status.code), body: Data(bytes.readableBytesView))
        } catch {
            throw ValidationError("cannot reach the node's admin API at \(url): \(error)")
        }
    }

    /// Prints an error document and exits non-zero for a failed status.
    static func check(_ response: AdminResponse) throws {
        guard (200..<300).contains(response.status) else {
            if case .object(let fields)? = response.json, let message = fields["error"]?.stringValue {
                FileHandle.standardError.write(Data("error: \(message)\n".utf8))
            } else {
                FileHandle.standardError.write(Data("error: HTTP \(response.status): \(response.text)\n".utf8))
            }
            throw ExitCode(1)
        }
    }

    static func pretty(_ value: JSONValue) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return (try? encoder.encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? value.description
    }
}

// MARK: - stork status

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show a node's view of the cluster: members with status and incarnation, the view checksum."
    )

    @OptionGroup var address: NodeAddressOptions
    @Flag(help: "Print the JSON document.") var json = false

    func run() async throws {
        let response = try await AdminClient.call(.GET, self.address.baseURL + "/v1/cluster")
        try AdminClient.check(response)
        guard let document = response.json, case .object(let fields) = document else {
            throw ValidationError("unexpected answer: \(response.text)")
        }
        if self.json {
            print(AdminClient.pretty(document))
            return
        }
        var me: [String: JSONValue] = [:]
        if case .object(let object)? = fields["self"] { me = object }
        print("node      \(me["name"]?.stringValue ?? "?") at \(me["address"]?.stringValue ?? "?")")
        print("ready     \(fields["ready"]?.description ?? "?")   leaving \(fields["leaving"]?.description ?? "?")")
        print("view      \(fields["view"]?.description ?? "?") checksum \(fields["checksum"]?.stringValue ?? "?")")
        print("resources \(fields["running"]?.description ?? "?") running here, \(fields["desired"]?.description ?? "?") desired in the cluster")
        print("members:")
        if case .array(let members)? = fields["members"] {
            for case .object(let member) in members {
                let name = member["name"]?.stringValue ?? "?"
                let address = member["address"]?.stringValue ?? "?"
                let status = member["status"]?.stringValue ?? "?"
                print("  \(name.padding(toLength: 16, withPad: " ", startingAt: 0)) \(address.padding(toLength: 22, withPad: " ", startingAt: 0)) \(status.padding(toLength: 8, withPad: " ", startingAt: 0)) incarnation \(member["incarnation"]?.description ?? "?")")
            }
        }
    }
}

// MARK: - stork resources

struct ResourcesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resources",
        abstract: "List a node's resources with their state (and connector), or (--cluster) every resource with its owner."
    )

    @OptionGroup var address: NodeAddressOptions
    @Flag(help: "Every desired resource in the cluster with its owner, as the node sees it.") var cluster = false
    @Flag(help: "Print the JSON document.") var json = false

    func run() async throws {
        let url = self.address.baseURL + "/v1/resources" + (self.cluster ? "?scope=cluster" : "")
        let response = try await AdminClient.call(.GET, url)
        try AdminClient.check(response)
        guard let document = response.json, case .object(let fields) = document else {
            throw ValidationError("unexpected answer: \(response.text)")
        }
        if self.json {
            print(AdminClient.pretty(document))
            return
        }
        guard case .array(let items)? = fields["resources"] else { return }
        for case .object(let item) in items {
            let id = item["id"]?.stringValue ?? "?"
            if self.cluster {
                print("\(id)\t\(item["owner"]?.stringValue ?? "-")\t\(item["state"]?.stringValue ?? "")")
            } else {
                var line = "\(id)\t\(item["state"]?.stringValue ?? "?")\tsince \(item["since"]?.stringValue ?? "?")"
                if case .object(let connector)? = item["connector"] {
                    let count = { (key: String) in connector[key].map { "\($0)" } ?? "0" }
                    line += "\t\(connector["kind"]?.stringValue ?? "?") \(connector["state"]?.stringValue ?? "?")"
                        + " in=\(count("messagesIn")) out=\(count("messagesOut")) failures=\(count("failures"))"
                    if let error = connector["lastError"]?.stringValue { line += " (\(error))" }
                }
                print(line)
            }
        }
    }
}

// MARK: - stork allocate / deallocate / drain

struct AllocateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "allocate",
        abstract: "Add a resource to the cluster through a node; prints its owner's outcome."
    )

    @OptionGroup var address: NodeAddressOptions
    @Argument(help: "The resource id.") var id: String
    @Option(name: .customLong("attr"), help: "An attribute key=value (repeatable). Values are strings.")
    var attributes: [String] = []

    func validate() throws {
        guard !self.id.isEmpty else { throw ValidationError("the resource id must not be empty") }
        for attribute in self.attributes where !attribute.contains("=") {
            throw ValidationError("--attr takes key=value, got '\(attribute)'")
        }
    }

    func run() async throws {
        var fields: [String: JSONValue] = [:]
        for attribute in self.attributes {
            let parts = attribute.split(separator: "=", maxSplits: 1)
            fields[String(parts[0])] = .string(parts.count > 1 ? String(parts[1]) : "")
        }
        let resource = Resource(id: ResourceID(self.id), attributes: fields)
        let response = try await AdminClient.call(
            .POST,
            self.address.baseURL + "/v1/resources",
            body: try JSONEncoder().encode(resource)
        )
        try AdminClient.check(response)
        print(response.json.map(AdminClient.pretty) ?? response.text)
    }
}

struct DeallocateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "deallocate",
        abstract: "Remove a resource from the cluster through a node; prints when its owner terminated it."
    )

    @OptionGroup var address: NodeAddressOptions
    @Argument(help: "The resource id.") var id: String

    func run() async throws {
        let encoded = self.id.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(["/"])) ?? self.id
        let response = try await AdminClient.call(.DELETE, self.address.baseURL + "/v1/resources/" + encoded)
        try AdminClient.check(response)
        print(response.json.map(AdminClient.pretty) ?? response.text)
    }
}

struct DrainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drain",
        abstract: "Make a node leave gracefully: it hands every resource off, leaves the cluster and exits."
    )

    @OptionGroup var address: NodeAddressOptions

    @Flag(help: "Refuse to drain while the node keeps streams (file, sqlite, memory), which would go offline with it.")
    var refuseLocalStreams = false

    func run() async throws {
        let query = self.refuseLocalStreams ? "?local_streams=refuse" : ""
        let response = try await AdminClient.call(.POST, self.address.baseURL + "/v1/drain" + query)
        try AdminClient.check(response)
        print("draining: the node hands its resources off and exits")
        if case .object(let body)? = response.json, case .array(let offline)? = body["offline_streams"], !offline.isEmpty {
            print("offline until the node is back: \(offline.compactMap(\.stringValue).joined(separator: ", "))")
        }
    }
}
