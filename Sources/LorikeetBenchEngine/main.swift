// Engine benchmark: tokens/s for base vs adapter requests on the fixture model.
// Usage: lorikeet-bench-engine FIXTURE_DIR [--threads N] [--tokens N]
// (bin/bench-engine generates the fixture and builds this in release mode.)
import Dispatch
import Foundation
import LorikeetEngine
import Synchronization

struct BenchError: Error, CustomStringConvertible {
    var description: String
}

func parseArguments() throws -> (dir: String, threads: Int, tokens: Int) {
    var args = Array(CommandLine.arguments.dropFirst())
    guard !args.isEmpty else { throw BenchError(description: "usage: lorikeet-bench-engine FIXTURE_DIR [--threads N] [--tokens N]") }
    let dir = args.removeFirst()
    var threads = 1
    var tokens = 200
    while !args.isEmpty {
        let flag = args.removeFirst()
        guard let value = args.first.flatMap(Int.init) else { throw BenchError(description: "\(flag) needs a number") }
        args.removeFirst()
        switch flag {
        case "--threads": threads = value
        case "--tokens": tokens = value
        default: throw BenchError(description: "unknown flag \(flag)")
        }
    }
    return (dir, threads, tokens)
}

/// Runs `streams` concurrent greedy requests of `tokens` tokens each; returns tokens/s.
func measure(_ core: EngineCore, adapter: UInt64?, streams: Int, tokens: Int, tag: String) throws -> Double {
    let done = DispatchSemaphore(value: 0)
    let generated = Mutex(0)
    let start = DispatchTime.now()
    for i in 0..<streams {
        let prompt = [UInt32(256)] + Array("Benchmark prompt \(i): the quick brown fox".utf8).map(UInt32.init)
        try core.submit(
            GenerationRequest(
                id: "\(tag)-\(i)", prompt: .tokens(prompt), adapterID: adapter,
                params: SamplingParams(maxTokens: tokens, ignoreEOS: true))
        ) { event in
            generated.withLock { $0 += event.tokens.count }
            if event.finishReason != nil { done.signal() }
        }
    }
    for _ in 0..<streams { done.wait() }
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
    return Double(generated.withLock { $0 }) / seconds
}

func row(_ a: String, _ b: String, _ c: String) -> String {
    a.padding(toLength: 34, withPad: " ", startingAt: 0) + String(repeating: " ", count: max(0, 10 - b.count)) + b
        + String(repeating: " ", count: max(0, 14 - c.count)) + c
}

do {
    if CommandLine.arguments.dropFirst().first == "--model" {
        // lorikeet-bench-engine --model smollm2 --model-file PATH [--threads-list 1,2] [--tokens N] [--storage quantized|quantized-exact|float32] [--json PATH]
        var args = Array(CommandLine.arguments.dropFirst(2))
        guard args.first == "smollm2" else { throw BenchError(description: "only --model smollm2 is supported") }
        args.removeFirst()
        var threads = [1, 2]
        var tokens = 128
        var storage = WeightStorage.quantized
        var json: String?
        var modelFile: String?
        while args.count >= 2 {
            let (flag, value) = (args[0], args[1])
            args.removeFirst(2)
            switch flag {
            case "--threads-list": threads = value.split(separator: ",").compactMap { Int($0) }
            case "--tokens": tokens = Int(value) ?? tokens
            case "--storage":
                guard let s = WeightStorage(rawValue: value) else { throw BenchError(description: "bad --storage \(value)") }
                storage = s
            case "--json": json = value
            case "--model-file": modelFile = value
            default: throw BenchError(description: "unknown flag \(flag)")
            }
        }
        guard args.isEmpty else { throw BenchError(description: "\(args[0]) needs a value") }
        guard let modelFile else {
            throw BenchError(description: "--model smollm2 needs --model-file PATH (bin/bench-engine passes the cached default model)")
        }
        try SmolLM2Bench.run(modelFile: modelFile, threadCounts: threads, decodeTokens: tokens, storage: storage, json: json)
        exit(0)
    }
    let (dir, threads, tokens) = try parseArguments()
    let core = try EngineCore(
        modelDirectory: dir + "/model", options: EngineOptions(maxLoras: 4, maxLoraRank: 32, threads: threads))
    _ = try core.adapters.add(name: "plain", intID: 1, path: dir + "/adapters/plain", epoch: 1)
    _ = try core.adapters.add(name: "rslora", intID: 2, path: dir + "/adapters/rslora", epoch: 1)
    _ = try core.adapters.add(name: "rank32", intID: 3, path: dir + "/adapters/rank32", epoch: 1)
    _ = try measure(core, adapter: nil, streams: 2, tokens: 32, tag: "warmup")
    print("fixture model: hidden 64, 2 layers, vocab 258; \(tokens) tokens per request; threads \(threads)")
    print(row("case", "tokens/s", "adapter/base"))
    for streams in [1, 8] {
        var round = 0
        func run(_ adapter: UInt64?) throws -> Double {
            round += 1
            // Best of three, to smooth out noise from other processes on a shared machine.
            return try (0..<3).map { try measure(core, adapter: adapter, streams: streams, tokens: tokens, tag: "r\(round)-\($0)") }.max()!
        }
        let base = try run(nil)
        print(row("base, \(streams) stream(s)", String(Int(base)), "1.00"))
        for (name, id) in [("plain r8 q,v", UInt64(1)), ("rslora r4 all-linear", 2), ("rank32 q,o,down", 3)] {
            let rate = try run(id)
            print(row("\(name), \(streams) stream(s)", String(Int(rate)), String(format: "%.2f", rate / base)))
        }
        if streams == 8 {
            // Mixed batch: base and all three adapters side by side.
            let done = DispatchSemaphore(value: 0)
            let count = Mutex(0)
            let start = DispatchTime.now()
            for i in 0..<8 {
                try core.submit(
                    GenerationRequest(
                        id: "mixed-\(i)", prompt: .text("Mixed \(i)"), adapterID: [nil, 1, 2, 3][i % 4],
                        params: SamplingParams(maxTokens: tokens, ignoreEOS: true))
                ) { e in
                    count.withLock { $0 += e.tokens.count }
                    if e.finishReason != nil { done.signal() }
                }
            }
            for _ in 0..<8 { done.wait() }
            let rate = Double(count.withLock { $0 }) / (Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9)
            print(row("mixed base+3 adapters, 8", String(Int(rate)), String(format: "%.2f", rate / base)))
        }
    }
    core.shutdown()
} catch {
    FileHandle.standardError.write(Data("lorikeet-bench-engine: \(error)\n".utf8))
    exit(1)
}
