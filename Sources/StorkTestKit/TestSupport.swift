import Foundation
import StorkCore
import StorkStreaming

#if canImport(Glibc)
import Glibc
#endif

// MARK: - Helpers shared by the test targets that drive real I/O
//
// Pure layers are tested with injected time or in the simulator; these helpers are for tests of drivers that talk to
// real databases, sockets and processes, where the only honest wait is a bounded one for an outcome.

/// Waits until `condition` holds, checking every 20 ms, for at most `timeout` (a bound, not a speed requirement).
/// Returns whether it held.
public func eventually(
    _ timeout: Duration = .seconds(30),
    _ condition: () async throws -> Bool
) async rethrows -> Bool {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while clock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}

/// Runs a shell command with every signal unblocked and at its default action, and no inherited output. The test
/// runner's threads block signals and a child started with Foundation's `Process` inherits that mask: a PostgreSQL
/// restarted that way never acts on its shutdown signals, and would keep the runner's pipes open.
public func runWithDefaultSignals(_ command: String) throws -> Int32 {
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var none = sigset_t()
    sigemptyset(&none)
    posix_spawnattr_setsigmask(&attributes, &none)
    var all = sigset_t()
    sigfillset(&all)
    sigdelset(&all, SIGKILL)
    sigdelset(&all, SIGSTOP)
    posix_spawnattr_setsigdefault(&attributes, &all)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    let arguments: [UnsafeMutablePointer<CChar>?] = ["/bin/sh", "-c", command].map { $0.withCString { strdup($0) } }
    defer { for argument in arguments { free(argument) } }
    var argv = arguments + [nil]
    var pid: pid_t = 0
    let result = posix_spawn(&pid, "/bin/sh", &actions, &attributes, &argv, environ)
    guard result == 0 else { throw StorkError(.unavailable, "cannot start /bin/sh: \(result)") }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0, errno == EINTR {}
    return status
}

// MARK: - Messages for store tests

/// A message with a payload of `payloadSize` bytes derived from the sequence (so that mix-ups show).
public func storedMessage(
    _ sequence: UInt64,
    subject: String = "orders.created",
    headers: [UInt8] = [],
    payloadSize: Int = 16
) -> StoredMessage {
    StoredMessage(
        sequence: sequence,
        subject: subject,
        headers: headers,
        payload: (0..<payloadSize).map { UInt8(truncatingIfNeeded: Int(sequence) &* 31 &+ $0) },
        timestamp: 1_700_000_000_000_000_000 + Int64(sequence)
    )
}

public func storedMessages(_ sequences: ClosedRange<UInt64>, payloadSize: Int = 16) -> [StoredMessage] {
    sequences.map { storedMessage($0, payloadSize: payloadSize) }
}
