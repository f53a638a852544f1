// What an upstream-mode worker fronts: the replicas' URLs and what kind of server they are.
// The vocabulary of the `--upstream` / `--upstream-kind` flags of `lorikeet worker` and
// `lorikeet serve`, so it lives here; the client and the backend that use it are in
// LorikeetUpstream (which depends on this module, not the other way round).

/// Which inference server the upstream replicas are: their adapter routes and how a
/// request names an adapter.
package enum UpstreamKind: String, Sendable, CaseIterable {
    /// vLLM's OpenAI server (`--enable-lora`, `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`):
    /// `POST /v1/load_lora_adapter` / `/v1/unload_lora_adapter`; an adapter is requested
    /// by its name.
    case vllm
    /// SGLang (`--enable-lora`): `POST /load_lora_adapter` / `/unload_lora_adapter`; an
    /// adapter is requested as `base-model:adapter-name`.
    case sglang

    package var loadPath: String { self == .vllm ? "/v1/load_lora_adapter" : "/load_lora_adapter" }
    package var unloadPath: String { self == .vllm ? "/v1/unload_lora_adapter" : "/unload_lora_adapter" }

    /// The `model` to send upstream for `adapter` on a replica serving `base`.
    package func modelName(adapter: String?, base: String) -> String {
        guard let adapter else { return base }
        switch self {
        case .vllm: return adapter
        case .sglang: return base + ":" + adapter
        }
    }
}

/// An `--upstream` URL that cannot be used.
package struct UpstreamURLError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The URL and what is wrong with it.
    package var message: String

    package var description: String { "invalid upstream URL \(self.message)" }
}

/// Where an upstream replica listens: `http://host[:port][/prefix]` (plain HTTP; TLS is
/// left to a sidecar or a private network).
package struct UpstreamEndpoint: Sendable, Hashable, CustomStringConvertible {
    package var host: String
    package var port: Int
    /// Path prefix put before every route (`http://gw/vllm-a` -> `/vllm-a/v1/...`); "" = none.
    package var pathPrefix: String

    package init(host: String, port: Int, pathPrefix: String = "") {
        self.host = host
        self.port = port
        self.pathPrefix = pathPrefix
    }

    /// Parses `http://host[:port][/prefix]`; the port defaults to 80.
    package init(parsing text: String) throws(UpstreamURLError) {
        guard text.hasPrefix("http://") else {
            throw UpstreamURLError(message: "\(text): only http:// upstream URLs are supported")
        }
        var rest = Substring(text.dropFirst("http://".count))
        var prefix = ""
        if let slash = rest.firstIndex(of: "/") {
            prefix = String(rest[slash...])
            rest = rest[..<slash]
            while prefix.hasSuffix("/") { prefix.removeLast() }
        }
        var host = String(rest)
        var port = 80
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { throw UpstreamURLError(message: "\(text): bad IPv6 host") }
            let after = host[host.index(after: close)...]
            if after.hasPrefix(":") {
                guard let parsed = Int(after.dropFirst()), (1...65535).contains(parsed) else {
                    throw UpstreamURLError(message: "\(text): bad port")
                }
                port = parsed
            }
            host = String(host[host.index(after: host.startIndex)..<close])
        } else if let colon = host.lastIndex(of: ":") {
            guard let parsed = Int(host[host.index(after: colon)...]), (1...65535).contains(parsed) else {
                throw UpstreamURLError(message: "\(text): bad port")
            }
            port = parsed
            host = String(host[..<colon])
        }
        guard !host.isEmpty else { throw UpstreamURLError(message: "\(text): no host") }
        self.init(host: host, port: port, pathPrefix: prefix)
    }

    package var description: String {
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        return "http://\(host):\(self.port)\(self.pathPrefix)"
    }

    /// The `Host` header for requests to this endpoint.
    package var hostHeader: String {
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        return self.port == 80 ? host : "\(host):\(self.port)"
    }
}
