// swift-tools-version: 6.1
import PackageDescription

let upcoming: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "lorikeet",
    platforms: [.macOS(.v15)],
    products: [
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
        .target(
            name: "CLorikeetProto",
            dependencies: ["CProtobufC"],
            cSettings: [.headerSearchPath("generated")]
        ),

        // Built-in reference engine: Llama forward pass, PEFT LoRA, scheduler. Foundation only.
        .target(name: "LorikeetEngine", swiftSettings: upcoming),
        .executableTarget(
            name: "LorikeetBenchEngine",
            dependencies: ["LorikeetEngine"],
            swiftSettings: upcoming
        ),
        .testTarget(
            name: "LorikeetEngineTests",
            dependencies: ["LorikeetEngine"],
            swiftSettings: upcoming
        ),
    ]
)
