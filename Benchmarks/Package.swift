// swift-tools-version:6.1
import PackageDescription

// Benchmarks for Stork, in their own package so that ordo-one/benchmark (package-benchmark) and its malloc
// interposer never become dependencies of Stork itself. Run from this folder:
//
//     swift package --disable-sandbox benchmark
//     swift package --disable-sandbox benchmark --filter 'owner.*'
//
// The `MallocInterposer` trait makes allocation counts (`mallocCountTotal`) work on Linux.
let package = Package(
    name: "StorkBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "Stork", path: "../"),
        // ordo-one/benchmark was called package-benchmark before; the old URL still resolves but warns on every run.
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "PlacementBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "StorkCore", package: "Stork"),
                .product(name: "StorkPlacement", package: "Stork"),
            ],
            path: "Benchmarks/PlacementBenchmarks",
            plugins: [
                .plugin(name: "BenchmarkPlugin", package: "benchmark")
            ]
        )
    ],
    swiftLanguageModes: [.v6]
)
