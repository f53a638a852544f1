package import LorikeetProto

/// The limits of a load/unload request's fields (`docs/LIMITS.md`), checked at the HTTP
/// edge (`WorkerRoutes`, the batch route) and again by the leader, so a request routed
/// through the supervisor is small and clean before it becomes a control frame, and a
/// name is never truncated at a C boundary (NUL), forged into a log line (newlines) or
/// shown reordered to an operator (bidirectional controls).
package enum AdapterRequestRules {
    /// Refuses an adapter name (`lora_name`) outside the rules.
    package static func checkName(_ name: String, param: String = "lora_name") throws(Status) {
        if let problem = TextRules.problem(name, field: param, maxBytes: Limits.adapterNameBytes) {
            throw Status(code: .invalidArgument, message: problem, param: param)
        }
    }

    /// Refuses a load request whose name, path or base model name is outside the rules.
    package static func check(_ request: LoadAdapterRequest) throws(Status) {
        try Self.checkName(request.name)
        if let problem = TextRules.problem(request.path, field: "lora_path", maxBytes: Limits.adapterPathBytes) {
            throw Status(code: .invalidArgument, message: problem, param: "lora_path")
        }
        if let problem = TextRules.problem(
            request.baseModel, field: "base_model_name", maxBytes: Limits.baseModelNameBytes, allowEmpty: true)
        {
            throw Status(code: .invalidArgument, message: problem, param: "base_model_name")
        }
    }

    /// Refuses an unload request whose name is outside the rules.
    package static func check(_ request: UnloadAdapterRequest) throws(Status) {
        try Self.checkName(request.name)
    }
}
