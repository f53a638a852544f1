/// The limits of an adapter's name, path and base model name (`docs/LIMITS.md`) as one
/// check, run at every boundary they cross: the worker's HTTP edge and the leader
/// (`AdapterRequestRules`), the supervisor (routed and admin mutations, and every committed
/// record in `TableRules`), and the engine (`AddAdapter`). Each failure is an
/// INVALID_ARGUMENT whose `param` names the field; the message never repeats the value.
package enum AdapterFieldRules {
    /// Why these fields are not acceptable, or nil. `path`/`baseModel` nil: not checked.
    /// An empty path passes here (committed records of upstream replicas may carry none;
    /// a load's path is required by the path policy that resolves it).
    package static func problem(name: String, path: String? = nil, baseModel: String? = nil) -> Status? {
        let fields: [(value: String?, field: String, limit: Int, allowEmpty: Bool)] = [
            (name, "lora_name", Limits.adapterNameBytes, false),
            (path, "lora_path", Limits.adapterPathBytes, true),
            (baseModel, "base_model_name", Limits.baseModelNameBytes, true),
        ]
        for (value, field, limit, allowEmpty) in fields {
            guard let value else { continue }
            if let problem = TextRules.problem(value, field: field, maxBytes: limit, allowEmpty: allowEmpty) {
                return Status(code: .invalidArgument, message: problem, param: field)
            }
        }
        return nil
    }
}

extension LoadAdapterRequest {
    /// `AdapterFieldRules` on this request's name, path and base model name.
    package var fieldProblem: Status? {
        AdapterFieldRules.problem(name: self.name, path: self.path, baseModel: self.baseModel)
    }
}

extension UnloadAdapterRequest {
    /// `AdapterFieldRules` on this request's name.
    package var fieldProblem: Status? { AdapterFieldRules.problem(name: self.name) }
}

extension AdapterRecord {
    /// `AdapterFieldRules` on this record's name, path and base model name.
    package var fieldProblem: Status? {
        AdapterFieldRules.problem(name: self.name, path: self.path, baseModel: self.baseModel)
    }
}
