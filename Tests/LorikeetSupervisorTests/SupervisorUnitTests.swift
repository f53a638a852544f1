import Foundation
import LorikeetProto
import LorikeetTestSupport
import Testing

@testable import LorikeetSupervisor

/// Supervisor rules as pure functions: the crash-loop breaker's notion of a boot
/// failure, bounded audit lines, the inner re-check of routed mutations, child environments.
@Suite("Supervisor rules (unit)", .ownThreads)
struct SupervisorUnitTests {
    @Test("boot failure = fast exit, never Ready, not a protocol kill")
    func bootFailureRule() {
        typealias Machine = SupervisorStateMachine
        let fast: UInt64 = 10_000
        let booting = Machine.Worker(id: WorkerID(generation: 1), slot: 0, startedAtMs: 0)
        #expect(Machine.isBootFailure(booting, uptimeMs: 500, fastFailureMs: fast))
        #expect(!Machine.isBootFailure(booting, uptimeMs: 20_000, fastFailureMs: fast))
        var served = Machine.Worker(id: WorkerID(generation: 2), slot: 0, startedAtMs: 0)
        served.boot = .booted
        #expect(!Machine.isBootFailure(served, uptimeMs: 500, fastFailureMs: fast), "a worker that had been Ready counted")
        var protocolKill = Machine.Worker(id: WorkerID(generation: 3), slot: 0, startedAtMs: 0)
        protocolKill.termination = .protocolViolation
        #expect(!Machine.isBootFailure(protocolKill, uptimeMs: 500, fastFailureMs: fast), "a protocol kill counted")
    }

    @Test("an audit line for a 3 MB name, path and caller stays a few KiB and is valid JSON")
    func auditBounded() throws {
        let huge = String(repeating: "é", count: 1_500_000)
        let entry = AuditEntry(
            timeUnixMs: 0, action: "unload", name: huge, id: 0, path: "/" + huge, slot: 1, caller: huge, batchIndex: nil,
            status: Status(code: .invalidArgument, message: "refused: " + huge), tableVersion: 3)
        let line = entry.json
        #expect(line.utf8.count < 8 * 1024, "\(line.utf8.count) bytes")
        let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
        let name = object?["name"] as? String ?? ""
        let caller = object?["caller"] as? String ?? ""
        #expect(name.hasSuffix("…(3000000 bytes)"))
        #expect(caller.utf8.count < 300)
        // Short values are written whole.
        let short = AuditEntry(
            timeUnixMs: 0, action: "load", name: "ok", id: 1, path: "/p", slot: -1, caller: "uid=0 pid=1", batchIndex: 0, status: .ok,
            tableVersion: 1)
        #expect(short.json.contains(#""name":"ok""#) && short.json.contains(#""path":"/p""#))
    }

    @Test(
        "routed mutations are re-checked before they reach the leader",
        arguments: [
            (AdapterMutation.unload(UnloadAdapterRequest(name: String(repeating: "x", count: 257))), "lora_name"),
            (AdapterMutation.unload(UnloadAdapterRequest(name: "")), "lora_name"),
            (AdapterMutation.load(LoadAdapterRequest(name: "a\u{0}b", path: "/p")), "lora_name"),
            (AdapterMutation.load(LoadAdapterRequest(name: "a", path: "/p\n")), "lora_path"),
            (
                AdapterMutation.load(LoadAdapterRequest(name: "a", path: "/p", baseModel: String(repeating: "m", count: 300))),
                "base_model_name"
            ),
        ])
    func routedMutationProblems(_ mutation: AdapterMutation, _ param: String) {
        let problem = mutation.problem
        #expect(problem?.code == .invalidArgument && problem?.param == param, "\(String(describing: problem))")
    }

    @Test("a well-formed mutation passes the re-check")
    func routedMutationAccepted() {
        #expect(AdapterMutation.load(LoadAdapterRequest(name: "ok-name_1.2", path: "/srv/lora/x")).problem == nil)
        #expect(AdapterMutation.unload(UnloadAdapterRequest(name: "ok")).problem == nil)
    }

    @Test("child environments: variables set on top, removed names gone, the rest inherited")
    func childEnvironment() {
        setenv("LK_UNIT_KEEP", "1", 1)
        setenv("LORIKEET_API_KEY", "old", 1)
        defer {
            unsetenv("LK_UNIT_KEEP")
            unsetenv("LORIKEET_API_KEY")
        }
        let worker = ChildEnvironment.make(setting: ["LORIKEET_API_KEY": "new"])
        #expect(worker.contains("LK_UNIT_KEEP=1") && worker.contains("LORIKEET_API_KEY=new") && !worker.contains("LORIKEET_API_KEY=old"))
        let engine = ChildEnvironment.make(removing: ["LORIKEET_API_KEY"])
        #expect(engine.contains("LK_UNIT_KEEP=1") && !engine.contains { $0.hasPrefix("LORIKEET_API_KEY=") })
    }
}
