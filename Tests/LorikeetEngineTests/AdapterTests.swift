import Foundation
import LorikeetTestSupport
import Synchronization
import Testing

@testable import LorikeetEngine

@Suite("LoRA adapters: refusals, slots, epochs", .ownThreads)
struct AdapterTests {
    struct Refusal: CustomTestStringConvertible, Sendable {
        var fixture: String
        var maxLoraRank: Int = 32
        var code: EngineError.Code = .invalidArgument
        var message: String
        var testDescription: String { self.fixture }
    }

    static let refusals: [Refusal] = [
        Refusal(fixture: "adapters/rank32", maxLoraRank: 16, message: "LoRA rank 32 is greater than max_lora_rank 16."),
        Refusal(fixture: "broken/dora", message: "does not yet support DoRA"),
        Refusal(fixture: "broken/modules_to_save", message: "only supports modules_to_save being None"),
        Refusal(fixture: "broken/bias", message: "Adapter bias cannot be used without bias_enabled"),
        Refusal(fixture: "broken/unknown_target", message: "but received [\"x_proj\"]"),
        Refusal(fixture: "broken/unknown_tensor", message: "expected target modules in"),
        Refusal(fixture: "broken/shape_mismatch", message: "has shape [64, 8], expected [32, 8]"),
        Refusal(fixture: "broken/missing_file", code: .notFound, message: "'adapter_model.safetensors' not found"),
        Refusal(fixture: "broken/truncated", message: "adapter_model.safetensors: safetensors"),
        Refusal(fixture: "broken/no_tensors", message: "contains no LoRA tensors"),
        Refusal(fixture: "broken/bad_json", message: "not valid JSON"),
        Refusal(fixture: "does-not-exist", code: .notFound, message: "the adapter path was not found"),
        Refusal(fixture: "model/config.json", message: "the adapter path is not allowed"),
    ]

    /// Each refusal leaves the engine serving: the plain adapter and the base model still
    /// answer, with the reference tokens.
    @Test(arguments: refusals)
    func refusesBadAdapterAndKeepsServing(_ r: Refusal) async throws {
        let core = try Fixture.engine(maxLoraRank: r.maxLoraRank)
        _ = try core.adapters.add(name: "plain", intID: 1, path: try Fixture.adapter("plain"), epoch: 1)
        let before = core.adapters.list()
        let path = try Fixture.directory() + "/" + r.fixture
        do {
            _ = try core.adapters.add(name: "bad", intID: 2, path: path, epoch: 1)
            Issue.record("adapter \(r.fixture) was accepted")
        } catch {
            #expect(error.code == r.code)
            #expect(error.message.contains(r.message), "\(error.message)")
        }
        #expect(core.adapters.list() == before)
        let ref = try Fixture.reference()
        #expect(try await core.greedy("after-plain", adapter: 1).tokens == ref.cases["plain"]!.greedy)
        #expect(try await core.greedy("after-base").tokens == ref.cases["base"]!.greedy)
    }

    @Test func symlinkedDirectoryAndSwappedFileAreRefused() async throws {
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lorikeet-symlink-\(UUID())").path
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        let tmpReal = SecureFile.resolvedPath(tmp)!
        let plain = try Fixture.adapter("plain")
        // A directory path that is a symlink: realpath differs from what was given.
        try FileManager.default.createSymbolicLink(atPath: tmpReal + "/link", withDestinationPath: plain)
        // A real directory whose weights file was swapped for a symlink: O_NOFOLLOW refuses it.
        try FileManager.default.createDirectory(atPath: tmpReal + "/swapped", withIntermediateDirectories: false)
        try FileManager.default.copyItem(atPath: plain + "/adapter_config.json", toPath: tmpReal + "/swapped/adapter_config.json")
        try FileManager.default.createSymbolicLink(
            atPath: tmpReal + "/swapped/adapter_model.safetensors", withDestinationPath: plain + "/adapter_model.safetensors")

        // No prefixes configured: the walk starts at `/`, so a symlink anywhere is refused.
        let core = try Fixture.engine()
        #expect {
            try core.adapters.add(name: "link", intID: 1, path: tmpReal + "/link", epoch: 1)
        } throws: { ($0 as? EngineError)?.message.contains("is not allowed") == true }
        #expect {
            try core.adapters.add(name: "swapped", intID: 2, path: tmpReal + "/swapped", epoch: 1)
        } throws: { ($0 as? EngineError)?.message.contains("'adapter_model.safetensors' is not a regular file") == true }
        #expect {
            try core.adapters.add(name: "dots", intID: 3, path: plain + "/../plain", epoch: 1)
        } throws: { ($0 as? EngineError)?.message.contains("is not allowed") == true }
        #expect {
            try core.adapters.add(name: "relative", intID: 4, path: "adapters/plain", epoch: 1)
        } throws: { ($0 as? EngineError)?.message.contains("is not allowed") == true }
        #expect(core.adapters.list().isEmpty)
        _ = try core.adapters.add(name: "plain", intID: 5, path: plain, epoch: 1)
        #expect(try await core.greedy("ok", adapter: 5).tokens == Fixture.reference().cases["plain"]!.greedy)
    }

    @Test func epochFencing() throws {
        let core = try Fixture.engine()
        let plain = try Fixture.adapter("plain")
        _ = try core.adapters.add(name: "plain", intID: 1, path: plain, epoch: 5)
        #expect(core.adapters.maxEpoch == 5)
        let stale = #expect(throws: EngineError.self) {
            try core.adapters.add(name: "rslora", intID: 2, path: try Fixture.adapter("rslora"), epoch: 4)
        }
        #expect(stale?.code == .failedPrecondition)
        #expect(stale?.message.contains("epoch 4") == true && stale?.message.contains("epoch 5") == true)
        #expect(throws: EngineError.self) { try core.adapters.remove(intID: 1, epoch: 3) }
        #expect(throws: EngineError.self) { try core.adapters.pin(intID: 1, pinned: true, epoch: 2) }
        #expect(core.adapters.list().map(\.intID) == [1])
        #expect(core.adapters.list()[0].pinned == false)
        // A newer leader proceeds, and the old one stays fenced off.
        try core.adapters.remove(intID: 1, epoch: 6)
        #expect(core.adapters.list().isEmpty)
        #expect(throws: EngineError.self) { try core.adapters.add(name: "plain", intID: 1, path: plain, epoch: 5) }
        #expect(try core.adapters.add(name: "plain", intID: 1, path: plain, epoch: 6) == .added)
    }

    @Test func idsAndNamesAreUniqueAndAddIsIdempotent() throws {
        let core = try Fixture.engine()
        let plain = try Fixture.adapter("plain")
        let rs = try Fixture.adapter("rslora")
        #expect(try core.adapters.add(name: "a", intID: 1, path: plain, epoch: 1) == .added)
        #expect(try core.adapters.add(name: "a", intID: 1, path: plain, epoch: 1) == .alreadyLoaded)
        #expect(throws: EngineError.self) { try core.adapters.add(name: "b", intID: 1, path: rs, epoch: 1) }
        #expect(throws: EngineError.self) { try core.adapters.add(name: "a", intID: 2, path: rs, epoch: 1) }
        #expect(try core.adapters.add(name: "a", intID: 1, path: rs, replace: true, epoch: 1) == .replaced)
        #expect(core.adapters.list().map(\.path) == [rs])
        #expect(core.adapters.list().map(\.rank) == [4])
        #expect(throws: EngineError(.notFound, "LoRA adapter with lora_int_id 9 is not loaded.")) {
            try core.adapters.remove(intID: 9, epoch: 1)
        }
        #expect(throws: EngineError.self) { try core.adapters.add(name: "z", intID: 0, path: plain, epoch: 1) }
    }

    @Test func lruEvictionReloadsFromPath() async throws {
        // Two cached at most: adding a third evicts the least recently used one, which is
        // reloaded from its path when a request needs it.
        let core = try Fixture.engine(maxLoras: 1, maxCpuLoras: 2)
        let ref = try Fixture.reference()
        _ = try core.adapters.add(name: "plain", intID: 1, path: try Fixture.adapter("plain"), epoch: 1)
        _ = try core.adapters.add(name: "rslora", intID: 2, path: try Fixture.adapter("rslora"), epoch: 1)
        _ = try await core.greedy("use-plain", adapter: 1, maxTokens: 2)  // plain is now the most recent
        _ = try core.adapters.add(name: "rank32", intID: 3, path: try Fixture.adapter("rank32"), epoch: 1)
        var cached = Dictionary(uniqueKeysWithValues: core.adapters.list().map { ($0.intID, $0.cached) })
        #expect(cached == [1: true, 2: false, 3: true])
        #expect(try await core.greedy("reload-rslora", adapter: 2).tokens == ref.cases["rslora"]!.greedy)
        cached = Dictionary(uniqueKeysWithValues: core.adapters.list().map { ($0.intID, $0.cached) })
        #expect(cached[2] == true)
        #expect(cached.values.filter { $0 }.count == 2)
        let active = core.adapters.list().filter(\.active).map(\.intID)
        #expect(active == [2], "max_loras=1: only the last used adapter holds the slot")
    }

    @Test func pinningProtectsFromEvictionAndIsBounded() async throws {
        let core = try Fixture.engine(maxLoras: 1, maxCpuLoras: 2)
        let ref = try Fixture.reference()
        _ = try core.adapters.add(name: "plain", intID: 1, path: try Fixture.adapter("plain"), pinned: true, epoch: 1)
        _ = try core.adapters.add(name: "rslora", intID: 2, path: try Fixture.adapter("rslora"), epoch: 1)
        _ = try core.adapters.add(name: "rank32", intID: 3, path: try Fixture.adapter("rank32"), epoch: 1)
        let list = Dictionary(uniqueKeysWithValues: core.adapters.list().map { ($0.intID, $0) })
        #expect(list[1]?.cached == true && list[1]?.pinned == true && list[1]?.active == true)
        #expect(list[2]?.cached == false)  // the unpinned one was evicted instead
        // Only one active slot and it is pinned: pinning another is refused with a reason,
        // and a request for an unpinned adapter fails instead of waiting forever.
        let pinError = #expect(throws: EngineError.self) { try core.adapters.pin(intID: 3, pinned: true, epoch: 1) }
        #expect(pinError?.code == .resourceExhausted)
        #expect(pinError?.message.contains("already pinned") == true)
        let blocked = try await core.greedy("blocked", adapter: 3, maxTokens: 2)
        #expect(blocked.finishReason == .error)
        #expect(blocked.error?.message.contains("pinned") == true)
        #expect(try await core.greedy("pinned-ok", adapter: 1).tokens == ref.cases["plain"]!.greedy)
        // Both cache slots pinned or... unpin and the others work again.
        try core.adapters.pin(intID: 1, pinned: false, epoch: 1)
        #expect(try await core.greedy("rank32-ok", adapter: 3).tokens == ref.cases["rank32"]!.greedy)
        // With max_cpu_loras=2, two pinned adapters fill the cache: a third add is refused.
        let core2 = try Fixture.engine(maxLoras: 2, maxCpuLoras: 2)
        _ = try core2.adapters.add(name: "plain", intID: 1, path: try Fixture.adapter("plain"), pinned: true, epoch: 1)
        _ = try core2.adapters.add(name: "rslora", intID: 2, path: try Fixture.adapter("rslora"), pinned: true, epoch: 1)
        let full = #expect(throws: EngineError.self) {
            try core2.adapters.add(name: "rank32", intID: 3, path: try Fixture.adapter("rank32"), epoch: 1)
        }
        #expect(full?.code == .resourceExhausted)
        #expect(full?.message.contains("max_cpu_loras") == true)
        #expect(core2.adapters.list().count == 2)
    }

    @Test func unknownAdapterIdIsNotFound() async throws {
        let core = try Fixture.engine()
        let out = try await core.greedy("nope", adapter: 42, maxTokens: 1)
        #expect(out.finishReason == .error)
        #expect(out.error?.code == .notFound)
    }

    @Test func removeWhileRunningLetsTheRequestFinish() async throws {
        let core = try Fixture.engine()
        _ = try core.adapters.add(name: "plain", intID: 1, path: try Fixture.adapter("plain"), epoch: 1)
        let ref = try Fixture.reference()
        let started = DispatchSemaphore(value: 0)
        let done = DispatchSemaphore(value: 0)
        let tokens = Mutex<[UInt32]>([])
        try core.submit(
            GenerationRequest(
                id: "r", prompt: .tokens(ref.promptTokens), adapterID: 1, params: SamplingParams(maxTokens: 16, ignoreEOS: true))
        ) { e in
            let n = tokens.withLock {
                $0 += e.tokens
                return $0.count
            }
            if n == 1 { started.signal() }
            if e.finishReason != nil { done.signal() }
        }
        started.wait()
        try core.adapters.remove(intID: 1, epoch: 1)
        done.wait()
        #expect(tokens.withLock { $0 } == ref.cases["plain"]!.greedy)
        let after = try await core.greedy("r2", adapter: 1, maxTokens: 1)
        #expect(after.error?.code == .notFound)
    }
}
