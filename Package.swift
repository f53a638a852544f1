// swift-tools-version: 6.1
import PackageDescription

let upcoming: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

// The kernels are built twice on x86-64 (LorikeetKernelDispatch picks one at run time): for
// the baseline CPU, and for x86-64-v3 (`haswell`: AVX2, FMA, F16C). LORIKEET_TARGET_CPU
// replaces the second one's CPU (`native`, `skylake-avx512`, ...): the binary then needs
// that CPU whenever the CPU reports AVX2 (the run-time check knows x86-64-v3 only).
let kernelSettings: [SwiftSetting] = [.unsafeFlags(["-O"])]
#if arch(x86_64)
    let fastKernelCPU = Context.environment["LORIKEET_TARGET_CPU"] ?? "haswell"
    let fastKernelTargets: [Target] = [
        .target(
            name: "LorikeetKernelsAVX2",
            swiftSettings: upcoming + kernelSettings + [
                .unsafeFlags(["-target-cpu", fastKernelCPU]),
                // The sources use the FMA and F16C instructions directly under this flag (in the
                // portable build those operations are library calls, written out instead).
                .define("LORIKEET_FMA_F16C"),
            ])
    ]
    let fastKernelDependencies: [Target.Dependency] = ["LorikeetKernelsAVX2"]
#else
    let fastKernelTargets: [Target] = []
    let fastKernelDependencies: [Target.Dependency] = []
#endif

let package = Package(
    name: "lorikeet",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "lorikeet", targets: ["LorikeetCLI"]),
        .executable(name: "lorikeet-fuzz", targets: ["LorikeetFuzz"]),
        .executable(name: "lorikeet-bench-engine", targets: ["LorikeetBenchEngine"]),
        .executable(name: "lorikeet-bench-hello", targets: ["LorikeetBenchHello"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        // HTTP worker. Only HummingbirdCore is used (HTTP1Channel, Request/Response) on our own
        // NIO bootstrap; traits off to skip swift-configuration.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: []),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0", traits: []),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.34.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        // GET /metrics: instruments through swift-metrics (with an explicit factory, no global
        // bootstrap), exposed by swift-prometheus's registry.
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
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
        // Every boundary limit and the text rules for names and paths (docs/LIMITS.md);
        // no dependencies, so the engine checks the same numbers as the channels.
        .target(name: "LorikeetLimits", swiftSettings: upcoming),
        // The one JSON value type with its strict parser and compact writer: request and
        // response bodies in the worker, config files and safetensors headers in the engine.
        .target(name: "LorikeetJSON", swiftSettings: upcoming),
        .target(name: "LorikeetStructured", dependencies: ["LorikeetJSON", "LorikeetLimits"], swiftSettings: upcoming),
        .testTarget(
            name: "LorikeetStructuredTests", dependencies: ["LorikeetStructured", "LorikeetJSON"], swiftSettings: upcoming),
        // Protocol: message types, protobuf-c codec, framing. Knows no HTTP, no libuv.
        .target(
            name: "LorikeetProto",
            dependencies: ["CLorikeetProto", "CLorikeetSys", "LorikeetLimits"],
            swiftSettings: upcoming
        ),
        // The framed channels on SwiftNIO: frame codec and the one multiplexed call client
        // (request ids, deadlines, cancellation, back pressure). Apart from LorikeetProto so
        // that the protocol module stays free of NIO (the libuv supervisor and `lorikeet ctl`
        // use it), and apart from the worker so the engine server can share it.
        .target(
            name: "LorikeetChannels",
            dependencies: [
                "LorikeetProto",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcoming
        ),
        // The etcd v3 client of fleet mode (issue 14): etcd's JSON gateway over NIOHTTP1,
        // failover, deadlines, watches that resume, lease keeping. Knows no Lorikeet routes.
        .target(
            name: "LorikeetCluster",
            dependencies: [
                "LorikeetJSON", "LorikeetLimits",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcoming
        ),
        // The cluster agent of fleet mode (`lorikeet cluster-agent`): the node's etcd lease,
        // watch and commit transactions, behind the supervisor's cluster channel.
        .target(
            name: "LorikeetClusterAgent",
            dependencies: [
                "LorikeetCluster", "LorikeetChannels", "LorikeetProto",
                .product(name: "Logging", package: "swift-log"),
            ],
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
        // The worker: the only HTTP server (OpenAI-compatible routes, adapter table replica,
        // leader-side adapter mutations, engine channel client). Never imports libuv.
        .target(
            name: "LorikeetWorker",
            dependencies: [
                "LorikeetProto", "LorikeetJSON", "LorikeetChannels", "LorikeetStructured",
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                // The request-head deadline (HTTP/RequestHeadDeadline.swift).
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: upcoming
        ),
        // Upstream mode: the HTTP/1.1 client of vLLM / SGLang replicas (NIOAsyncChannel, back
        // pressure, pooled keep-alive connections) and the backend that routes requests over
        // them, fans adapter changes out and reconciles each replica. It implements the
        // worker's engine protocols (as a gRPC transport implements GRPCCore's), so it
        // depends on the worker, and only the command layer wires the two together.
        .target(
            name: "LorikeetUpstream",
            dependencies: [
                "LorikeetWorker", "LorikeetProto", "LorikeetJSON", "LorikeetLimits",
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcoming
        ),
        // Baseline for bin/bench-http: the smallest SwiftNIO HTTP/1.1 server.
        .executableTarget(
            name: "LorikeetBenchHello",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: upcoming
        ),
        // The `lorikeet` command.
        .executableTarget(
            name: "LorikeetCLI",
            dependencies: [
                "LorikeetProto", "LorikeetSupervisor", "LorikeetEngineServer", "LorikeetEngine", "CLorikeetSys", "LorikeetWorker",
                "LorikeetUpstream", "LorikeetClusterAgent",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: upcoming
        ),
        // Fuzz entry points: replay corpus files normally, libFuzzer with -DFUZZING.
        .executableTarget(
            name: "LorikeetFuzz",
            dependencies: [
                "LorikeetProto", "CLorikeetSys", "LorikeetWorker", "LorikeetEngine", "LorikeetGGUF", "LorikeetJSON", "LorikeetSupervisor",
                "LorikeetStructured",
            ],
            swiftSettings: upcoming
        ),
        // Shared by the integration suites: fixture, HTTP client, server-under-test harness.
        .target(name: "LorikeetTestSupport", path: "Tests/LorikeetTestSupport", swiftSettings: upcoming),
        .testTarget(
            name: "LorikeetSupervisorTests",
            dependencies: ["LorikeetSupervisor", "LorikeetProto", "LorikeetTestSupport"],
            swiftSettings: upcoming
        ),
        .testTarget(name: "LorikeetJSONTests", dependencies: ["LorikeetJSON"], swiftSettings: upcoming),
        .testTarget(
            name: "LorikeetClusterTests",
            dependencies: [
                "LorikeetCluster", "LorikeetClusterAgent", "LorikeetJSON", "LorikeetTestSupport",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcoming
        ),
        .testTarget(
            name: "LorikeetProtoTests",
            dependencies: ["LorikeetProto", "LorikeetTestSupport"],
            swiftSettings: upcoming
        ),
        .testTarget(
            name: "LorikeetChannelsTests",
            dependencies: [
                "LorikeetChannels", "LorikeetProto",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcoming
        ),
        .testTarget(
            name: "LorikeetWorkerTests",
            dependencies: [
                "LorikeetWorker",
                "LorikeetUpstream",
                "LorikeetJSON",
                "LorikeetProto",
                "LorikeetTestSupport",
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: upcoming
        ),

        // Matrix-vector kernels on quantized weights. Always optimized (generic SIMD code is
        // unusable at -Onone, and tests run the real model in debug builds). This build is the
        // portable one; LorikeetKernelsAVX2 (same files, symbolic links) is the x86-64-v3 one,
        // and LorikeetKernelDispatch picks one when the process starts.
        .target(name: "LorikeetKernels", swiftSettings: upcoming + kernelSettings),
        // Quantized weights times 8-bit activations in integer dot products (plain C, AVX2,
        // AVX-512 VNNI builds of the same arithmetic); always optimized, as the kernels above.
        .target(name: "CLorikeetQ8", cSettings: [.unsafeFlags(["-O3", "-ffp-contract=off"])]),
        .target(
            name: "LorikeetKernelDispatch", dependencies: ["LorikeetKernels", "CLorikeetSys", "CLorikeetQ8"] + fastKernelDependencies,
            swiftSettings: upcoming),
        // Built-in reference engine: Llama forward pass, PEFT LoRA, scheduler, GGUF models.
        // Model download is the command layer's (LorikeetCLI/ModelDownload.swift).
        .target(
            name: "LorikeetEngine",
            dependencies: ["LorikeetGGUF", "LorikeetJSON", "LorikeetKernelDispatch", "LorikeetLimits", "LorikeetStructured"],
            swiftSettings: upcoming),
        .executableTarget(
            name: "LorikeetBenchEngine",
            dependencies: ["LorikeetEngine", "LorikeetGGUF", "LorikeetStructured"],
            swiftSettings: upcoming
        ),
        .testTarget(
            name: "LorikeetEngineTests",
            // LorikeetCLI: the real-model tests get the default model as `lorikeet engine` does.
            dependencies: ["LorikeetEngine", "LorikeetGGUF", "LorikeetCLI", "LorikeetKernelDispatch", "LorikeetTestSupport"],
            swiftSettings: upcoming
        ),

        // Model formats: GGUF reader, dequantization, the one LlamaConfig and the Llama tensor
        // mapping, byte-level BPE tokenizer.
        .target(name: "LorikeetGGUF", swiftSettings: upcoming),
        .testTarget(name: "LorikeetGGUFTests", dependencies: ["LorikeetGGUF"], swiftSettings: upcoming),
        // The command layer's own code (model download).
        .testTarget(name: "LorikeetCLITests", dependencies: ["LorikeetCLI"], swiftSettings: upcoming),
        // The engine process: serves the engine channel for an EngineCore on a Unix socket.
        .target(
            name: "LorikeetEngineServer",
            dependencies: [
                "LorikeetEngine", "LorikeetProto", "LorikeetChannels", "LorikeetStructured", "LorikeetJSON",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcoming
        ),
        .testTarget(
            name: "LorikeetEngineServerTests",
            dependencies: ["LorikeetEngineServer", "LorikeetEngine", "LorikeetProto", "LorikeetTestSupport"],
            swiftSettings: upcoming
        ),
    ] + fastKernelTargets
)
