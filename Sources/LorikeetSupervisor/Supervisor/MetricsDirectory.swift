import Glibc
import Logging

/// The directory where the workers' `vllm:` figures meet (`<state-dir>/metrics`, passed
/// to every worker as `LORIKEET_METRICS_DIR`): each worker writes its own file there and
/// a scrape of any worker sums them all (the worker's `VLLMMetrics`; vLLM's
/// `PROMETHEUS_MULTIPROC_DIR`, which vLLM also wipes at start).
///
/// Made here, mode 0700 inside the checked state directory, and emptied at every start:
/// counters of a previous run start again from zero, as a process restart would.
enum MetricsDirectory {
    /// Name of the worker environment variable.
    static let environmentName = "LORIKEET_METRICS_DIR"

    /// Creates or empties `<stateDirectory>/metrics`; nil (logged) when it cannot be used,
    /// in which case each worker's `vllm:` series count that worker alone.
    static func prepare(stateDirectory: String, logger: Logger) -> String? {
        let path = stateDirectory + "/metrics"
        if mkdir(path, 0o700) != 0, errno != EEXIST {
            logger.warning("cannot create the metrics directory; vllm: series will be per worker", metadata: ["path": "\(path)"])
            return nil
        }
        var info = stat()
        guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR, info.st_uid == geteuid() else {
            logger.warning(
                "the metrics directory is not a directory of ours; vllm: series will be per worker", metadata: ["path": "\(path)"])
            return nil
        }
        if info.st_mode & 0o077 != 0 { chmod(path, 0o700) }
        guard let stream = opendir(path) else { return nil }
        defer { closedir(stream) }
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != ".", name != ".." { unlink(path + "/" + name) }
        }
        return path
    }
}
