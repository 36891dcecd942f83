import StorkRealtime
import Testing

@Suite("stork hash-password")
struct HashPasswordCLITests {
    @Test("the printed hash verifies the password from stdin (one final newline removed)")
    func hashes() throws {
        let run = try StorkBinary.run(
            ["hash-password", "--password-stdin", "--iterations", "1000"],
            input: "correct horse\n"
        )
        #expect(run.status == 0, "\(run.standardError)")
        #expect(run.lines.count == 1)
        let line = try #require(run.lines.first)
        #expect(line.hasPrefix("pbkdf2-sha256$1000$"))
        let hash = try PasswordHash(encoded: line)
        #expect(hash.matches("correct horse"))
        #expect(!hash.matches("correct horse\n"))
        #expect(!hash.matches("correct horsE"))
    }

    @Test("spaces and a password without a newline are kept as they are")
    func exact() throws {
        let run = try StorkBinary.run(
            ["hash-password", "--password-stdin", "--iterations", "1000"],
            input: "  pass word "
        )
        let hash = try PasswordHash(encoded: try #require(run.lines.first))
        #expect(hash.matches("  pass word "))
    }

    @Test(
        "bad input exits with a usage error and prints no hash",
        arguments: [
            (["hash-password", "--password-stdin"], "\n", "the password is empty"),
            (
                ["hash-password", "--password-stdin", "--iterations", "10"], "pw",
                "--iterations must be from 1000 to 10000000"
            ),
            (["hash-password"], "pw\n", "pass --password-stdin"),
        ]
    )
    func badInput(arguments: [String], input: String, message: String) throws {
        let run = try StorkBinary.run(arguments, input: input)
        #expect(run.status == 64, "exit status \(run.status)")
        #expect(run.standardError.contains(message), "\(run.standardError)")
        #expect(run.standardOutput.isEmpty)
    }
}
