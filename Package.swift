// swift-tools-version: 6.1
import PackageDescription

let upcoming: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let targetCPU = Context.environment["LORIKEET_TARGET_CPU"] ?? "native"
let kernelSettings: [SwiftSetting] =
    [.unsafeFlags(["-O"])] + (targetCPU == "generic" ? [] : [.unsafeFlags(["-target-cpu", targetCPU], .when(platforms: [.linux]))])

let package = Package(
    name: "lorikeet",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "lorikeet", targets: ["LorikeetCLI"]),
        .executable(name: "lorikeet-fuzz", targets: ["LorikeetFuzz"]),
        .executable(name: "lorikeet-bench-engine", targets: ["LorikeetBenchEngine"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // Thin C layers.
        .systemLibrary(name: "CLibUV", pkgConfig: "libuv", providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(name: "CProtobufC", pkgConfig: "libprotobuf-c", providers: [.apt(["libprotobuf-c-dev"])]),
        .target(name: "CLorikeetSys"),
        .target(
            name: "CLorikeetProto",
            dependencies: ["CProtobufC"],
            cSettings: [.headerSearchPath("include")]
        ),
        // Protocol: message types, protobuf-c codec, framing. Knows no HTTP, no libuv.
        .target(
            name: "LorikeetProto",
            dependencies: ["CLorikeetProto", "CLorikeetSys"],
            swiftSettings: upcoming
        ),
        // The libuv supervisor: the only importer of CLibUV.
        .target(
            name: "LorikeetSupervisor",
            dependencies: [
                "CLibUV", "LorikeetProto",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcoming
        ),
        // The `lorikeet` command.
        .executableTarget(
            name: "LorikeetCLI",
            dependencies: [
                "LorikeetProto", "LorikeetSupervisor", "LorikeetEngineServer", "LorikeetEngine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcoming
        ),
        // Fuzz entry points: replay corpus files normally, libFuzzer with -DFUZZING.
        .executableTarget(
            name: "LorikeetFuzz",
            dependencies: ["LorikeetProto", "CLorikeetSys"],
            swiftSettings: upcoming
        ),
        .testTarget(
            name: "LorikeetSupervisorTests",
            dependencies: ["LorikeetSupervisor", "LorikeetProto"],
            swiftSettings: upcoming
        ),
        .testTarget(
            name: "LorikeetProtoTests",
            dependencies: ["LorikeetProto"],
            swiftSettings: upcoming
        ),

        // Matrix-vector kernels on quantized weights. Always optimized (generic SIMD code is
        // unusable at -Onone, and tests run the real model in debug builds) and compiled for
        // the build machine's CPU like llama.cpp's GGML_NATIVE; LORIKEET_TARGET_CPU overrides
        // it (e.g. `haswell`, or `generic` for a portable build).
        .target(name: "LorikeetKernels", swiftSettings: upcoming + kernelSettings),
        // Built-in reference engine: Llama forward pass, PEFT LoRA, scheduler, GGUF models.
        .target(name: "LorikeetEngine", dependencies: ["LorikeetGGUF", "LorikeetKernels"], swiftSettings: upcoming),
        .executableTarget(
            name: "LorikeetBenchEngine",
            dependencies: ["LorikeetEngine"],
            swiftSettings: upcoming
        ),
        .testTarget(
            name: "LorikeetEngineTests",
            dependencies: ["LorikeetEngine", "LorikeetGGUF"],
            swiftSettings: upcoming
        ),

        // Model formats: GGUF reader, dequantization, Llama tensor mapping, byte-level BPE tokenizer.
        .target(name: "LorikeetGGUF", swiftSettings: upcoming),
        .testTarget(name: "LorikeetGGUFTests", dependencies: ["LorikeetGGUF"], swiftSettings: upcoming),
        // The engine process: serves the engine channel for an EngineCore on a Unix socket.
        .target(
            name: "LorikeetEngineServer",
            dependencies: [
                "LorikeetEngine", "LorikeetProto",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcoming
        ),
        .testTarget(
            name: "LorikeetEngineServerTests",
            dependencies: ["LorikeetEngineServer", "LorikeetEngine", "LorikeetProto"],
            swiftSettings: upcoming
        ),
    ]
)
