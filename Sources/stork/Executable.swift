import Foundation

/// The running `stork` executable, which `stork demo` and the benchmarks start again as `stork serve` children.
enum StorkExecutable {
    static var url: URL {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    }
}
