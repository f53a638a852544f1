// Fuzz target `http-json`: the worker's JSON parser and request validation, as the HTTP
// routes run them on a request body.
import LorikeetJSON
import LorikeetProto
import LorikeetWorker

/// Parses `bytes` as a request body and validates it for every route that takes a body.
/// Checks that whatever parses re-serializes to JSON that parses to the same value.
func fuzzHTTPJSON(_ bytes: [UInt8]) {
    if let value = try? JSONParser.parse(bytes) {
        let encoded = JSONWriter.encode(value)
        guard let again = try? JSONParser.parse(encoded) else {
            fatalError("JSONWriter output does not parse: \(String(decoding: encoded, as: UTF8.self))")
        }
        guard sameJSON(value, again) else {
            fatalError("JSON round trip changed the value: \(value) -> \(again)")
        }
    }
    let body: JSONValue
    do {
        body = try RequestValidation.object(bytes)
    } catch {
        boundedEcho(error)  // the 400 the client would get
        return
    }
    for route in [GenerationRoute.completions, .chatCompletions] {
        do {
            let parameters = try RequestValidation.generation(body, route: route)
            // Limits design: whatever passes the edge fits the engine channel's frame.
            var request = GenerateRequest(requestID: "0123456789abcdef", sampling: parameters.sampling)
            switch parameters.prompt {
            case .text(let text): request.promptText = text
            case .tokens(let tokens): request.promptTokens = tokens
            case .messages(let messages): request.messages = messages
            }
            let size = EngineEnvelope(callID: .max, body: .generate(request)).serializedBytes().count
            if bytes.count <= Limits.maxBodyBytesCeiling, size > Limits.channelFrameBytes {
                fatalError("a \(bytes.count)-byte body passed validation but lowers to a \(size)-byte engine frame")
            }
        } catch {
            boundedEcho(error)
        }
    }
    // POST /v1/load_lora_adapter and /v1/unload_lora_adapter field checks, as the route runs them.
    if let name = try? RequestValidation.string(body, "lora_name"), let path = try? RequestValidation.string(body, "lora_path") {
        let base = (try? RequestValidation.optionalString(body, "base_model_name")) ?? nil
        let request = LoadAdapterRequest(name: name, path: path, baseModel: base ?? "")
        if (try? AdapterRequestRules.check(request)) != nil {
            let size = ControlEnvelope(callID: .max, body: .load(request)).serializedBytes().count
            if size > Limits.adapterRecordBytes * 2 { fatalError("a load request that passed the rules encodes to \(size) bytes") }
            fuzzPathPolicy(path)
        }
    }
    if let name = try? RequestValidation.string(body, "lora_name") {
        let request = UnloadAdapterRequest(name: name)
        if (try? AdapterRequestRules.check(request)) != nil {
            let size = ControlEnvelope(callID: .max, body: .unload(request)).serializedBytes().count
            if size > Limits.adapterNameBytes + 256 { fatalError("an unload request that passed the rules encodes to \(size) bytes") }
        }
    }
    _ = try? RequestValidation.optionalBool(body, "load_inplace")
    _ = try? RequestValidation.optionalBool(body, "pinned")
    _ = try? RequestValidation.optionalInt(body, "lora_int_id", in: Int64.min...Int64.max)
    do {
        let operations = try WorkerRoutes.batchOperations(body, slot: 0, caller: "fuzz")
        if operations.count > Limits.batchOperations { fatalError("a batch of \(operations.count) operations passed") }
        for operation in operations {
            let envelope: ControlEnvelope
            switch operation {
            case .load(let request): envelope = ControlEnvelope(callID: .max, body: .load(request))
            case .unload(let request): envelope = ControlEnvelope(callID: .max, body: .unload(request))
            }
            let size = envelope.serializedBytes().count
            if size > 2 * Limits.adapterRecordBytes { fatalError("a batch item that passed encodes to \(size) bytes") }
        }
    } catch {
        boundedEcho(error)
    }
}

/// The 400 a client gets never repeats unbounded input.
func boundedEcho(_ error: APIError) {
    let size = JSONWriter.encode(error.json).count
    if size >= 4096 { fatalError("an error body of \(size) bytes: \(error.message.prefix(200))") }
}

/// Path canonicalization under a real prefix (`/tmp`): whatever it accepts is a canonical
/// directory under the prefix, and what it refuses is refused with a message that repeats
/// no path (the client must not learn what exists or where a symlink points).
func fuzzPathPolicy(_ path: String) {
    let policy = PathPolicy(allowedPrefixes: ["/tmp"])
    do {
        let canonical = try policy.canonicalize(path)
        guard policy.allowedPrefixes.contains(where: { PathPolicy.isUnder(canonical, prefix: $0) }) else {
            fatalError("canonicalize accepted \(canonical), outside \(policy.allowedPrefixes)")
        }
    } catch {
        if error.message.contains("/tmp") && !path.isEmpty && error.message.utf8.count > 400 {
            fatalError("path error repeats too much: \(error.message)")
        }
    }
}

/// Equality up to number spelling: the writer prints integral doubles as integers.
func sameJSON(_ a: JSONValue, _ b: JSONValue) -> Bool {
    switch (a, b) {
    case (.int(let x), .double(let y)), (.double(let y), .int(let x)): return Double(x) == y
    case (.array(let x), .array(let y)): return x.count == y.count && zip(x, y).allSatisfy { sameJSON($0, $1) }
    case (.object(let x), .object(let y)):
        return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && sameJSON($0.1, $1.1) }
    default: return a == b
    }
}
