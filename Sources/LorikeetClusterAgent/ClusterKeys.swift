package import LorikeetProto

/// The etcd keys of one fleet (`--cluster-name`), as `docs/CLUSTER.md` lists them.
package struct ClusterKeys: Sendable, Equatable {
    /// `/<cluster>/`: everything the fleet stores is under it (one watch covers it all).
    package let prefix: String

    /// Keys under `/<name>/`.
    package init(clusterName: String) {
        self.prefix = "/\(clusterName)/"
    }

    /// `/<cluster>/adapters/`: one key per adapter, an `AdapterRecord` (protobuf).
    package var adapters: String { self.prefix + "adapters/" }
    /// `/<cluster>/next-id`: the next `lora_int_id`, decimal; only grows.
    package var nextID: String { self.prefix + "next-id" }
    /// `/<cluster>/nodes/`: one key per node, a `NodeStatus` (protobuf), under the node's lease.
    package var nodes: String { self.prefix + "nodes/" }

    package func adapter(_ name: String) -> String { self.adapters + name }
    package func node(_ name: String) -> String { self.nodes + name }

    /// What a key of the fleet holds.
    package enum Kind: Equatable, Sendable {
        case adapter(String)
        case nextID
        case node(String)
        case other
    }

    package func kind(of key: String) -> Kind {
        if key.hasPrefix(self.adapters) { return .adapter(String(key.dropFirst(self.adapters.count))) }
        if key.hasPrefix(self.nodes) { return .node(String(key.dropFirst(self.nodes.count))) }
        if key == self.nextID { return .nextID }
        return .other
    }
}

extension ClusterKeys {
    /// The largest adapter id the fleet hands out: ids travel as JSON integers and vLLM's
    /// `lora_int_id` is a signed 64-bit int.
    package static let maximumAdapterID = UInt64(Int64.max - 1)

    /// The value of `next-id` (or any id) as an id in 1...``maximumAdapterID``, or nil.
    package static func adapterID(_ text: String) -> UInt64? {
        guard let value = UInt64(text), value >= 1, value <= Self.maximumAdapterID else { return nil }
        return value
    }

    /// Why a record read from etcd is not one Lorikeet would commit (the same field limits as
    /// every other boundary, an id in 1...``maximumAdapterID``), or nil.
    package static func recordProblem(_ record: AdapterRecord) -> String? {
        if record.intID == 0 || record.intID > Self.maximumAdapterID {
            return "lora_int_id \(record.intID) is outside 1...\(Self.maximumAdapterID)"
        }
        if let status = AdapterFieldRules.problem(name: record.name, path: record.path, baseModel: record.baseModel) {
            return status.message
        }
        return nil
    }
}
