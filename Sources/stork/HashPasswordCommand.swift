import ArgumentParser
import StorkRealtime

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - stork hash-password

/// `stork hash-password`: the `password:` value for a users file.
struct HashPasswordCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hash-password",
        abstract: "Print a password's hash for a users file (pbkdf2-sha256$…).",
        discussion: """
            Reads the password from standard input: with --password-stdin, everything up to the end of input (one \
            final newline removed); without it, on a terminal, prompts twice without echo. The password is never a \
            command-line argument, so it stays out of shell history and process lists.

            Examples:
              stork hash-password
              printf '%s' "$PASSWORD" | stork hash-password --password-stdin
            """
    )

    @Flag(help: "Read the password from standard input instead of prompting.")
    var passwordStdin = false

    @Option(help: "PBKDF2 iterations (1000 to 10000000).")
    var iterations = 210_000

    func validate() throws {
        guard (1_000...10_000_000).contains(self.iterations) else {
            throw ValidationError("--iterations must be from 1000 to 10000000")
        }
    }

    func run() throws {
        let password: String
        if self.passwordStdin {
            password = Self.withoutFinalNewline(Self.readAllStandardInput())
        } else {
            guard isatty(STDIN_FILENO) == 1 else {
                throw ValidationError(
                    "standard input is not a terminal: pass --password-stdin to read the password from it"
                )
            }
            let first = try Self.prompt("Password: ")
            let second = try Self.prompt("Repeat password: ")
            guard first == second else { throw ValidationError("the passwords do not match") }
            password = first
        }
        guard !password.isEmpty else { throw ValidationError("the password is empty") }
        print(PasswordHash(password: password, iterations: self.iterations).encoded)
    }

    static func readAllStandardInput() -> [UInt8] {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(STDIN_FILENO, $0.baseAddress, $0.count) }
            if count > 0 {
                bytes.append(contentsOf: buffer[0..<count])
            } else if count == 0 || errno != EINTR {
                return bytes
            }
        }
    }

    static func withoutFinalNewline(_ bytes: [UInt8]) -> String {
        var bytes = bytes[...]
        if bytes.last == UInt8(ascii: "\n") { bytes = bytes.dropLast() }
        if bytes.last == UInt8(ascii: "\r") { bytes = bytes.dropLast() }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func writeStandardError(_ text: String) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let written = bytes.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
            if written > 0 {
                bytes = bytes.dropFirst(written)
            } else if written < 0 && errno == EINTR {
                continue
            } else {
                return
            }
        }
    }

    /// Prints `text` on standard error and reads one line from the terminal with echo off.
    static func prompt(_ text: String) throws -> String {
        Self.writeStandardError(text)
        var original = termios()
        guard tcgetattr(STDIN_FILENO, &original) == 0 else {
            throw ValidationError("cannot read the terminal's settings")
        }
        var silent = original
        silent.c_lflag &= ~tcflag_t(ECHO)
        guard tcsetattr(STDIN_FILENO, TCSAFLUSH, &silent) == 0 else { throw ValidationError("cannot turn off echo") }
        defer {
            _ = tcsetattr(STDIN_FILENO, TCSAFLUSH, &original)
            Self.writeStandardError("\n")
        }
        guard let line = readLine(strippingNewline: true) else { throw ValidationError("no password given") }
        return line
    }
}
