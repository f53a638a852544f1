package import LorikeetProto

/// The HTTP edge's and the leader's check of a load/unload request's fields: the shared
/// `AdapterFieldRules` (the supervisor and the engine run the same one), thrown as a
/// `Status` so a route turns it into a 400 naming the field. It runs before a request is
/// routed, so what reaches the control channel is small and clean, and a name is never
/// truncated at a C boundary (NUL), forged into a log line (newlines) or shown reordered
/// to an operator (bidirectional controls).
package enum AdapterRequestRules {
    /// Refuses a load request whose name, path or base model name is outside the rules.
    package static func check(_ request: LoadAdapterRequest) throws(Status) {
        if let problem = request.fieldProblem { throw problem }
    }

    /// Refuses an unload request whose name is outside the rules.
    package static func check(_ request: UnloadAdapterRequest) throws(Status) {
        if let problem = request.fieldProblem { throw problem }
    }
}
