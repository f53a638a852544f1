// Fuzz targets `adapter-path` and `target-modules`: the engine's walk from the allowed
// prefix to an adapter directory (SecureFile), and its linear-time matcher for PEFT
// `target_modules` regexes (TargetModulePattern).
import Foundation
import LorikeetEngine

#if canImport(Glibc)
    import Glibc
#endif

/// A scratch tree, built once per process and removed at exit:
/// `allowed/good` (an adapter), `allowed/link -> allowed/good`, `allowed/out -> outside`,
/// `allowed/fifo/adapter_config.json` (a FIFO), `allowed/dev/adapter_model.safetensors ->
/// /dev/zero`, `outside/adapter`.
let fuzzAdapterTree: String? = {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("lorikeet-fuzz-adapter-path-\(getpid())").path
    let fm = FileManager.default
    do {
        let config = Data(#"{"r":4,"lora_alpha":8,"target_modules":["q_proj"]}"#.utf8)
        for dir in ["allowed/good", "allowed/fifo", "allowed/dev", "outside/adapter"] {
            try fm.createDirectory(atPath: root + "/" + dir, withIntermediateDirectories: true)
        }
        try config.write(to: URL(fileURLWithPath: root + "/allowed/good/adapter_config.json"))
        try Data([8, 0, 0, 0, 0, 0, 0, 0] + Array("{}      ".utf8)).write(
            to: URL(fileURLWithPath: root + "/allowed/good/adapter_model.safetensors"))
        try config.write(to: URL(fileURLWithPath: root + "/outside/adapter/adapter_config.json"))
        try config.write(to: URL(fileURLWithPath: root + "/allowed/dev/adapter_config.json"))
        try fm.createSymbolicLink(atPath: root + "/allowed/link", withDestinationPath: root + "/allowed/good")
        try fm.createSymbolicLink(atPath: root + "/allowed/out", withDestinationPath: root + "/outside")
        try fm.createSymbolicLink(atPath: root + "/allowed/dev/adapter_model.safetensors", withDestinationPath: "/dev/zero")
        guard mkfifo(root + "/allowed/fifo/adapter_config.json", 0o600) == 0 else { return nil }
    } catch {
        return nil
    }
    atexit { if let tree = fuzzAdapterTreeRoot { try? FileManager.default.removeItem(atPath: tree) } }
    return SecureFile.resolvedPath(root)
}()

/// The tree's root for the exit handler (a C function pointer cannot capture).
let fuzzAdapterTreeRoot: String? = fuzzAdapterTree

/// Walks to the path in `bytes` (absolute, or relative to the scratch tree) with the
/// tree's `allowed` directory as the prefix (first byte even) or no prefix (odd), then
/// reads both adapter files. Properties: never traps or blocks (the FIFO), and an opened
/// directory is really where the walk says (no symlink followed): with the prefix, under
/// it; without, at the given path.
func fuzzAdapterPath(_ bytes: [UInt8]) {
    guard let root = fuzzAdapterTree else { fatalError("cannot build the scratch tree") }
    guard let first = bytes.first else { return }
    let prefixes = first % 2 == 0 ? [root + "/allowed"] : []
    let text = String(decoding: bytes.dropFirst(), as: UTF8.self)
    let path = text.hasPrefix("/") ? text : root + "/" + text
    guard let directory = try? SecureFile.openDirectory(path, allowedPrefixes: prefixes) else { return }
    // Where the descriptor really is.
    var buffer = [CChar](repeating: 0, count: 4096)
    let count = readlink("/proc/self/fd/\(directory.fd)", &buffer, buffer.count - 1)
    guard count > 0 else { fatalError("cannot read /proc/self/fd/\(directory.fd)") }
    let real = String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    if let prefix = prefixes.first {
        if real != prefix && !real.hasPrefix(prefix + "/") { fatalError("walked out of the prefix: \(path) opened \(real)") }
    }
    if real != directory.path { fatalError("followed a symlink: \(path) opened \(real), not \(directory.path)") }
    _ = try? SecureFile.read("adapter_config.json", in: directory, limit: 1 << 20)
    _ = try? SecureFile.read("adapter_model.safetensors", in: directory, limit: 1 << 20)
}

/// Module paths of a 2-layer Llama, plus a long one, for matching.
let fuzzModulePaths: [String] =
    (0..<2).flatMap { l in LinearModule.allCases.map { $0.path(layer: l) } } + [String(repeating: "a", count: 2_000) + "!"]

/// Compiles the bytes as a `target_modules` regex and matches it against module paths.
/// Properties: never traps, finishes in time linear in pattern × text (libFuzzer's
/// timeout catches a regression to backtracking), and matching is deterministic.
func fuzzTargetModules(_ bytes: [UInt8]) {
    let pattern = String(decoding: bytes, as: UTF8.self)
    guard let matcher = try? TargetModulePattern(pattern) else { return }
    for path in fuzzModulePaths {
        if matcher.fullMatch(path) != matcher.fullMatch(path) { fatalError("matching \(path) is not deterministic") }
    }
}
