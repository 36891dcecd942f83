import Foundation

// MARK: - StorkBinary

/// The built `stork` executable, for tests that run it as a real process.
///
/// SwiftPM puts executables next to the test bundle (`.build/debug/stork` beside
/// `.build/debug/StorkPackageTests.xctest`), and `StorkCLITests` depends on the `stork` target so that it is built
/// first. The search starts at the test executable and walks up; `STORK_BINARY` overrides it.
enum StorkBinary {
    /// The `stork` executable, or an error saying where it was looked for.
    static var url: URL {
        get throws { try Self.located.get() }
    }

    struct NotFound: Error, CustomStringConvertible {
        var searched: [String]
        var description: String {
            "Could not find the `stork` executable next to the test bundle (looked in: "
                + self.searched.joined(separator: ", ")
                + "). Build it first (`swift build`), or set STORK_BINARY to its path."
        }
    }

    private static let located: Result<URL, NotFound> = {
        let fileManager = FileManager.default
        if let override = ProcessInfo.processInfo.environment["STORK_BINARY"], !override.isEmpty {
            return fileManager.isExecutableFile(atPath: override)
                ? .success(URL(fileURLWithPath: override)) : .failure(NotFound(searched: [override]))
        }
        var starts = [URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()]
        starts.append(Bundle.main.bundleURL)
        starts.append(contentsOf: Bundle.allBundles.map(\.bundleURL).filter { $0.pathExtension == "xctest" })
        var searched: [String] = []
        for start in starts {
            var directory = start.deletingLastPathComponent()
            // Up to the folder holding `.build`: far enough for `.xctest/Contents/MacOS/…` on Darwin.
            for _ in 0..<6 {
                let candidate = directory.appendingPathComponent("stork")
                var isDirectory: ObjCBool = false
                if fileManager.fileExists(atPath: candidate.path, isDirectory: &isDirectory), !isDirectory.boolValue,
                    fileManager.isExecutableFile(atPath: candidate.path)
                {
                    return .success(candidate)
                }
                if !searched.contains(directory.path) { searched.append(directory.path) }
                let parent = directory.deletingLastPathComponent()
                if parent.path == directory.path { break }
                directory = parent
            }
        }
        return .failure(NotFound(searched: searched))
    }()
}

// MARK: - Running stork

/// What a finished `stork` process printed and how it exited.
struct StorkRun: Sendable {
    var status: Int32
    var standardOutput: String
    var standardError: String

    /// Standard output split into lines, without the final empty one.
    var lines: [String] {
        var lines = self.standardOutput.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.last == "" { lines.removeLast() }
        return lines
    }
}

extension StorkBinary {
    /// Runs `stork` with `arguments`, feeding it `input` on standard input, and waits for it to exit.
    ///
    /// Output goes through temporary files rather than pipes, so a process that prints a lot cannot block.
    static func run(_ arguments: [String], input: String = "") throws -> StorkRun {
        let fileManager = FileManager.default
        let directory = fileManager.temporaryDirectory.appendingPathComponent("stork-cli-\(UUID().uuidString)")
        try fileManager.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? fileManager.removeItem(at: directory) }
        let inputURL = directory.appendingPathComponent("stdin")
        let outputURL = directory.appendingPathComponent("stdout")
        let errorURL = directory.appendingPathComponent("stderr")
        try Data(input.utf8).write(to: inputURL)
        _ = fileManager.createFile(atPath: outputURL.path, contents: nil)
        _ = fileManager.createFile(atPath: errorURL.path, contents: nil)

        let process = Process()
        process.executableURL = try Self.url
        process.arguments = arguments
        let inputHandle = try FileHandle(forReadingFrom: inputURL)
        let outputHandle = try FileHandle(forWritingTo: outputURL)
        let errorHandle = try FileHandle(forWritingTo: errorURL)
        defer {
            try? inputHandle.close()
            try? outputHandle.close()
            try? errorHandle.close()
        }
        process.standardInput = inputHandle
        process.standardOutput = outputHandle
        process.standardError = errorHandle
        try process.run()
        process.waitUntilExit()
        return StorkRun(
            status: process.terminationStatus,
            standardOutput: String(decoding: try Data(contentsOf: outputURL), as: UTF8.self),
            standardError: String(decoding: try Data(contentsOf: errorURL), as: UTF8.self)
        )
    }
}
