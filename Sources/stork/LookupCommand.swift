import ArgumentParser
import StorkCore
import StorkPlacement

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - stork lookup

/// `stork lookup`: which member owns each resource id, computed offline exactly as a running cluster would.
struct LookupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lookup",
        abstract: "Print the owner of each resource id for a given member set.",
        discussion: """
            Prints one line per id: the id, a tab, and the owning member exactly as given in --members. With no ids \
            on the command line, reads ids from standard input, one per line (empty lines are skipped).

            Members are given as addresses (host:port); each is used as both the node's name and its address, so \
            --placement ringpop gives the same owners as ringpop for those addresses.

            Examples:
              stork lookup --members 10.0.0.1:7946,10.0.0.2:7946 sensor-1 sensor-2
              stork lookup --placement ringpop --members 127.0.0.1:3000,127.0.0.1:3001 < ids.txt
              stork lookup --members 10.0.0.1:7946,10.0.0.2:7946 --checksum
            """
    )

    @Option(help: "The placement strategy: default (rendezvous hashing, also 'rendezvous') or ringpop.")
    var placement: String = PlacementStrategy.rendezvous.rawValue

    @Option(help: "The members, comma-separated, e.g. 127.0.0.1:3000,127.0.0.1:3001.")
    var members: String?

    @Flag(help: "Print the checksum of the member set (decimal) and exit.")
    var checksum = false

    @Argument(help: "Resource ids. When none are given, ids are read from standard input, one per line.")
    var ids: [String] = []

    func validate() throws {
        _ = try self.parsedStrategy()
        _ = try self.parsedMembers()
    }

    func run() throws {
        let placement = Placement(strategy: try self.parsedStrategy(), nodes: try self.parsedMembers())
        var output = BufferedOutput(fileDescriptor: STDOUT_FILENO)
        if self.checksum {
            output.append(String(placement.checksum))
            output.append(UInt8(ascii: "\n"))
            try output.flush()
            return
        }
        // Every member's name as UTF-8, indexed like `placement.members`, so that each line is two byte copies.
        let ownerBytes = placement.members.map { Array($0.node.name.utf8) }
        func emit(_ id: String) throws {
            output.append(id)
            output.append(UInt8(ascii: "\t"))
            output.append(ownerBytes[placement.ownerIndex(of: ResourceID(id))!])
            output.append(UInt8(ascii: "\n"))
            try output.flushIfFull()
        }
        if self.ids.isEmpty {
            var input = LineReader(fileDescriptor: STDIN_FILENO)
            while let line = try input.nextLine() {
                if line.isEmpty { continue }
                try emit(line)
            }
        } else {
            for id in self.ids {
                try emit(id)
            }
        }
        try output.flush()
    }

    // MARK: Parsing

    func parsedStrategy() throws -> PlacementStrategy {
        guard let strategy = PlacementStrategy(parsing: self.placement) else {
            throw ValidationError(
                "Unknown placement '\(self.placement)': expected one of "
                    + PlacementStrategy.acceptedNames.joined(separator: ", ") + "."
            )
        }
        return strategy
    }

    func parsedMembers() throws -> [NodeID] {
        guard let members = self.members else {
            throw ValidationError("Missing --members: give the members as a comma-separated list of addresses.")
        }
        let names = members.split(separator: ",", omittingEmptySubsequences: false).map {
            $0.trimmingCharacters(in: " \t")
        }
        if names.allSatisfy(\.isEmpty) {
            throw ValidationError("--members is empty: give at least one member address.")
        }
        if names.contains(where: \.isEmpty) {
            throw ValidationError("--members '\(members)' has an empty entry: remove the extra comma.")
        }
        return names.map { NodeID(name: $0, address: $0, uid: 0) }
    }
}

extension Substring {
    /// This text without leading and trailing characters from `characters`.
    fileprivate func trimmingCharacters(in characters: String) -> String {
        let trimmed = self.drop { characters.contains($0) }
        var end = trimmed.endIndex
        while end > trimmed.startIndex, characters.contains(trimmed[trimmed.index(before: end)]) {
            end = trimmed.index(before: end)
        }
        return String(trimmed[trimmed.startIndex..<end])
    }
}

// MARK: - Buffered I/O

/// Collects output bytes and writes them to a file descriptor in large chunks.
struct BufferedOutput {
    static let chunkSize = 1 << 16

    let fileDescriptor: Int32
    private var buffer: [UInt8] = []

    init(fileDescriptor: Int32) {
        self.fileDescriptor = fileDescriptor
        self.buffer.reserveCapacity(Self.chunkSize + 4096)
    }

    mutating func append(_ byte: UInt8) {
        self.buffer.append(byte)
    }

    mutating func append(_ bytes: [UInt8]) {
        self.buffer.append(contentsOf: bytes)
    }

    mutating func append(_ string: String) {
        var string = string
        string.withUTF8 { self.buffer.append(contentsOf: $0) }
    }

    mutating func flushIfFull() throws {
        if self.buffer.count >= Self.chunkSize { try self.flush() }
    }

    mutating func flush() throws {
        var written = 0
        try self.buffer.withUnsafeBytes { bytes in
            while written < bytes.count {
                let result = write(self.fileDescriptor, bytes.baseAddress! + written, bytes.count - written)
                if result < 0 {
                    if errno == EINTR { continue }
                    throw LookupIOError(operation: "write", errno: errno)
                }
                written += result
            }
        }
        self.buffer.removeAll(keepingCapacity: true)
    }
}

/// Reads lines from a file descriptor in large chunks. Lines end with "\n" or "\r\n"; the last may end with neither.
struct LineReader {
    let fileDescriptor: Int32
    /// Bytes read but not yet returned are `buffer[start..<end]`; `buffer[end...]` is free space.
    private var buffer: [UInt8]
    private var start = 0
    private var end = 0
    private var endOfFile = false

    init(fileDescriptor: Int32, chunkSize: Int = 1 << 16) {
        self.fileDescriptor = fileDescriptor
        self.buffer = [UInt8](repeating: 0, count: chunkSize)
    }

    /// The next line without its line ending, or `nil` at the end of the input.
    mutating func nextLine() throws -> String? {
        while true {
            if let newline = self.newlineIndex() {
                let line = self.line(from: self.start, to: newline)
                self.start = newline + 1
                return line
            }
            if self.endOfFile {
                guard self.start < self.end else { return nil }
                let line = self.line(from: self.start, to: self.end)
                self.start = self.end
                return line
            }
            try self.fill()
        }
    }

    /// The index of the next "\n" in the unread bytes (memchr: fast even in debug builds).
    private func newlineIndex() -> Int? {
        let (start, end) = (self.start, self.end)
        guard start < end else { return nil }
        return self.buffer.withUnsafeBytes { bytes -> Int? in
            guard let found = memchr(bytes.baseAddress! + start, Int32(UInt8(ascii: "\n")), end - start) else {
                return nil
            }
            return UnsafeRawPointer(found) - UnsafeRawPointer(bytes.baseAddress!)
        }
    }

    private func line(from start: Int, to end: Int) -> String {
        var end = end
        if end > start, self.buffer[end - 1] == UInt8(ascii: "\r") { end -= 1 }
        return self.buffer.withUnsafeBufferPointer {
            String(decoding: UnsafeBufferPointer(rebasing: $0[start..<end]), as: UTF8.self)
        }
    }

    /// Moves the unread bytes to the front (growing the buffer when they fill it) and reads more after them.
    private mutating func fill() throws {
        let unread = self.end - self.start
        if unread == self.buffer.count {
            self.buffer.append(contentsOf: [UInt8](repeating: 0, count: self.buffer.count))
        }
        let start = self.start
        let readCount = try self.buffer.withUnsafeMutableBytes { bytes -> Int in
            if start > 0 && unread > 0 {
                memmove(bytes.baseAddress!, bytes.baseAddress! + start, unread)
            }
            while true {
                let result = read(self.fileDescriptor, bytes.baseAddress! + unread, bytes.count - unread)
                if result >= 0 { return result }
                if errno != EINTR { throw LookupIOError(operation: "read", errno: errno) }
            }
        }
        self.start = 0
        self.end = unread + readCount
        if readCount == 0 { self.endOfFile = true }
    }
}

/// A failed read from standard input or write to standard output.
struct LookupIOError: Error, CustomStringConvertible {
    var operation: String
    var errno: Int32

    var description: String { "\(self.operation) failed: \(String(cString: strerror(self.errno)))" }
}
