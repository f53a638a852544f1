import HTTPTypes
import HummingbirdCore
package import LorikeetJSON
package import LorikeetProto
import NIOCore

/// Routes beyond vLLM's, for operators (mounted by `WorkerRoutes.route`):
///
/// - `GET /v1/lora_adapters` — the committed table as this worker holds it, with the
///   requests and tokens *this worker* served per adapter (each worker counts its own;
///   sum `lorikeet_adapter_*_total` across workers in Prometheus for totals).
/// - `POST /v1/lora_adapters/batch` — many loads/unloads in one call, run in order through
///   the same leader path as `/v1/load_lora_adapter` (and as the admin socket's batch):
///   each item gets its own result; a refused item does not undo the ones before it.
///   Only with runtime updating enabled, like the vLLM routes.
/// - `GET /metrics` — Prometheus text exposition of this worker (no API key: scrapers
///   usually have none; bind the port to a trusted network).
extension WorkerRoutes {

    func listAdapters() -> Reply {
        let table = self.replica.snapshot()
        let data: [JSONValue] = table.adapters.map { adapter in
            let usage = self.metrics.usage(adapterID: adapter.intID)
            return .object([
                ("id", .string(adapter.name)), ("object", .string("lora_adapter")), ("name", .string(adapter.name)),
                ("lora_int_id", .int(Int64(adapter.intID))), ("path", .string(adapter.path)),
                ("base_model", .string(adapter.baseModel)), ("pinned", .bool(adapter.pinned)),
                ("load_inplace", .bool(adapter.loadInplace)),
                ("loaded_at", .int(adapter.loadedAtUnixMs / 1000)), ("loaded_at_unix_ms", .int(adapter.loadedAtUnixMs)),
                ("requests", .int(Int64(clamping: usage.requests))), ("prompt_tokens", .int(Int64(clamping: usage.promptTokens))),
                ("completion_tokens", .int(Int64(clamping: usage.completionTokens))),
            ])
        }
        return .json(
            .ok,
            .object([
                ("object", .string("list")), ("table_version", .int(Int64(clamping: table.version))),
                ("worker_slot", .int(Int64(self.configuration.workerSlot))), ("usage_scope", .string("worker")),
                ("data", .array(data)),
            ]))
    }

    /// One parsed batch item.
    package enum BatchOperation {
        case load(LoadAdapterRequest)
        case unload(UnloadAdapterRequest)

        var action: String {
            switch self {
            case .load: "load"
            case .unload: "unload"
            }
        }

        var name: String {
            switch self {
            case .load(let request): request.name
            case .unload(let request): request.name
            }
        }
    }

    /// Parses `{"items": [{"load": {...}} | {"unload": {...}}, ...]}`; any malformed item
    /// refuses the whole call (400) before anything runs.
    package static func batchOperations(_ body: JSONValue, slot: Int32, caller: String) throws(APIError) -> [BatchOperation] {
        guard let itemsValue = body["items"] else {
            throw APIError.invalidRequest(
                "'items' is required: an array of {\"load\": {...}} or {\"unload\": {...}} objects.", param: "items")
        }
        guard case .array(let items) = itemsValue else {
            throw RequestValidation.wrongType("items", expected: "array", got: itemsValue)
        }
        guard !items.isEmpty, items.count <= Limits.batchOperations else {
            throw APIError.invalidRequest("'items' must hold 1 to \(Limits.batchOperations) items, got \(items.count).", param: "items")
        }
        var operations: [BatchOperation] = []
        for (index, item) in items.enumerated() {
            let param = "items[\(index)]"
            guard case .object(let members) = item, members.count == 1 else {
                throw APIError.invalidRequest("\(param) must be an object with exactly one key, 'load' or 'unload'.", param: param)
            }
            let (kind, fields) = members[0]
            guard case .object = fields else {
                throw APIError.invalidRequest("\(param).\(kind.echoed(limit: 32)) must be an object.", param: param)
            }
            do throws(APIError) {
                switch kind {
                case "load":
                    operations.append(
                        .load(
                            LoadAdapterRequest(
                                name: try RequestValidation.string(fields, "lora_name"),
                                path: try RequestValidation.string(fields, "lora_path"),
                                loadInplace: try RequestValidation.optionalBool(fields, "load_inplace") ?? false,
                                pinned: try RequestValidation.optionalBool(fields, "pinned") ?? false,
                                baseModel: try RequestValidation.optionalString(fields, "base_model_name") ?? "",
                                originSlot: slot, caller: caller)))
                case "unload":
                    let intID = try RequestValidation.optionalInt(fields, "lora_int_id", in: 1...Int64.max)
                    operations.append(
                        .unload(
                            UnloadAdapterRequest(
                                name: try RequestValidation.string(fields, "lora_name"), intID: UInt64(intID ?? 0),
                                originSlot: slot, caller: caller)))
                default:
                    throw APIError.invalidRequest(
                        "\(param) must be {\"load\": {...}} or {\"unload\": {...}}, not '\(kind.echoed(limit: 32))'.", param: param)
                }
            } catch {
                var error = error
                if let field = error.param, !field.hasPrefix("items") { error.param = "\(param).\(kind).\(field)" }
                throw error
            }
            do throws(Status) {
                switch operations.last {
                case .load(let request)?: try AdapterRequestRules.check(request)
                case .unload(let request)?: try AdapterRequestRules.check(request)
                case nil: break
                }
            } catch {
                var status = error
                status.param = "\(param).\(kind).\(status.param)"
                throw APIError(status)
            }
        }
        return operations
    }

    func batchAdapters(_ body: JSONValue, caller: String) async throws -> Reply {
        let operations = try Self.batchOperations(body, slot: self.configuration.workerSlot, caller: caller)
        var results: [JSONValue] = []
        var failed = 0
        for (index, operation) in operations.enumerated() {
            let reply: AdapterMutationReply
            switch operation {
            case .load(let request): reply = await self.mutator.load(request)
            case .unload(let request): reply = await self.mutator.unload(request)
            }
            var members: [(String, JSONValue)] = [
                ("index", .int(Int64(index))), ("action", .string(operation.action)), ("lora_name", .string(operation.name)),
                ("code", .string(reply.status.code.description)),
            ]
            if reply.status.isOK {
                members.append(("status", .int(200)))
                if let adapter = reply.adapter { members.append(("lora_int_id", .int(Int64(adapter.intID)))) }
                members.append(("table_version", .int(Int64(clamping: reply.tableVersion))))
            } else {
                failed += 1
                let error = APIError(reply.status)
                members.append(("status", .int(Int64(error.status.code))))
                members += error.json.objectMembers
            }
            results.append(.object(members))
        }
        return .json(
            .ok,
            .object([
                ("object", .string("batch")), ("succeeded", .int(Int64(operations.count - failed))), ("failed", .int(Int64(failed))),
                ("results", .array(results)),
            ]))
    }

    func metricsExposition() async -> Reply {
        let engineUp: Bool
        do throws(Status) {
            engineUp = try await self.status.health().status.isOK
        } catch {
            engineUp = false
        }
        let table = self.replica.snapshot()
        let bytes = self.metrics.exposition(
            tableVersion: table.version, adapters: table.adapters, engineUp: engineUp, inFlight: self.stats.inFlight,
            version: self.configuration.version, baseModel: self.replica.baseModels.first ?? "",
            maxAdapters: self.configuration.maxAdapters,
            fenced: self.replica.fence.isFleet ? self.replica.fence.problem != nil : nil)
        var headers = HTTPFields()
        headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
        return Reply(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
    }
}

extension JSONValue {
    /// The members of an object value (empty for anything else).
    fileprivate var objectMembers: [(String, JSONValue)] {
        guard case .object(let members) = self else { return [] }
        return members
    }
}

/// Counts and times every load/unload a worker's routes make
/// (`lorikeet_adapter_mutations_total`, `lorikeet_adapter_mutation_duration_seconds`).
struct MeteredMutator: AdapterMutator {
    let inner: any AdapterMutator
    let metrics: WorkerMetrics

    func load(_ request: LoadAdapterRequest) async -> AdapterMutationReply {
        let start = ContinuousClock.now
        let reply = await self.inner.load(request)
        self.metrics.adapterMutation(action: "load", code: reply.status.code.description, duration: .now - start)
        return reply
    }

    func unload(_ request: UnloadAdapterRequest) async -> AdapterMutationReply {
        let start = ContinuousClock.now
        let reply = await self.inner.unload(request)
        self.metrics.adapterMutation(action: "unload", code: reply.status.code.description, duration: .now - start)
        return reply
    }
}
