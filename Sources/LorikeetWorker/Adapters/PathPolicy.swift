import Glibc
package import Logging
package import LorikeetProto

/// Where runtime-loaded adapters may come from (issue 5 item 4; vLLM's
/// `VLLM_RUNTIME_LORA_ALLOWED_PATH_PREFIXES`, made exact).
///
/// - A `lora_path` that is absolute, starts with `~` or `.`, has a `..` component, or
///   exists on disk is a *local path*; anything else is a hub id, refused here (this
///   deployment has no hub).
/// - Local paths need allowed prefixes (`LORIKEET_RUNTIME_LORA_ALLOWED_PATH_PREFIXES`, or
///   the `VLLM_` name; `:`-separated); without them every local path is refused.
/// - A local path must be absolute, exist, be a directory, and its canonical form
///   (`realpath`, symlinks resolved) must lie under a canonicalized prefix, compared by
///   whole components (`/data/lora-evil` is not under `/data/lora`).
/// - The canonical path is what goes into the table and to the engine.
package struct PathPolicy: Sendable, Equatable {
    /// Canonicalized allowed prefixes (prefixes that do not exist are dropped).
    package let allowedPrefixes: [String]
    /// Prefixes given but unusable (nonexistent), for a startup warning.
    package let ignoredPrefixes: [String]
    /// The usable prefixes as given (lexically normalized, not resolved): a path is first
    /// checked against these and the canonical ones without touching the disk, so a client
    /// cannot probe what exists outside the allowed directories.
    package let givenPrefixes: [String]
    /// Longest accepted path component, in bytes (`NAME_MAX`).
    package static let maximumComponentBytes = 255

    /// Environment variables read, first set wins.
    package static let environmentNames = [
        "LORIKEET_RUNTIME_LORA_ALLOWED_PATH_PREFIXES", "VLLM_RUNTIME_LORA_ALLOWED_PATH_PREFIXES",
    ]

    /// A policy allowing the given prefixes (canonicalized here).
    package init(allowedPrefixes: [String]) {
        var allowed: [String] = []
        var ignored: [String] = []
        var given: [String] = []
        for prefix in allowedPrefixes where !prefix.isEmpty {
            if prefix.hasPrefix("/"), !prefix.utf8.contains(0), let canonical = Self.realPath(prefix) {
                if !allowed.contains(canonical) { allowed.append(canonical) }
                if let normalized = Self.lexicallyNormalized(prefix), !given.contains(normalized) { given.append(normalized) }
            } else {
                ignored.append(prefix)
            }
        }
        self.allowedPrefixes = allowed
        self.ignoredPrefixes = ignored
        self.givenPrefixes = given
    }

    /// The policy from the environment (`LORIKEET_…` wins over `VLLM_…`).
    package static func fromEnvironment(_ environment: [String: String]) -> PathPolicy {
        for name in Self.environmentNames {
            if let value = environment[name], !value.isEmpty {
                return PathPolicy(allowedPrefixes: value.split(separator: ":").map(String.init))
            }
        }
        return PathPolicy(allowedPrefixes: [])
    }

    /// Whether `value` names a local path rather than a hub id (see the type's comment).
    package static func isLocalPath(_ value: String) -> Bool {
        if value.hasPrefix("/") || value.hasPrefix("~") || value.hasPrefix(".") { return true }
        if value.split(separator: "/", omittingEmptySubsequences: false).contains("..") { return true }
        if value.utf8.contains(0) { return true }
        var info = stat()
        return stat(value, &info) == 0
    }

    /// The canonical directory for a runtime `lora_path`, or an INVALID_ARGUMENT status
    /// naming `param` (`lora_path`).
    ///
    /// What the client is told is deliberately coarse — "not allowed", "not found", "not an
    /// adapter directory" — and never repeats where a symlink points or which files exist;
    /// the details go to `logger`. The path is checked lexically against the prefixes
    /// before the disk is touched, so nothing outside them can be probed.
    package func canonicalize(_ value: String, param: String = "lora_path", logger: Logger? = nil) throws(Status) -> String {
        func refuse(_ message: String, detail: String? = nil) -> Status {
            if let detail {
                logger?.info(
                    "adapter path refused",
                    metadata: ["adapter.path": "\(value.echoed(limit: 1024))", "reason": "\(detail)"])
            }
            return Status(code: .invalidArgument, message: message, param: param)
        }
        guard !value.isEmpty else { throw refuse("'\(param)' must not be empty.") }
        guard !value.utf8.contains(0) else { throw refuse("'\(param)' contains a NUL byte.") }
        guard value.utf8.count <= Limits.adapterPathBytes else {
            throw refuse("'\(param)' is longer than \(Limits.adapterPathBytes) bytes.")
        }
        guard Self.isLocalPath(value) else {
            throw refuse(
                "'\(value.echoed())' is not a local path and loading adapters from a model hub is not supported; "
                    + "give an absolute path to the adapter directory."
            )
        }
        guard !self.allowedPrefixes.isEmpty else {
            throw refuse(Self.prefixesRequired)
        }
        guard value.hasPrefix("/") else { throw refuse(Self.mustBeAbsolute) }
        guard value.split(separator: "/").allSatisfy({ $0.utf8.count <= Self.maximumComponentBytes }) else {
            throw refuse("'\(param)' has a path component longer than \(Self.maximumComponentBytes) bytes.")
        }
        let notAllowed = Self.outsidePrefixes
        guard let lexical = Self.lexicallyNormalized(value) else {
            throw refuse(notAllowed, detail: "'..' leaves the root")
        }
        guard (self.givenPrefixes + self.allowedPrefixes).contains(where: { Self.isUnder(lexical, prefix: $0) }) else {
            throw refuse(notAllowed, detail: "not under an allowed prefix (\(self.allowedPrefixes.joined(separator: ":")))")
        }
        guard let canonical = Self.realPath(value) else {
            let reason = String(cString: strerror(errno))
            throw refuse(Self.mustExist, detail: "cannot be resolved: \(reason)")
        }
        guard self.allowedPrefixes.contains(where: { Self.isUnder(canonical, prefix: $0) }) else {
            throw refuse(notAllowed, detail: "resolves to '\(canonical.echoed(limit: 1024))', outside the allowed prefixes")
        }
        var info = stat()
        guard stat(canonical, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
            throw refuse("'\(param)' is not an adapter directory.", detail: "'\(canonical.echoed(limit: 1024))' is not a directory")
        }
        return canonical
    }

    // vLLM's Rust frontend's wording (`rust/src/server/src/lora.rs`, docs/vllm-compat-spec.md
    // L7–L10), which says nothing about the disk beyond "must exist and be accessible".
    static let prefixesRequired =
        "Local LoRA adapter paths require VLLM_RUNTIME_LORA_ALLOWED_PATH_PREFIXES (or LORIKEET_RUNTIME_LORA_ALLOWED_PATH_PREFIXES) to be configured."
    static let mustBeAbsolute =
        "Local LoRA adapter paths must be absolute and under one of the prefixes configured by VLLM_RUNTIME_LORA_ALLOWED_PATH_PREFIXES."
    static let mustExist = "Local LoRA adapter path must exist and be accessible."
    static let outsidePrefixes = "Local LoRA adapter path is outside the configured allowed prefixes."

    /// `path` with `.` and empty components dropped and `..` applied lexically (no
    /// symlinks resolved); nil when `..` would climb above `/`.
    static func lexicallyNormalized(_ path: String) -> String? {
        var components: [Substring] = []
        for component in path.split(separator: "/") {
            switch component {
            case ".": continue
            case "..":
                guard !components.isEmpty else { return nil }
                components.removeLast()
            default: components.append(component)
            }
        }
        return "/" + components.joined(separator: "/")
    }

    /// Whether `path` equals `prefix` or lies below it, comparing whole components.
    package static func isUnder(_ path: String, prefix: String) -> Bool {
        if prefix == "/" { return path.hasPrefix("/") }
        if path == prefix { return true }
        return path.hasPrefix(prefix + "/")
    }

    /// `realpath(3)`: absolute, symlinks and `.`/`..` resolved; nil when it does not resolve.
    package static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
