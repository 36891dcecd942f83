#if canImport(Glibc)
import Glibc
#endif

/// glibc's malloc keeps memory that a long-running server freed: past its first large free it raises its mmap
/// threshold (up to 32 MiB), so later large buffers — message batches, a segment's offsets, an index block read back —
/// come from the heap arenas, whose freed pages it returns only at the top. Measured on `stork serve` storing 3 M then
/// 6 M messages (BENCHMARKS.md "Long streams"): 40 → 103 → 112 MiB with the defaults, 40 → 64 → 65 MiB with fixed
/// thresholds. So the server fixes them at 128 KiB (allocations that large are mapped and unmapped on their own; free
/// space above 128 KiB at the top of a heap is given back), unless the environment sets them
/// (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`), which then win.
#if canImport(Glibc)
@_silgen_name("mallopt")
private func glibcMallopt(_ parameter: Int32, _ value: Int32) -> Int32
#endif

enum MemoryReturn {
    static func apply() {
        #if canImport(Glibc)
        let environment = ProcessInfoEnvironment()
        if environment["MALLOC_MMAP_THRESHOLD_"] == nil { _ = glibcMallopt(mmapThreshold, 128 * 1024) }
        if environment["MALLOC_TRIM_THRESHOLD_"] == nil { _ = glibcMallopt(trimThreshold, 128 * 1024) }
        #endif
    }

    #if canImport(Glibc)
    /// `<malloc.h>`, which the Glibc module does not export: `M_TRIM_THRESHOLD` and `M_MMAP_THRESHOLD`.
    private static let trimThreshold: Int32 = -1
    private static let mmapThreshold: Int32 = -3
    #endif

    private struct ProcessInfoEnvironment {
        subscript(name: String) -> String? {
            getenv(name).map { String(cString: $0) }
        }
    }
}
