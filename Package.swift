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
    products: [],
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

        // Model formats: GGUF reader, dequantization, Llama tensor mapping, byte-level BPE tokenizer.
        .target(name: "LorikeetGGUF", swiftSettings: upcoming),
        .testTarget(name: "LorikeetGGUFTests", dependencies: ["LorikeetGGUF"], swiftSettings: upcoming),
    ]
)
