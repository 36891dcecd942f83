import Foundation
import Testing

/// `stork lookup`, run as a real process.
@Suite("stork lookup (CLI)")
struct LookupCLITests {
    static let ringpopMembers = "127.0.0.1:3000,127.0.0.1:3001,127.0.0.1:3002"
    static let ringpopExpected = [
        "1\t127.0.0.1:3001",
        "2\t127.0.0.1:3001",
        "3\t127.0.0.1:3001",
        "4\t127.0.0.1:3002",
        "5\t127.0.0.1:3000",
        "6\t127.0.0.1:3000",
        "resource-1\t127.0.0.1:3002",
    ]

    @Test func ringpopOwnersFromArguments() throws {
        let run = try StorkBinary.run(
            [
                "lookup", "--placement", "ringpop", "--members", Self.ringpopMembers, "1", "2", "3", "4", "5", "6",
                "resource-1",
            ]
        )
        #expect(run.status == 0, "\(run.standardError)")
        #expect(run.lines == Self.ringpopExpected)
    }

    @Test func ringpopChecksum() throws {
        let run = try StorkBinary.run([
            "lookup", "--placement", "ringpop", "--members", Self.ringpopMembers, "--checksum",
        ])
        #expect(run.status == 0, "\(run.standardError)")
        #expect(run.standardOutput == "742371003\n")
        // Member order and spaces around commas do not matter.
        let reordered = try StorkBinary.run(
            [
                "lookup", "--placement", "ringpop", "--members", "127.0.0.1:3002, 127.0.0.1:3000,127.0.0.1:3001",
                "--checksum",
            ]
        )
        #expect(reordered.standardOutput == "742371003\n")
    }

    /// With no ids on the command line, ids come from standard input: empty lines are skipped, "\r\n" line ends are
    /// accepted, and the last line needs no line end.
    @Test func idsFromStandardInput() throws {
        let run = try StorkBinary.run(
            ["lookup", "--placement", "ringpop", "--members", Self.ringpopMembers],
            input: "1\n2\n\n3\r\n4\n\n5\n6\nresource-1"
        )
        #expect(run.status == 0, "\(run.standardError)")
        #expect(run.lines == Self.ringpopExpected)
    }

    /// Standard input and arguments agree, for both strategies, over many ids and lines longer than the read buffer.
    @Test(arguments: ["default", "ringpop"])
    func standardInputMatchesArguments(placement: String) throws {
        let members = "10.0.0.1:7946,10.0.0.2:7946,10.0.0.3:7946,10.0.0.4:7946,10.0.0.5:7946"
        var ids = (0..<2_000).map { "sensor-\($0)" }
        // Longer than the 64 KiB read buffer, and shorter than the 128 KiB Linux allows for one argument.
        ids.append(String(repeating: "x", count: 100_000))
        let fromArguments = try StorkBinary.run(
            ["lookup", "--placement", placement, "--members", members] + ids.suffix(300)
        )
        let fromInput = try StorkBinary.run(
            ["lookup", "--placement", placement, "--members", members],
            input: ids.joined(separator: "\n") + "\n"
        )
        #expect(
            fromArguments.status == 0 && fromInput.status == 0,
            "\(fromArguments.standardError)\(fromInput.standardError)"
        )
        #expect(fromInput.lines.count == ids.count)
        #expect(Array(fromInput.lines.suffix(300)) == fromArguments.lines)
        let owners = Set(fromInput.lines.map { $0.split(separator: "\t").last.map(String.init) ?? "" })
        #expect(owners == Set(members.split(separator: ",").map(String.init)))
    }

    /// The default strategy is rendezvous hashing, also accepted by that name; it differs from ringpop's.
    @Test func defaultStrategyNames() throws {
        let members = ["--members", "a:1,b:1,c:1"]
        let ids = (0..<50).map { "id-\($0)" }
        let implicit = try StorkBinary.run(["lookup"] + members + ids)
        let named = try StorkBinary.run(["lookup", "--placement", "rendezvous"] + members + ids)
        let ringpop = try StorkBinary.run(["lookup", "--placement", "ringpop"] + members + ids)
        #expect(implicit.status == 0)
        #expect(implicit.lines == named.lines)
        #expect(implicit.lines != ringpop.lines)
    }

    /// A large input stays fast (buffered reading and writing), even in a debug build.
    @Test func manyIdsFromStandardInput() throws {
        let count = 200_000
        let input = (0..<count).map { "resource-\($0)\n" }.joined()
        let start = ContinuousClock.now
        let run = try StorkBinary.run(["lookup", "--members", "a:1,b:1,c:1,d:1,e:1,f:1,g:1,h:1,i:1,j:1"], input: input)
        let elapsed = ContinuousClock.now - start
        #expect(run.status == 0, "\(run.standardError)")
        #expect(run.lines.count == count)
        #expect(run.lines.first?.hasPrefix("resource-0\t") == true)
        #expect(elapsed < .seconds(20), "200,000 lookups took \(elapsed)")
    }

    // MARK: - Bad input

    @Test(
        "bad input exits with a usage error",
        arguments: [
            (["lookup", "1"], "Missing --members"),
            (["lookup", "--members", "", "1"], "--members is empty"),
            (["lookup", "--members", " , ", "1"], "--members is empty"),
            (["lookup", "--members", "a:1,,b:1", "1"], "empty entry"),
            (["lookup", "--placement", "consistent", "--members", "a:1", "1"], "Unknown placement 'consistent'"),
        ]
    )
    func badInput(arguments: [String], message: String) throws {
        let run = try StorkBinary.run(arguments)
        #expect(run.status == 64, "exit status \(run.status)")
        #expect(run.standardError.contains(message), "\(run.standardError)")
        #expect(run.standardOutput.isEmpty)
    }
}
