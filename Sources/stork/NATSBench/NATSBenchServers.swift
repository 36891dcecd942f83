import Dispatch
import Foundation
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - The servers under test

/// Which server a child process runs.
enum NATSBenchServerKind: String, Sendable, Codable, CaseIterable {
    case stork
    case natsServer = "nats-server"

    var displayName: String {
        switch self {
        case .stork: "Stork"
        case .natsServer: "nats-server"
        }
    }
}

/// A server started by the benchmark as a child process on loopback, with its own temporary data folder and log
/// file. ``stop()`` ends it (SIGTERM, then SIGKILL) and removes the folder; a signal to the benchmark kills it too
/// (``NATSBenchChildren``).
final class NATSBenchServerProcess: Sendable {
    let kind: NATSBenchServerKind
    let port: Int
    /// Stork's HTTP port (admin API, and the gateway when configured); nil for nats-server.
    let httpPort: Int?
    let directory: URL
    let logFile: URL
    let commandLine: String
    /// `Process` is not `Sendable`; the runner starts, polls and stops it from one task at a time, and the lock
    /// makes that explicit.
    private let process: Mutex<Process>

    private init(
        kind: NATSBenchServerKind,
        port: Int,
        httpPort: Int?,
        directory: URL,
        logFile: URL,
        commandLine: String,
        process: Process
    ) {
        self.kind = kind
        self.port = port
        self.httpPort = httpPort
        self.directory = directory
        self.logFile = logFile
        self.commandLine = commandLine
        self.process = Mutex(process)
    }

    var target: NATSBenchTarget { NATSBenchTarget(name: self.kind.displayName, host: "127.0.0.1", port: self.port) }

    /// Starts the server: Stork as `<this binary> serve …` with three free ports, nats-server with `-js` and a store
    /// folder. Output goes to `<directory>/server.log`. `extraArguments` follow the bench's own (for example
    /// `--config` for `stork bench gateway`).
    static func start(
        _ kind: NATSBenchServerKind,
        natsServer: String,
        in root: URL,
        extraArguments: [String] = []
    ) throws -> NATSBenchServerProcess {
        let directory = root.appendingPathComponent(kind.rawValue)
        let data = directory.appendingPathComponent("data")
        try FileManager.default.createDirectory(at: data, withIntermediateDirectories: true)
        let logFile = directory.appendingPathComponent("server.log")
        _ = FileManager.default.createFile(atPath: logFile.path, contents: nil)
        let executable: URL
        let arguments: [String]
        let port: Int
        var httpPort: Int?
        switch kind {
        case .stork:
            let ports = try NATSBenchPorts.free(count: 3)
            port = ports[2]
            httpPort = ports[1]
            executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
            arguments = [
                "serve", "--name", "bench", "--bind", "127.0.0.1:\(ports[0])", "--http", "127.0.0.1:\(ports[1])",
                "--nats", "127.0.0.1:\(port)", "--data", data.path, "--log-level", "warning",
            ]
        case .natsServer:
            port = try NATSBenchPorts.free(count: 1)[0]
            executable = URL(fileURLWithPath: natsServer)
            arguments = ["-a", "127.0.0.1", "-p", "\(port)", "-js", "-sd", data.path]
        }
        let process = Process()
        process.executableURL = executable
        let allArguments = arguments + extraArguments
        process.arguments = allArguments
        process.currentDirectoryURL = directory
        let log = try FileHandle(forWritingTo: logFile)
        defer { try? log.close() }
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            throw NATSBenchError(.serverStart, "cannot start \(executable.path)", underlying: error)
        }
        NATSBenchChildren.shared.add(process.processIdentifier)
        return NATSBenchServerProcess(
            kind: kind,
            port: port,
            httpPort: httpPort,
            directory: directory,
            logFile: logFile,
            commandLine: ([executable.path] + allArguments).joined(separator: " "),
            process: process
        )
    }

    /// The child's process id.
    var processIdentifier: Int32 { self.process.withLock { $0.processIdentifier } }

    /// Nil while the process runs; how it ended otherwise.
    var exitStatus: String? {
        self.process.withLock { process in
            guard !process.isRunning else { return nil }
            let reason = process.terminationReason == .uncaughtSignal ? "signal" : "status"
            return "exited with \(reason) \(process.terminationStatus)"
        }
    }

    /// The last lines the server wrote, for error messages.
    func logTail(lines: Int = 8) -> String {
        guard let data = FileManager.default.contents(atPath: self.logFile.path) else { return "" }
        let text = String(decoding: data, as: UTF8.self)
        return text.split(separator: "\n").suffix(lines).joined(separator: "\n")
    }

    /// Connects (INFO, CONNECT, PING/PONG) until it works, for at most `timeout`.
    func waitUntilReady(on eventLoop: any EventLoop, timeout: Duration) async throws {
        let deadline = ContinuousClock.now + timeout
        var lastError: (any Error)?
        while ContinuousClock.now < deadline {
            if let status = self.exitStatus {
                throw NATSBenchError(
                    .serverStart,
                    "\(self.kind.displayName) \(status) before it was ready; its log ends:\n\(self.logTail())"
                )
            }
            do {
                let client = try await NATSBenchClient.connect(
                    host: "127.0.0.1",
                    port: self.port,
                    name: "\(self.kind.displayName) readiness",
                    on: eventLoop,
                    timeout: .seconds(2)
                )
                await client.close()
                return
            } catch {
                lastError = error
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        throw NATSBenchError(
            .serverStart,
            "\(self.kind.displayName) did not accept NATS connections on port \(self.port) within \(timeout)",
            underlying: lastError
        )
    }

    /// SIGTERM, up to 5 s to exit, then SIGKILL; removes the data folder.
    func stop() async {
        let pid = self.process.withLock { $0.processIdentifier }
        if self.exitStatus == nil {
            kill(pid, SIGTERM)
            let deadline = ContinuousClock.now + .seconds(5)
            while self.exitStatus == nil, ContinuousClock.now < deadline {
                try? await Task.sleep(for: .milliseconds(20))
            }
            if self.exitStatus == nil {
                kill(pid, SIGKILL)
                while self.exitStatus == nil { try? await Task.sleep(for: .milliseconds(10)) }
            }
        }
        NATSBenchChildren.shared.remove(pid)
        try? FileManager.default.removeItem(at: self.directory)
    }

    /// The version line of a nats-server binary (`nats-server: v2.9.10`), or nil.
    static func natsServerVersion(_ path: String) -> String? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = ["--version"]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        guard (try? process.run()) != nil else { return nil }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.isEmpty ? nil : text
    }
}

// MARK: - Children killed on a signal

/// The pids of running server processes and the run's temporary folder: SIGINT or SIGTERM to the benchmark kills
/// the servers and removes the folder before it exits, so that an interrupted run leaves nothing behind.
final class NATSBenchChildren: Sendable {
    static let shared = NATSBenchChildren()
    private let pids = Mutex<Set<Int32>>([])
    private let folder = Mutex<URL?>(nil)
    private let sources = Mutex<[any DispatchSourceSignal]>([])

    func add(_ pid: Int32) { self.pids.withLock { _ = $0.insert(pid) } }
    func remove(_ pid: Int32) { self.pids.withLock { _ = $0.remove(pid) } }
    /// The folder to remove on a signal (nil once the run removed it itself).
    func removeOnSignal(_ folder: URL?) { self.folder.withLock { $0 = folder } }

    /// Installs the handlers (once).
    func killOnSignals() {
        self.sources.withLock { sources in
            guard sources.isEmpty else { return }
            for signalNumber in [SIGINT, SIGTERM] {
                signal(signalNumber, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
                source.setEventHandler {
                    for pid in self.pids.withLock({ $0 }) { kill(pid, SIGKILL) }
                    if let folder = self.folder.withLock({ $0 }) { try? FileManager.default.removeItem(at: folder) }
                    FileHandle.standardError.write(
                        Data("stork bench: interrupted; the servers it started were killed\n".utf8)
                    )
                    exit(128 + signalNumber)
                }
                source.resume()
                sources.append(source)
            }
        }
    }
}

// MARK: - Free ports

enum NATSBenchPorts {
    #if canImport(Glibc) || canImport(Musl)
    private static let streamType = Int32(SOCK_STREAM.rawValue)
    private static let datagramType = Int32(SOCK_DGRAM.rawValue)
    #else
    private static let streamType = SOCK_STREAM
    private static let datagramType = SOCK_DGRAM
    #endif

    /// `count` distinct loopback ports that were free for both TCP and UDP a moment ago (the kernel picks them; the
    /// sockets stay open until all are chosen so that no port is picked twice).
    static func free(count: Int) throws -> [Int] {
        var descriptors: [Int32] = []
        defer { for descriptor in descriptors { close(descriptor) } }
        var ports: [Int] = []
        var attempts = 0
        while ports.count < count {
            attempts += 1
            guard attempts < 100 else { throw NATSBenchError(.serverStart, "no free loopback port found") }
            let tcp = try Self.bindLoopback(type: Self.streamType, port: 0)
            descriptors.append(tcp.descriptor)
            // Stork's cluster port is UDP and TCP: take the port only if UDP can have it too.
            if let udp = try? Self.bindLoopback(type: Self.datagramType, port: tcp.port) {
                descriptors.append(udp.descriptor)
                ports.append(tcp.port)
            }
        }
        return ports
    }

    private static func bindLoopback(type: Int32, port: Int) throws -> (descriptor: Int32, port: Int) {
        let descriptor = socket(AF_INET, type, 0)
        guard descriptor >= 0 else { throw NATSBenchError(.serverStart, "socket() failed: errno \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0 else {
            close(descriptor)
            throw NATSBenchError(.serverStart, "bind to 127.0.0.1:\(port) failed: errno \(errno)")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        guard named == 0 else {
            close(descriptor)
            throw NATSBenchError(.serverStart, "getsockname failed: errno \(errno)")
        }
        return (descriptor, Int(UInt16(bigEndian: address.sin_port)))
    }
}
