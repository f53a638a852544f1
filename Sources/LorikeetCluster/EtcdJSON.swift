import LorikeetJSON
import LorikeetLimits

/// The gateway's JSON mapping of etcd's protobuf messages (proto3 JSON with original field
/// names): `bytes` as base64 strings, int64 as decimal strings, zero values left out.
enum EtcdJSON {
    static func string(_ value: Int64) -> JSONValue { .string(String(value)) }
    static func bytes(_ value: some Collection<UInt8>) -> JSONValue { .string(Base64.encode(value)) }
    static func key(_ key: String) -> JSONValue { self.bytes(Array(key.utf8)) }

    /// `key` and, for a prefix, `range_end`.
    static func range(_ key: String, prefix: Bool) -> [(String, JSONValue)] {
        var members: [(String, JSONValue)] = [("key", self.key(prefix && key.isEmpty ? "\0" : key))]
        if prefix { members.append(("range_end", self.bytes(key.prefixRangeEnd))) }
        return members
    }

    static func requestOp(_ op: EtcdOp) -> JSONValue {
        switch op {
        case .put(let key, let value, let lease):
            var put: [(String, JSONValue)] = [("key", self.key(key)), ("value", self.bytes(value))]
            if lease != 0 { put.append(("lease", self.string(lease))) }
            return .object([("request_put", .object(put))])
        case .delete(let key, let prefix):
            return .object([("request_delete_range", .object(self.range(key, prefix: prefix)))])
        case .range(let key, let prefix):
            return .object([("request_range", .object(self.range(key, prefix: prefix)))])
        }
    }

    static func compare(_ compare: EtcdCompare) -> JSONValue {
        var members: [(String, JSONValue)] = [("key", self.key(compare.key)), ("result", .string(compare.result.rawValue))]
        switch compare.target {
        case .version(let value): members += [("target", .string("VERSION")), ("version", self.string(value))]
        case .createRevision(let value): members += [("target", .string("CREATE")), ("create_revision", self.string(value))]
        case .modRevision(let value): members += [("target", .string("MOD")), ("mod_revision", self.string(value))]
        case .value(let value): members += [("target", .string("VALUE")), ("value", self.bytes(value))]
        case .lease(let value): members += [("target", .string("LEASE")), ("lease", self.string(value))]
        }
        return .object(members)
    }

    // MARK: Decoding

    /// An int64 field: a decimal string (or a JSON integer); absent means 0.
    static func int64(_ object: JSONValue, _ name: String) throws(EtcdError) -> Int64 {
        switch object[name] {
        case nil, .null: return 0
        case .string(let text):
            guard let value = Int64(text) else { throw .badResponse("\(name) is not an int64: \(text.echoed(limit: 40))") }
            return value
        case .int(let value): return value
        case let other?: throw .badResponse("\(name) is a \(other.typeName), expected an int64 string")
        }
    }

    /// A bytes field: base64; absent means empty.
    static func bytes(_ object: JSONValue, _ name: String) throws(EtcdError) -> [UInt8] {
        switch object[name] {
        case nil, .null: return []
        case .string(let text):
            guard let bytes = Base64.decode(text) else { throw .badResponse("\(name) is not base64") }
            return bytes
        case let other?: throw .badResponse("\(name) is a \(other.typeName), expected base64")
        }
    }

    static func bool(_ object: JSONValue, _ name: String) throws(EtcdError) -> Bool {
        switch object[name] {
        case nil, .null: return false
        case .bool(let value): return value
        case let other?: throw .badResponse("\(name) is a \(other.typeName), expected a boolean")
        }
    }

    static func array(_ object: JSONValue, _ name: String) throws(EtcdError) -> [JSONValue] {
        switch object[name] {
        case nil, .null: return []
        case .array(let values): return values
        case let other?: throw .badResponse("\(name) is a \(other.typeName), expected an array")
        }
    }

    /// `header.revision`.
    static func revision(_ response: JSONValue) throws(EtcdError) -> Int64 {
        guard let header = response["header"] else { return 0 }
        return try self.revisionNumber(header, "revision")
    }

    /// A revision field: 0...Int64.max - 1 (a store never gets near the top; a member or proxy
    /// claiming it would make "watch from revision + 1" overflow).
    static func revisionNumber(_ object: JSONValue, _ name: String) throws(EtcdError) -> Int64 {
        let value = try self.int64(object, name)
        guard value >= 0, value < Int64.max else { throw .badResponse("\(name) \(value) is not a revision") }
        return value
    }

    static func keyValue(_ object: JSONValue) throws(EtcdError) -> EtcdKeyValue {
        guard case .object = object else { throw .badResponse("a kv is a \(object.typeName)") }
        return EtcdKeyValue(
            key: String(decoding: try self.bytes(object, "key"), as: UTF8.self),
            value: try self.bytes(object, "value"),
            createRevision: try self.revisionNumber(object, "create_revision"),
            modRevision: try self.revisionNumber(object, "mod_revision"),
            version: try self.int64(object, "version"),
            lease: try self.int64(object, "lease"))
    }

    static func rangeResult(_ response: JSONValue, revision txnRevision: Int64? = nil) throws(EtcdError) -> EtcdRangeResult {
        var kvs: [EtcdKeyValue] = []
        for kv in try self.array(response, "kvs") { kvs.append(try self.keyValue(kv)) }
        let revision: Int64
        if let txnRevision { revision = txnRevision } else { revision = try self.revision(response) }
        return EtcdRangeResult(
            kvs: kvs, count: try self.int64(response, "count"), more: try self.bool(response, "more"), revision: revision)
    }

    static func opResult(_ value: JSONValue, txnRevision: Int64) throws(EtcdError) -> EtcdOpResult {
        if value["response_put"] != nil { return .put }
        if let delete = value["response_delete_range"] { return .delete(deleted: try self.int64(delete, "deleted")) }
        if let range = value["response_range"] { return .range(try self.rangeResult(range, revision: txnRevision)) }
        throw .badResponse("txn response without response_put/_range/_delete_range")
    }

    /// Maps a gateway error body to an `EtcdError`: unary calls answer
    /// `{"error": "...", "message": "...", "code": N}`, streams `{"error": {"grpc_code": N,
    /// "message": "..."}}`.
    static func error(_ body: JSONValue, path: String, httpStatus: Int, leaseID: Int64? = nil, revision: Int64? = nil) -> EtcdError {
        let detail = body["error"]
        let code = (detail?["grpc_code"] ?? body["code"])?.nonNegativeInt
        let message = (detail?["message"] ?? body["message"] ?? detail)?.stringValue?.echoed() ?? "HTTP \(httpStatus)"
        return self.error(code: code, message: message, path: path, leaseID: leaseID, revision: revision)
    }

    static func error(code: Int?, message: String, path: String, leaseID: Int64? = nil, revision: Int64? = nil) -> EtcdError {
        switch code {
        case 14: return .unavailable(message)
        case 4: return .timeout(message)
        case 5 where message.contains("lease"): return .leaseNotFound(id: leaseID ?? 0)
        case 11 where message.contains("compacted"): return .compacted(revision: revision ?? 0)
        case 3 where path.hasSuffix("/txn"): return .txnFailed(message)
        default: return .rejected(code.map { "\(message) (gRPC code \($0))" } ?? message)
        }
    }

    /// Parses a gateway body (at most `Limits.etcdResponseBytes` of it already checked).
    static func parse(_ bytes: [UInt8], from endpoint: EtcdEndpoint) throws(EtcdError) -> JSONValue {
        do {
            return try JSONParser.parse(bytes)
        } catch {
            let text = String(decoding: bytes.prefix(120), as: UTF8.self)
            throw .badResponse("\(endpoint) sent something other than JSON (\(error)): \(text.echoed(limit: 120))")
        }
    }
}
