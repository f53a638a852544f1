// Fuzz target `http-json`: the worker's JSON parser and request validation, as the HTTP
// routes run them on a request body.
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
        _ = JSONWriter.encode(error.json)  // the 400 the client would get
        return
    }
    for route in [GenerationRoute.completions, .chatCompletions] {
        do {
            _ = try RequestValidation.generation(body, route: route)
        } catch {
            _ = JSONWriter.encode(error.json)
        }
    }
    // POST /v1/load_lora_adapter and /v1/unload_lora_adapter field checks.
    _ = try? RequestValidation.string(body, "lora_name")
    _ = try? RequestValidation.string(body, "lora_path")
    _ = try? RequestValidation.optionalBool(body, "load_inplace")
    _ = try? RequestValidation.optionalBool(body, "pinned")
    _ = try? RequestValidation.optionalString(body, "base_model_name")
    _ = try? RequestValidation.optionalInt(body, "lora_int_id", in: Int64.min...Int64.max)
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
