import ArgumentParser
import Foundation
import Logging
import LorikeetProto
import LorikeetSupervisor

#if canImport(Glibc)
    import Glibc
#endif

/// Options `serve` and `worker` share that bound what clients may do or say who they are:
/// the API key (flag, file or environment), `--allowed-hosts`, `--max-adapters`,
/// `--max-body-bytes`.
enum SecurityOptions {
    /// Largest API key file read (a bearer token is short; anything bigger is a mistake).
    static let apiKeyFileBytes = 4096
    /// Largest `--allowed-hosts` entry (a DNS name is at most 253 bytes; a bracketed IPv6
    /// literal with a port fits too).
    static let hostNameBytes = 255

    /// Why an API key file cannot be used.
    struct KeyFileError: Error, CustomStringConvertible {
        let path: String
        let reason: String
        var description: String { "--api-key-file \(self.path): \(self.reason)" }
    }

    /// Reads the API key from `path` once: a regular file (not followed through a
    /// FIFO), at most `apiKeyFileBytes`, UTF-8, trailing newline(s) trimmed, not empty and
    /// without control characters inside. Returns the key and, when the file is readable
    /// by group or others, a warning to log (not refused: container secret mounts are
    /// often 0644 root-owned).
    static func readAPIKeyFile(_ path: String) throws(KeyFileError) -> (key: String, warning: String?) {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw KeyFileError(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            throw KeyFileError(path: path, reason: "not a regular file")
        }
        guard Int(info.st_size) <= Self.apiKeyFileBytes else {
            throw KeyFileError(path: path, reason: "\(info.st_size) bytes; an API key file holds at most \(Self.apiKeyFileBytes) bytes")
        }
        var bytes = [UInt8](repeating: 0, count: Self.apiKeyFileBytes + 1)
        var count = 0
        while count < bytes.count {
            let got = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + count, $0.count - count) }
            if got < 0 && errno == EINTR { continue }
            guard got >= 0 else { throw KeyFileError(path: path, reason: String(cString: strerror(errno))) }
            if got == 0 { break }
            count += got
        }
        guard count <= Self.apiKeyFileBytes else { throw KeyFileError(path: path, reason: "more than \(Self.apiKeyFileBytes) bytes") }
        guard var key = String(validating: bytes[0..<count], as: UTF8.self) else {
            throw KeyFileError(path: path, reason: "not UTF-8 text")
        }
        while key.hasSuffix("\n") || key.hasSuffix("\r\n") || key.hasSuffix("\r") { key.removeLast() }
        guard !key.isEmpty else { throw KeyFileError(path: path, reason: "empty") }
        if key.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            throw KeyFileError(path: path, reason: "the key contains control characters (one line expected)")
        }
        let mode = info.st_mode & 0o777
        let warning =
            mode & 0o077 != 0
            ? "API key file \(path) is readable by group or others (mode \(String(mode, radix: 8))); chmod 600 it"
            : nil
        return (key, warning)
    }

    /// `--allowed-hosts NAME[,NAME...]`, else `LORIKEET_ALLOWED_HOSTS`: names split on
    /// commas, trimmed; each non-empty, at most `hostNameBytes`, without whitespace or
    /// control characters.
    /// The API key from `--api-key` (with a warning: argv is visible to every local user)
    /// or `--api-key-file` (refused with exit 78 when unusable); nil when neither is given.
    static func apiKey(flag: String?, file: String?, logger: Logger) -> String? {
        if flag != nil {
            logger.warning("--api-key is visible to every local user (ps, /proc/<pid>/cmdline); prefer --api-key-file or LORIKEET_API_KEY")
        }
        guard let file else { return flag }
        do {
            let (key, warning) = try Self.readAPIKeyFile(file)
            if let warning { logger.warning("\(warning)") }
            return key
        } catch {
            Self.refuse(error.description)
        }
    }

    static func allowedHosts(flag: String?, environment: [String: String]) throws(ValidationError) -> [String] {
        guard let text = flag ?? environment["LORIKEET_ALLOWED_HOSTS"] else { return [] }
        let source = flag != nil ? "--allowed-hosts" : "LORIKEET_ALLOWED_HOSTS"
        var hosts: [String] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let name = part.trimmingCharacters(in: .whitespaces)
            guard !name.isEmpty else { throw ValidationError("\(source): empty host name in the list") }
            guard name.utf8.count <= Self.hostNameBytes else {
                throw ValidationError("\(source): a host name is \(name.utf8.count) bytes; the limit is \(Self.hostNameBytes)")
            }
            guard !name.unicodeScalars.contains(where: { TextRules.isForbidden($0) || $0.properties.isWhitespace }) else {
                throw ValidationError("\(source): host names must not contain spaces or control characters")
            }
            hosts.append(name)
        }
        return hosts
    }

    /// `--max-adapters N`, else `LORIKEET_MAX_ADAPTERS`, else `Limits.defaultMaxAdapters`;
    /// 1...`Limits.maxAdaptersCeiling`.
    static func maxAdapters(flag: Int?, environment: [String: String]) throws(ValidationError) -> Int {
        let value: Int
        if let flag {
            value = flag
        } else if let text = environment["LORIKEET_MAX_ADAPTERS"] {
            guard let parsed = Int(text.trimmingCharacters(in: .whitespaces)) else {
                throw ValidationError("LORIKEET_MAX_ADAPTERS must be a number")
            }
            value = parsed
        } else {
            value = Limits.defaultMaxAdapters
        }
        guard (1...Limits.maxAdaptersCeiling).contains(value) else {
            throw ValidationError("--max-adapters must be 1...\(Limits.maxAdaptersCeiling) (the largest table must fit one frame)")
        }
        return value
    }

    /// `--max-body-bytes`: 1...`Limits.maxBodyBytesCeiling` (a larger body, lowered into an
    /// engine request, could exceed the engine channel's frame).
    static func checkBodyBytes(_ value: Int) throws(ValidationError) {
        guard value > 0 else { throw ValidationError("--max-body-bytes must be positive") }
        guard value <= Limits.maxBodyBytesCeiling else {
            throw ValidationError(
                "--max-body-bytes must be at most \(Limits.maxBodyBytesCeiling) (a larger body cannot fit an engine frame)")
        }
    }

    /// Whether `host` (a numeric listen address, or `localhost`) is a loopback address.
    static func isLoopback(_ host: String) -> Bool {
        let lowered = host.lowercased()
        return lowered == "localhost" || lowered == "::1" || lowered == "[::1]" || lowered.hasPrefix("127.")
            || lowered.hasPrefix("::ffff:127.")
    }

    /// The single line printed before exiting 78 for a configuration that cannot work.
    static func refuse(_ message: String) -> Never {
        FileHandle.standardError.write(Data("lorikeet: \(message)\n".utf8))
        LorikeetExitCode.cannotBoot.exit()
    }
}
