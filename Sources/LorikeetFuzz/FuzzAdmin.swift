// Fuzz target `admin-requests`: the supervisor's admin request handler, as far as it is
// pure: decode admin frames, re-check every load/unload (and batch item) against the
// limits, and render the audit record of its refusal. The audit line must stay bounded
// and valid JSON whatever a (same-uid) admin client sends.
import LorikeetJSON
import LorikeetProto
import LorikeetSupervisor

func fuzzAdminRequests(_ bytes: [UInt8]) {
    var decoder = MessageDecoder<AdminEnvelope>(maximumFrameSize: 1 << 20)
    decoder.feed(bytes)
    while true {
        let envelope: AdminEnvelope
        do {
            guard let next = try decoder.next() else { return }
            envelope = next
        } catch {
            return
        }
        var mutations: [(AdapterMutation, Int?)] = []
        switch envelope.body {
        case .load(let request): mutations = [(.load(request), nil)]
        case .unload(let request): mutations = [(.unload(request), nil)]
        case .batch(let batch):
            for (index, item) in batch.items.prefix(Limits.batchOperations).enumerated() {
                switch item {
                case .load(let request): mutations.append((.load(request), index))
                case .unload(let request): mutations.append((.unload(request), index))
                }
            }
        default: break
        }
        for (mutation, index) in mutations {
            let status = mutation.problem ?? .ok
            let line = Supervisor.auditEntry(
                mutation, batchIndex: index, AdapterMutationReply(status: status, tableVersion: 1), now: 0
            ).json
            guard line.utf8.count < 16 * 1024 else { fatalError("an audit line of \(line.utf8.count) bytes") }
            guard (try? JSONParser.parse(Array(line.utf8))) != nil else {
                fatalError("an audit line that is not JSON: \(line.prefix(200))")
            }
        }
    }
}
