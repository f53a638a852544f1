import LorikeetLimits

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Why a file could not be opened safely.
///
/// `description` is what a client may see: it says "not allowed", "not found", "not a
/// regular file" or "too large", and never which directories exist outside the allowed
/// prefixes or where a symbolic link points. `detail` says exactly what happened, for the
/// engine's log only.
package enum SecureFileError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The path may not be opened: not absolute, an empty, `.` or `..` component, a NUL
    /// byte, outside every allowed prefix, or a component that is a symbolic link, not a
    /// directory, or not searchable.
    case notAllowed(detail: String)
    /// A component or the file does not exist (`file` names the file, when it is one of
    /// the fixed names inside the directory).
    case notFound(file: String?, detail: String)
    /// The file is a symbolic link, FIFO, socket, device or directory.
    case notARegularFile(file: String, detail: String)
    /// The file is larger than the caller's limit (checked with `fstat`, before reading).
    case tooLarge(file: String, size: Int, limit: Int)
    /// Another `open`/`read`/`fstat` failure (EIO, EMFILE, ...).
    case io(file: String, detail: String)

    package var description: String {
        switch self {
        case .notAllowed:
            "the adapter path is not allowed (it must be an absolute path to a directory under an allowed prefix, "
                + "without symbolic links or '.'/'..' components)"
        case .notFound(let file?, _): "'\(file)' not found"
        case .notFound(nil, _): "the adapter path was not found"
        case .notARegularFile(let file, _): "'\(file)' is not a regular file"
        case .tooLarge(let file, let size, let limit): "'\(file)' is \(size) bytes, more than the limit of \(limit) bytes"
        case .io(let file, _): "'\(file)' could not be read"
        }
    }

    /// What happened, with paths and errno: for the engine's log, never for a client.
    package var detail: String {
        switch self {
        case .notAllowed(let d), .notFound(_, let d), .notARegularFile(_, let d), .io(_, let d): d
        case .tooLarge(let file, let size, let limit): "\(file): \(size) bytes, limit \(limit)"
        }
    }

    /// The description and the detail together (for operator-given files, e.g. the model).
    package var fullDescription: String { "\(self.description) (\(self.detail))" }
}

private func errnoString(_ e: Int32) -> String {
    String(cString: strerror(e))
}

/// A directory opened by `SecureFile.openDirectory` (closed when released).
package final class SecureDirectory: Sendable {
    /// The open descriptor (`O_DIRECTORY`).
    package let fd: Int32
    /// The path it was reached by (normalized: no trailing slash).
    package let path: String

    init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    deinit { close(self.fd) }
}

/// File access that cannot be raced with symlink swaps and cannot hang on special files.
///
/// Adapter directories are opened by a walk (`openDirectory`): once the path is known
/// (by its components alone) to lie under an allowed prefix, every component from `/` on
/// is opened with `openat(dirfd, name, O_NOFOLLOW | O_DIRECTORY)`, so no component of
/// the path can be a symbolic link, whatever is swapped in while the walk runs; `.`,
/// `..` and empty components are refused before anything is opened. Files inside are opened with `openat(O_NOFOLLOW | O_NONBLOCK)`
/// after an `fstatat` that refuses anything but a regular file (so a FIFO never blocks
/// and a device is never opened), checked again with `fstat` on the descriptor (same
/// inode, regular, size within the limit) before a byte is read.
package enum SecureFile {
    /// Opens the directory `path` if it lies under one of `allowedPrefixes` (whole
    /// components: `/data/lora-evil` is not under `/data/lora`), by a walk from `/`
    /// through the prefix to the directory in which no component may be a symlink.
    ///
    /// `allowedPrefixes` are canonical (see `AdapterPathPrefixes`). With no prefixes any
    /// path is walked the same way: every component must be a real directory, which is
    /// what the engine required before prefixes were enforced here.
    package static func openDirectory(_ path: String, allowedPrefixes: [String]) throws(SecureFileError) -> SecureDirectory {
        guard !path.utf8.contains(0) else { throw .notAllowed(detail: "the path contains a NUL byte") }
        guard path.hasPrefix("/") else { throw .notAllowed(detail: "'\(path.echoed())' is not absolute") }
        var trimmed = Substring(path)
        while trimmed.count > 1 && trimmed.hasSuffix("/") { trimmed.removeLast() }
        let components: [Substring] =
            trimmed == "/" ? [] : Array(trimmed.split(separator: "/", omittingEmptySubsequences: false).dropFirst())
        for component in components where component.isEmpty || component == "." || component == ".." {
            throw .notAllowed(detail: "'\(path.echoed())' has an empty, '.' or '..' component")
        }
        // Which prefix holds the path is decided on the components alone, before anything
        // is opened: nothing outside the prefixes is ever probed.
        if !allowedPrefixes.isEmpty {
            let inside = allowedPrefixes.contains { prefix in
                let prefixComponents = prefix.split(separator: "/", omittingEmptySubsequences: true)
                return prefixComponents.count <= components.count && zip(prefixComponents, components).allSatisfy { $0 == $1 }
            }
            guard inside else {
                throw .notAllowed(
                    detail: "'\(path.echoed())' is not under an allowed prefix (\(allowedPrefixes.joined(separator: ":")))")
            }
        }
        // Then the walk starts at `/`, prefix components included (the prefixes are
        // canonical, so they have no symlinks either; one swapped in later is refused).
        var fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else {
            let e = errno
            throw .io(file: "adapter directory", detail: "open /: \(errnoString(e))")
        }
        var reached = ""
        for component in components {
            let name = String(component)
            let next = openat(fd, name, O_RDONLY | O_NOFOLLOW | O_DIRECTORY | O_CLOEXEC)
            let e = errno
            close(fd)
            reached += "/" + name
            guard next >= 0 else {
                switch e {
                case ENOENT: throw .notFound(file: nil, detail: "\(reached.echoed()) does not exist")
                case ELOOP, ENOTDIR:
                    throw .notAllowed(detail: "\(reached.echoed()) is a symbolic link or not a directory")
                case EACCES: throw .notAllowed(detail: "\(reached.echoed()): permission denied")
                default: throw .io(file: "adapter directory", detail: "openat \(reached.echoed()): \(errnoString(e))")
                }
            }
            fd = next
        }
        return SecureDirectory(fd: fd, path: trimmed == "/" ? "/" : String(trimmed))
    }

    /// Reads the regular file `name` (one component) in `directory`, refusing anything
    /// larger than `limit` bytes before reading (see the type's comment).
    package static func read(_ name: String, in directory: SecureDirectory, limit: Int) throws(SecureFileError) -> [UInt8] {
        let shown = directory.path + "/" + name
        guard !name.isEmpty, name != ".", name != "..", !name.utf8.contains(UInt8(ascii: "/")), !name.utf8.contains(0) else {
            throw .notAllowed(detail: "'\(name.echoed())' is not a file name")
        }
        var before = stat()
        guard fstatat(directory.fd, name, &before, AT_SYMLINK_NOFOLLOW) == 0 else {
            let e = errno
            if e == ENOENT { throw .notFound(file: name, detail: "\(shown) does not exist") }
            throw .io(file: name, detail: "fstatat \(shown): \(errnoString(e))")
        }
        guard (before.st_mode & S_IFMT) == S_IFREG else {
            throw .notARegularFile(file: name, detail: "\(shown) has file type \(String(before.st_mode & S_IFMT, radix: 8))")
        }
        let fd = openat(directory.fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
        guard fd >= 0 else {
            let e = errno
            switch e {
            case ENOENT: throw .notFound(file: name, detail: "\(shown) disappeared")
            case ELOOP, ENXIO: throw .notARegularFile(file: name, detail: "\(shown) was swapped: \(errnoString(e))")
            default: throw .io(file: name, detail: "openat \(shown): \(errnoString(e))")
            }
        }
        defer { close(fd) }
        return try self.readOpened(fd, name: name, shown: shown, limit: limit, expected: (before.st_dev, before.st_ino))
    }

    /// Reads a whole regular file given by the operator (the model): symlinks are
    /// followed when `followSymlinks` (Hugging Face cache snapshots are symlinks), a FIFO
    /// never blocks (`O_NONBLOCK`), and the size is checked before reading.
    package static func read(
        _ path: String, limit: Int = 1 << 34, followSymlinks: Bool = false
    ) throws(SecureFileError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC | (followSymlinks ? 0 : O_NOFOLLOW))
        guard fd >= 0 else {
            let e = errno
            switch e {
            case ENOENT: throw .notFound(file: path, detail: "\(path) does not exist")
            case ELOOP: throw .notARegularFile(file: path, detail: "\(path) is a symbolic link")
            case ENXIO: throw .notARegularFile(file: path, detail: "\(path) is a socket or device")
            default: throw .io(file: path, detail: "open \(path): \(errnoString(e))")
            }
        }
        defer { close(fd) }
        return try self.readOpened(fd, name: path, shown: path, limit: limit, expected: nil)
    }

    private static func readOpened(
        _ fd: Int32, name: String, shown: String, limit: Int, expected: (dev_t, ino_t)?
    ) throws(SecureFileError) -> [UInt8] {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .io(file: name, detail: "fstat \(shown): \(errnoString(errno))") }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw .notARegularFile(file: name, detail: "\(shown) has file type \(String(st.st_mode & S_IFMT, radix: 8))")
        }
        if let expected, expected != (st.st_dev, st.st_ino) {
            throw .notARegularFile(file: name, detail: "\(shown) was replaced between fstatat and open")
        }
        let size = Int(st.st_size)
        guard size <= limit else { throw .tooLarge(file: name, size: size, limit: limit) }
        var bytes = [UInt8](repeating: 0, count: size)
        var done = 0
        var readError: Int32 = 0
        bytes.withUnsafeMutableBytes { buf in
            while done < size {
                let n = systemRead(fd, buf.baseAddress! + done, size - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    readError = errno
                    return
                }
                if n == 0 { break }  // Shrunk while reading: keep what was there.
                done += n
            }
        }
        if readError != 0 { throw .io(file: name, detail: "read \(shown): \(errnoString(readError))") }
        if done < size { bytes.removeLast(size - done) }
        return bytes
    }
}

@inline(__always)
private func systemRead(_ fd: Int32, _ buf: UnsafeMutableRawPointer, _ n: Int) -> Int {
    #if canImport(Glibc)
        Glibc.read(fd, buf, n)
    #else
        Darwin.read(fd, buf, n)
    #endif
}

extension SecureFile {
    /// `realpath(path)`, or nil when it cannot be resolved.
    package static func resolvedPath(_ path: String) -> String? {
        guard !path.utf8.contains(0), let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}

/// The directories adapters may be loaded from, as the engine enforces them
/// (`LORIKEET_RUNTIME_LORA_ALLOWED_PATH_PREFIXES`, else `VLLM_RUNTIME_LORA_ALLOWED_PATH_PREFIXES`).
///
/// The same rules as the worker's `PathPolicy` (which the engine does not import): the
/// first variable set and non-empty wins, `:`-separated, each entry must be absolute and
/// free of NUL bytes, and is canonicalized with `realpath`; entries that do not resolve
/// are ignored (reported in `ignored` for a startup warning); duplicates are dropped.
package struct AdapterPathPrefixes: Sendable, Equatable {
    /// Environment variables read, first set wins (the worker reads the same ones).
    package static let environmentNames = [
        "LORIKEET_RUNTIME_LORA_ALLOWED_PATH_PREFIXES", "VLLM_RUNTIME_LORA_ALLOWED_PATH_PREFIXES",
    ]

    /// Canonical prefixes.
    package var allowed: [String]
    /// Entries given but unusable.
    package var ignored: [String]

    /// Canonicalizes `prefixes`.
    package init(_ prefixes: [String]) {
        var allowed: [String] = []
        var ignored: [String] = []
        for prefix in prefixes where !prefix.isEmpty {
            if prefix.hasPrefix("/"), let canonical = SecureFile.resolvedPath(prefix) {
                if !allowed.contains(canonical) { allowed.append(canonical) }
            } else {
                ignored.append(prefix)
            }
        }
        self.allowed = allowed
        self.ignored = ignored
    }

    /// The prefixes from the environment (none when neither variable is set).
    package static func fromEnvironment(_ environment: [String: String]) -> AdapterPathPrefixes {
        for name in self.environmentNames {
            if let value = environment[name], !value.isEmpty {
                return AdapterPathPrefixes(value.split(separator: ":").map(String.init))
            }
        }
        return AdapterPathPrefixes([])
    }
}
