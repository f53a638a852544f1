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
