// Fuzz entry points for the byte-level decoders: the three channel envelopes (this file),
// HTTP JSON bodies (FuzzHTTP.swift), safetensors and adapter configs
// (FuzzEngineFormats.swift), GGUF files (FuzzGGUF.swift), adapter paths and target_modules
// regexes (FuzzAdapterFiles.swift), structured-output schemas and documents
// (FuzzStructured.swift).
//
// Built normally this is a corpus replayer: `lorikeet-fuzz TARGET FILE...` runs each
// file through the target (CI replays the committed seed corpora this way).
// Built with `-DFUZZING -sanitize=fuzzer,address` (see bin/fuzz) it is a libFuzzer
// binary for the target named by $LORIKEET_FUZZ_TARGET.
import LorikeetProto

#if canImport(Glibc)
    import Glibc
#endif

/// Runs one input through a named target. Never traps on any input: that is the property fuzzed.
func runTarget(_ name: String, _ bytes: [UInt8]) -> Bool {
    switch name {
    case "frames-control": return decodeAll(bytes, as: ControlEnvelope.self)
    case "frames-admin": return decodeAll(bytes, as: AdminEnvelope.self)
    case "frames-engine": return decodeAll(bytes, as: EngineEnvelope.self)
    case "http-json": fuzzHTTPJSON(bytes)
    case "safetensors": fuzzSafetensors(bytes)
    case "lora-config": fuzzLoRAConfig(bytes)
    case "gguf": fuzzGGUF(bytes)
    case "admin-requests": fuzzAdminRequests(bytes)
    case "adapter-path": fuzzAdapterPath(bytes)
    case "target-modules": fuzzTargetModules(bytes)
    case "structured-output": fuzzStructuredOutput(bytes)
    default: return false
    }
    return true
}

/// Every target, in the order bin/fuzz runs them.
let fuzzTargets = [
    "frames-control", "frames-admin", "frames-engine", "http-json", "safetensors", "lora-config", "gguf", "adapter-path", "target-modules",
    "admin-requests", "structured-output",
]

/// Feeds the bytes in two pieces (split point from the first byte) through the frame
/// and envelope decoder; re-encodes what decodes and checks it decodes again equal.
func decodeAll<M: WireMessage & Equatable>(_ bytes: [UInt8], as type: M.Type) -> Bool {
    var decoder = MessageDecoder<M>(maximumFrameSize: 1 << 16)
    let split = bytes.isEmpty ? 0 : Int(bytes[0]) % (bytes.count + 1)
    decoder.feed(bytes[0..<split])
    var pending = true
    var fedRest = false
    while pending {
        do {
            if let message = try decoder.next() {
                let again = try? M(serializedBytes: message.serializedBytes())
                if again != message { fatalError("re-encoded message differs: \(message)") }
            } else if !fedRest {
                decoder.feed(bytes[split...])
                fedRest = true
            } else {
                pending = false
            }
        } catch {
            return true
        }
    }
    return true
}

#if FUZZING
    import CLorikeetSys

    /// libFuzzer binary: SwiftPM links executables through `<Module>_main`, so hand control
    /// to libFuzzer's driver from there.
    @_cdecl("LorikeetFuzz_main")
    func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
        var count = argc
        var arguments = argv
        return LLVMFuzzerRunDriver(&count, &arguments) { data, size in fuzzOneInput(data, size) }
    }

    @_cdecl("LLVMFuzzerTestOneInput")
    func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
        let target = getenv("LORIKEET_FUZZ_TARGET").map { String(cString: $0) } ?? "frames-control"
        _ = runTarget(target, Array(UnsafeBufferPointer(start: data, count: size)))
        return 0
    }
#else
    /// Corpus replayer (the normal build).
    @main
    struct FuzzReplay {
        static func main() {
            let arguments = CommandLine.arguments
            if arguments.count < 3 {
                print("usage: lorikeet-fuzz TARGET FILE... (targets: \(fuzzTargets.joined(separator: ", ")))")
                exit(2)
            }
            var replayed = 0
            for path in arguments.dropFirst(2) {
                guard let file = fopen(path, "rb") else {
                    print("cannot open \(path)")
                    exit(1)
                }
                var bytes: [UInt8] = []
                var buffer = [UInt8](repeating: 0, count: 4096)
                while true {
                    let count = fread(&buffer, 1, buffer.count, file)
                    if count <= 0 { break }
                    bytes.append(contentsOf: buffer[0..<count])
                }
                fclose(file)
                guard runTarget(arguments[1], bytes) else {
                    print("unknown target \(arguments[1])")
                    exit(2)
                }
                replayed += 1
            }
            print("replayed \(replayed) inputs through \(arguments[1]) without a crash")
        }
    }
#endif
