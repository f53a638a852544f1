import HTTPTypes
import LorikeetProto

/// Checks a request passes before any route runs: the `Host` header of a request that
/// reached a loopback address (DNS rebinding), the JSON media type of POST bodies (CSRF:
/// a browser sends `text/plain` and form bodies cross-origin without a preflight, never
/// `application/json`), and the Bearer API key. Pure functions, tested without sockets.
package enum RequestGuards {
    /// Whether a request with `host` (the `Host` header, nil when absent) may be served
    /// by a listener on a loopback address. Loopback names and addresses always may;
    /// `allowed` adds names (case-insensitive, port ignored), `*` allows every host. A
    /// request without a `Host` header (HTTP/1.0 tools) is allowed: browsers always send one.
    package static func hostAllowed(_ host: String?, allowed: [String]) -> Bool {
        guard let host, !host.isEmpty else { return true }
        if allowed.contains("*") { return true }
        let name = Self.hostName(host).lowercased()
        if Self.isLoopbackName(name) { return true }
        return allowed.contains { $0.lowercased() == name }
    }

    /// The name part of a `Host` header value: `[::1]:8000` -> `::1`, `a:80` -> `a`.
    package static func hostName(_ host: String) -> String {
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { return host }
            return String(host[host.index(after: host.startIndex)..<close])
        }
        if let colon = host.lastIndex(of: ":"), host.firstIndex(of: ":") == colon { return String(host[..<colon]) }
        return host
    }

    /// `localhost`, `*.localhost` (RFC 6761: always loopback), `127.0.0.0/8` and `::1`.
    package static func isLoopbackName(_ name: String) -> Bool {
        var name = name
        if name.hasSuffix(".") { name.removeLast() }
        if name == "localhost" || name.hasSuffix(".localhost") { return true }
        if name == "::1" || name == "0:0:0:0:0:0:0:1" { return true }
        let octets = name.split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4, octets[0] == "127" else { return false }
        return octets.allSatisfy { octet in
            !octet.isEmpty && octet.count <= 3 && octet.allSatisfy(\.isASCII) && (UInt8(octet) != nil)
        }
    }

    /// Whether a `Content-Type` value is JSON: `application/json` with optional parameters.
    package static func isJSON(_ contentType: String?) -> Bool {
        guard let contentType else { return false }
        let mediaType = contentType.split(separator: ";", maxSplits: 1).first.map(String.init) ?? ""
        return mediaType.trimmingASCIIWhitespace().lowercased() == "application/json"
    }

    /// The credentials of an `Authorization: Bearer <token>` header (scheme
    /// case-insensitive, RFC 9110 §11.1), or "" when the header is absent or another scheme.
    package static func bearerToken(_ authorization: String?) -> String {
        guard let authorization else { return "" }
        let trimmed = authorization.trimmingASCIIWhitespace()
        guard trimmed.utf8.count > 7 else { return "" }
        let scheme = trimmed.prefix(6)
        let separator = trimmed[trimmed.index(trimmed.startIndex, offsetBy: 6)]
        guard scheme.lowercased() == "bearer", separator == " " || separator == "\t" else { return "" }
        return String(trimmed.dropFirst(7)).trimmingASCIIWhitespace()
    }
}

extension String {
    /// The string without leading and trailing ASCII whitespace (space, tab, CR, LF, VT,
    /// FF: what Python's `str.strip()` removes from an environment value).
    func trimmingASCIIWhitespace() -> String {
        var slice = Substring(self)
        while let first = slice.first, first.isASCII, first.isWhitespace { slice.removeFirst() }
        while let last = slice.last, last.isASCII, last.isWhitespace { slice.removeLast() }
        return String(slice)
    }
}
