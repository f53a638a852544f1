#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Why a file could not be opened safely.
package enum SecureFileError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The path is empty or not absolute.
    case notAbsolute(String)
    /// `realpath` failed (usually: it does not exist).
    case cannotResolve(path: String, errno: Int32)
    /// The path resolves to a different canonical path (a symlink or `..` component).
    case notCanonical(given: String, canonical: String)
    /// The path is not a directory.
    case notADirectory(String)
    /// The file does not exist.
    case missing(String)
    /// The final component is a symlink (refused by `O_NOFOLLOW`).
    case symlink(String)
    /// The file is not a regular file.
    case notARegularFile(String)
    /// The file is larger than the caller's limit.
    case tooLarge(path: String, size: Int, limit: Int)
    /// Another `open`/`read`/`fstat` failure.
    case io(path: String, operation: String, errno: Int32)

    package var description: String {
        switch self {
        case .notAbsolute(let p): "path '\(p)' is not absolute"
        case .cannotResolve(let p, let e): "cannot resolve path '\(p)': \(errnoString(e))"
        case .notCanonical(let g, let c):
            "path '\(g)' is not canonical: it resolves to '\(c)' (symlinks and '..' are refused)"
        case .notADirectory(let p): "path '\(p)' is not a directory"
        case .missing(let p): "file '\(p)' does not exist"
        case .symlink(let p): "file '\(p)' is a symbolic link; refused"
        case .notARegularFile(let p): "file '\(p)' is not a regular file"
        case .tooLarge(let p, let size, let limit): "file '\(p)' is \(size) bytes, more than the limit of \(limit)"
        case .io(let p, let op, let e): "\(op) '\(p)' failed: \(errnoString(e))"
        }
    }
}

private func errnoString(_ e: Int32) -> String {
    String(cString: strerror(e))
}

/// File access that does not follow symlinks swapped in after a path was checked.
///
/// The engine is given adapter paths that a worker already canonicalized under the
/// allowed prefixes. It re-canonicalizes (`realpath`) and refuses the path if the result
/// differs, then opens each file with `O_NOFOLLOW` and reads it through the descriptor
/// (`fstat` + `read`), so a final component replaced by a symlink is refused.
package enum SecureFile {
    /// Returns `path` if it is absolute, canonical and a directory; throws otherwise.
    package static func canonicalDirectory(_ path: String) throws(SecureFileError) -> String {
        guard path.hasPrefix("/") else { throw .notAbsolute(path) }
        guard let resolved = realpath(path, nil) else { throw .cannotResolve(path: path, errno: errno) }
        let canonical = String(cString: resolved)
        free(resolved)
        // A trailing slash is harmless; anything else that changes is refused.
        var given = path
        while given.count > 1 && given.hasSuffix("/") { given.removeLast() }
        guard canonical == given else { throw .notCanonical(given: path, canonical: canonical) }
        var st = stat()
        guard stat(canonical, &st) == 0 else { throw .io(path: canonical, operation: "stat", errno: errno) }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { throw .notADirectory(path) }
        return canonical
    }

    /// Reads a whole regular file. With `followSymlinks: false` (the default, for
    /// adapter files) a symlink in the final component is refused (`O_NOFOLLOW`); model
    /// files given by the operator may be symlinks (Hugging Face cache snapshots are).
    package static func read(
        _ path: String, limit: Int = 1 << 34, followSymlinks: Bool = false
    ) throws(SecureFileError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC | (followSymlinks ? 0 : O_NOFOLLOW))
        guard fd >= 0 else {
            let e = errno
            switch e {
            case ENOENT: throw .missing(path)
            case ELOOP: throw .symlink(path)
            default: throw .io(path: path, operation: "open", errno: e)
            }
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .io(path: path, operation: "fstat", errno: errno) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw .notARegularFile(path) }
        let size = Int(st.st_size)
        guard size <= limit else { throw .tooLarge(path: path, size: size, limit: limit) }
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
        if readError != 0 { throw .io(path: path, operation: "read", errno: readError) }
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
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
