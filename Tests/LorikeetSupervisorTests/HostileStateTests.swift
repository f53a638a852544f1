import Foundation
import LorikeetProto
import LorikeetTestSupport
import Testing

/// Issue 12 against real `lorikeet serve` processes: the state directory and table file
/// it refuses, the audit log a hostile request cannot bloat, the adapter cap, the API key
/// kept out of argv, and children that die with a `kill -9`ed supervisor through
/// PR_SET_PDEATHSIG alone. In the `ServeTests` suite (serialized with the other
/// whole-server tests on 2 cores).
extension ServeTests {
    /// Starts `serve` on `stateDirectory`, expects it to exit by itself: its status and log.
    static func refusedStart(
        stateDirectory: String, extraArguments: [String] = [], timeoutSeconds: Double = 30
    ) throws -> (status: Int32?, log: String) {
        let logDirectory = TestEnvironment.temporaryDirectory("lk-refused-log")
        defer { try? FileManager.default.removeItem(atPath: logDirectory) }
        let fixture = try TestEnvironment.fixtureDirectory()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try TestEnvironment.lorikeetBinary)
        process.arguments =
            [
                "serve", "--workers", "1", "--port", "\(TestEnvironment.freePort())", "--state-dir", stateDirectory,
                "--model", fixture + "/model", "--parent-pid", "\(getpid())",
            ] + extraArguments
        var environment = ProcessInfo.processInfo.environment
        environment["LORIKEET_PARENT_WATCH"] = "poll"
        process.environment = environment
        let logPath = logDirectory + "/serve.log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = FileHandle(forWritingAtPath: logPath)
        process.standardOutput = log
        process.standardError = log
        try process.run()
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while process.isRunning && Date() < deadline { usleep(50_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            return (nil, (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "")
        }
        return (process.terminationStatus, (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "")
    }

    static func modeBits(_ path: String) -> mode_t {
        var info = stat()
        return lstat(path, &info) == 0 ? info.st_mode & 0o7777 : 0
    }

    static func modificationTime(_ path: String) -> timespec {
        var info = stat()
        _ = lstat(path, &info)
        return info.st_mtim
    }

    @Test("state directory refusals: a symlink or a group/world-writable directory stops serve with exit 78 and one line saying the fix")
    func stateDirectoryRefused() throws {
        let real = TestEnvironment.temporaryDirectory("lk-real-state")
        let link = real + "-link"
        #expect(symlink(real, link) == 0)
        defer {
            unlink(link)
            try? FileManager.default.removeItem(atPath: real)
        }
        let symlinked = try Self.refusedStart(stateDirectory: link)
        #expect(symlinked.status == 78, "exit \(String(describing: symlinked.status)):\n\(symlinked.log)")
        let symlinkLines = symlinked.log.split(separator: "\n").filter { $0.contains("state directory") }
        #expect(
            symlinkLines.count == 1 && symlinkLines[0].contains("is a symlink") && symlinkLines[0].contains("--state-dir"),
            "\(symlinked.log)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: real).isEmpty, "serve wrote through the symlink")

        for mode: mode_t in [0o777, 0o770] {
            let open = TestEnvironment.temporaryDirectory("lk-open-state")
            defer { try? FileManager.default.removeItem(atPath: open) }
            #expect(chmod(open, mode) == 0)
            let refused = try Self.refusedStart(stateDirectory: open)
            #expect(refused.status == 78, "mode \(String(mode, radix: 8)): exit \(String(describing: refused.status)):\n\(refused.log)")
            let lines = refused.log.split(separator: "\n").filter { $0.contains("state directory") }
            #expect(
                lines.count == 1 && lines[0].contains("writable by group or others") && lines[0].contains("chmod 700"), "\(refused.log)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: open).isEmpty, "serve created files in an untrusted directory")
        }
    }

    @Test(
        "a 0-byte, corrupt or foreign table file stops serve with exit 78 and a message; the file is left untouched",
        arguments: [
            ("empty", [] as [UInt8], "empty (0 bytes)"),
            (
                "bad checksum",
                Array(
                    TableFile.encode(AdapterTable(version: 3, adapters: [AdapterRecord(name: "a", intID: 1, path: "/a")], nextIntID: 2))
                        .dropLast(1)) + [0x99], "checksum mismatch"
            ),
            ("foreign", Array("not a table\n".utf8), "not a Lorikeet adapter table"),
        ])
    func corruptTableRefused(_ label: String, _ bytes: [UInt8], _ reason: String) throws {
        let directory = TestEnvironment.temporaryDirectory("lk-corrupt")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/adapters.table"
        #expect(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
        let before = Self.modificationTime(path)
        let refused = try Self.refusedStart(stateDirectory: directory)
        #expect(refused.status == 78, "\(label): exit \(String(describing: refused.status)):\n\(refused.log)")
        #expect(refused.log.contains(reason) && refused.log.contains("move it aside"), "\(label): \(refused.log)")
        #expect([UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) == bytes, "\(label): the table file changed")
        let after = Self.modificationTime(path)
        #expect(after.tv_sec == before.tv_sec && after.tv_nsec == before.tv_nsec)
        #expect(!FileManager.default.fileExists(atPath: path + ".tmp"))
        #expect(!FileManager.default.fileExists(atPath: directory + "/admin.sock"), "\(label): serve got as far as the admin socket")
    }

    @Test("a legacy table (bare protobuf) is served, logged once, and rewritten with the LKTB header on the next change")
    func legacyTableMigrates() throws {
        let directory = TestEnvironment.temporaryDirectory("lk-legacy")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let fixture = try TestEnvironment.fixtureDirectory()
        let legacy = AdapterTable(
            version: 4, adapters: [AdapterRecord(name: "old", intID: 3, path: fixture + "/adapters/plain")], nextIntID: 4)
        #expect(FileManager.default.createFile(atPath: directory + "/adapters.table", contents: Data(legacy.serializedBytes())))
        let server = try ServerUnderTest(workers: 1, stateDirectory: directory)
        defer { server.stop() }
        #expect(try Self.table(server) == ["old": 3])
        #expect(server.log.components(separatedBy: "legacy format").count == 2, "\(server.log)")
        #expect(try Self.load(server, "new").status == 200)
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: directory + "/adapters.table")))
        #expect(bytes.starts(with: Array("LKTB".utf8)))
        #expect(try TableFile.decode(bytes).table.adapters.map(\.name) == ["old", "new"])
        #expect(try TableFile.decode(bytes).table.adapters.last?.intID == 4)
    }

    /// One admin call over the admin socket.
    static func admin(_ server: ServerUnderTest, _ body: AdminEnvelope.Body) throws -> AdminEnvelope.Body? {
        let connection = FramedConnection<AdminEnvelope>(fd: try UnixSocket.connect(path: server.stateDirectory + "/admin.sock"))
        defer { connection.close() }
        try connection.send(AdminEnvelope(callID: 42, body: body))
        let reply = try connection.receive()
        #expect(reply?.callID == 42)
        return reply?.body
    }

    @Test(
        "hostile admin requests (3 MB names, newlines, bidi, 257-item batch) are refused alone; the audit log stays small; nothing restarts"
    )
    func hostileAdminRequests() throws {
        let server = try ServerUnderTest(workers: 2)
        defer { server.stop() }
        #expect(try Self.load(server, "kept").status == 200)
        let pids = try server.workerList().compactMap { $0["pid"] as? Int }.sorted()
        let children = server.childPIDs().sorted()

        let huge = String(repeating: "u", count: 3_000_000)
        guard case .mutationReply(let unload) = try Self.admin(server, .unload(UnloadAdapterRequest(name: huge))) else {
            Issue.record("no mutation reply to a 3 MB unload")
            return
        }
        #expect(unload.status.code == .invalidArgument && unload.status.param == "lora_name", "\(unload.status)")
        #expect(unload.status.message.utf8.count < 300)

        // (A NUL cannot be tested here: protobuf-c strings are C strings, so the codec cuts the name at the NUL.)
        for name in ["x\n{\"forged\":1}", "bidi\u{202E}gnp.exe"] {
            guard
                case .mutationReply(let control) = try Self.admin(
                    server, .load(LoadAdapterRequest(name: name, path: server.adapterDirectory + "/plain")))
            else {
                Issue.record("no reply to a name with control characters")
                return
            }
            #expect(control.status.code == .invalidArgument && control.status.param == "lora_name", "\(control.status)")
        }
        guard
            case .mutationReply(let longPath) = try Self.admin(
                server, .load(LoadAdapterRequest(name: "p", path: "/" + String(repeating: "d", count: 5000))))
        else {
            Issue.record("no reply to a 5000-byte path")
            return
        }
        #expect(longPath.status.code == .invalidArgument && longPath.status.param == "lora_path", "\(longPath.status)")

        let items = (0..<(Limits.batchOperations + 1)).map { BatchItem.unload(UnloadAdapterRequest(name: "n\($0)")) }
        guard case .result(let batch) = try Self.admin(server, .batch(BatchRequest(items: items))) else {
            Issue.record("no refusal of an oversized batch")
            return
        }
        #expect(batch.status.code == .invalidArgument && batch.status.message.contains("\(Limits.batchOperations)"))

        // The same 3 MB unload through HTTP: refused at the edge or inside, the worker lives.
        let http = try TestHTTP.post(port: server.port, "/v1/unload_lora_adapter", ["lora_name": huge])
        #expect(http.status == 400, "\(http.status) \(http.body.prefix(300))")
        // Issue 12's worker killer: loads whose name and path are ~7 MiB (under the 8 MiB body limit), many times.
        for index in 0..<4 {
            let big = String(repeating: "L", count: 7 * 1024 * 1024 - 200)
            let body =
                index % 2 == 0
                ? ["lora_name": big, "lora_path": server.adapterDirectory + "/plain"] : ["lora_name": "n", "lora_path": "/" + big]
            let response = try TestHTTP.post(port: server.port, "/v1/load_lora_adapter", body)
            #expect(response.status == 400, "\(response.status) \(response.body.prefix(300))")
        }

        let audit = (try? Data(contentsOf: URL(fileURLWithPath: server.stateDirectory + "/audit.log"))) ?? Data()
        // Every line is bounded: name and caller 256 bytes, path 4 KiB (the path limit), message 1 KiB.
        #expect(audit.count < 64 * 1024, "the audit log grew to \(audit.count) bytes")
        for line in audit.split(separator: UInt8(ascii: "\n")) { #expect(line.count < 6 * 1024, "an audit line of \(line.count) bytes") }
        let lines = try Self.auditLines(server)
        let refusedUnload = lines.first { $0["action"] as? String == "unload" && ($0["code"] as? String) == "INVALID_ARGUMENT" }
        let refusedName = refusedUnload?["name"] as? String ?? ""
        #expect(refusedName.hasSuffix("…(3000000 bytes)"), "\(lines)")
        #expect(refusedName.utf8.count < 300)
        #expect(lines.allSatisfy { $0["forged"] == nil }, "a newline in a name forged an audit record")
        let serverLog = (try? FileManager.default.attributesOfItem(atPath: server.logPath)[.size] as? Int) ?? 0
        #expect(serverLog < 1_000_000, "the server log grew to \(serverLog) bytes")

        // Nothing restarted; the table is intact and still served.
        #expect(try server.workerList().compactMap { $0["pid"] as? Int }.sorted() == pids)
        #expect(server.childPIDs().sorted() == children)
        #expect(try Self.table(server) == ["kept": 1])
        #expect(try TestHTTP.post(port: server.port, "/v1/completions", Self.completion("kept")).status == 200)
        #expect(!server.log.contains("killing worker"))
    }

    @Test("--max-adapters: the supervisor refuses a commit past the cap even when a worker lets it through; nothing restarts")
    func maxAdaptersEnforcedBySupervisor() throws {
        // The workers are told a larger cap (last --max-adapters wins), so the refusal is the supervisor's.
        let server = try ServerUnderTest(workers: 2, extraArguments: ["--max-adapters", "2", "--worker-arg=--max-adapters=50"])
        defer { server.stop() }
        let pids = try server.workerList().compactMap { $0["pid"] as? Int }.sorted()
        #expect(try Self.load(server, "one").status == 200)
        #expect(try Self.load(server, "two").status == 200)
        let third = try Self.load(server, "three")
        #expect(third.status == 400, "\(third.status) \(third.body)")
        #expect(third.body.contains("--max-adapters is 2"), "\(third.body)")
        #expect(try Self.table(server) == ["one": 1, "two": 2])
        try Self.waitFor("the engine rolled back") { try Self.engineAdapters(server) == ["one": 1, "two": 2] }
        // Unload one; a load fits again.
        #expect(try Self.unload(server, "one").status == 200)
        #expect(try Self.load(server, "three").status == 200)
        #expect(try server.workerList().compactMap { $0["pid"] as? Int }.sorted() == pids)
    }

    @Test(
        "--max-adapters out of range, --max-body-bytes over the ceiling, --prefix-cache-mib below 0, prompt chunks outside 1...8192: refused before anything starts"
    )
    func limitFlagsValidated() throws {
        let binary = try TestEnvironment.lorikeetBinary
        let (tooMany, tooManyOutput) = try TestEnvironment.runProcess(
            binary, ["serve", "--max-adapters", "\(Limits.maxAdaptersCeiling + 1)"])
        #expect(tooMany == 64 && tooManyOutput.contains("--max-adapters must be 1...\(Limits.maxAdaptersCeiling)"), "\(tooManyOutput)")
        let (envTooMany, envOutput) = try TestEnvironment.runProcess(binary, ["serve"], environment: ["LORIKEET_MAX_ADAPTERS": "0"])
        #expect(envTooMany == 64 && envOutput.contains("--max-adapters"), "\(envOutput)")
        let (body, bodyOutput) = try TestEnvironment.runProcess(
            binary, ["worker", "--engine-socket", "/nonexistent", "--max-body-bytes", "\(Limits.maxBodyBytesCeiling + 1)"])
        #expect(body == 64 && bodyOutput.contains("--max-body-bytes must be at most"), "\(bodyOutput)")
        let (hosts, hostsOutput) = try TestEnvironment.runProcess(binary, ["serve", "--allowed-hosts", "a.example,,b"])
        #expect(hosts == 64 && hostsOutput.contains("empty host name"), "\(hostsOutput)")
        let (prefixCache, prefixCacheOutput) = try TestEnvironment.runProcess(binary, ["serve", "--prefix-cache-mib=-1"])
        #expect(
            prefixCache == 64 && prefixCacheOutput.contains("--prefix-cache-mib must be between 0 (off) and 1048576"),
            "\(prefixCacheOutput)")
        for arguments in [
            ["serve", "--prefill-chunk", "0"], ["serve", "--prefill-chunk-decoding", "9000"],
            ["engine", "--socket", "/nonexistent/engine.sock", "--prefill-chunk=-5"],
        ] {
            let (status, output) = try TestEnvironment.runProcess(binary, arguments)
            #expect(status == 64 && output.contains("must be between 1 and 8192"), "\(arguments): \(output)")
        }
    }

    /// prctl(PR_SET_CHILD_SUBREAPER) for this process (glibc's variadic `prctl` is not
    /// visible to Swift: called through its address with the four integer arguments).
    static func setChildSubreaper(_ on: Bool) -> Bool {
        typealias Prctl = @convention(c) (Int32, UInt, UInt, UInt, UInt) -> Int32
        guard let symbol = dlsym(nil, "prctl") else { return false }
        let prctl = unsafeBitCast(symbol, to: Prctl.self)
        let setChildSubreaper: Int32 = 36  // PR_SET_CHILD_SUBREAPER
        return prctl(setChildSubreaper, on ? 1 : 0, 0, 0, 0) == 0
    }

    static func procFile(_ pid: Int32, _ name: String) -> [String] {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/\(name)") else { return [] }
        return data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
    }

    @Test("--api-key-file: the key is in no process's argv; workers get it in their environment, the engine not at all; it is enforced")
    func apiKeyNotInArgv() throws {
        let secretDirectory = TestEnvironment.temporaryDirectory("lk-secret")
        defer { try? FileManager.default.removeItem(atPath: secretDirectory) }
        let key = "sk-test-\(UInt64.random(in: 0...UInt64.max))"
        let keyFile = secretDirectory + "/api-key"
        #expect(FileManager.default.createFile(atPath: keyFile, contents: Data((key + "\n").utf8), attributes: [.posixPermissions: 0o644]))
        let server = try ServerUnderTest(workers: 2, extraArguments: ["--api-key-file", keyFile])
        defer { server.stop() }
        let children = server.childPIDs()
        #expect(children.count == 3)
        let workerPIDs = Set(try server.workerList().compactMap { ($0["pid"] as? Int).map(Int32.init) })
        #expect(workerPIDs.count == 2)
        for pid in children + [server.process.processIdentifier] {
            let argv = Self.procFile(pid, "cmdline")
            #expect(!argv.isEmpty)
            #expect(!argv.contains { $0.contains(key) }, "the API key is in the argv of \(pid): \(argv)")
        }
        for pid in children {
            let environment = Self.procFile(pid, "environ")
            let hasKey = environment.contains("LORIKEET_API_KEY=" + key)
            if workerPIDs.contains(pid) {
                #expect(hasKey, "worker \(pid) did not get the key in its environment")
            } else {
                #expect(!environment.contains { $0.contains(key) }, "the engine \(pid) got the key")
            }
        }
        #expect(server.log.contains("is readable by group or others"), "no warning for a 0644 key file")
        #expect(try TestHTTP.request(port: server.port, path: "/v1/models").status == 401)
        #expect(try TestHTTP.request(port: server.port, path: "/v1/models", headers: ["Authorization": "Bearer " + key]).status == 200)
    }

    @Test("serve warns once when it binds a non-loopback address with runtime updating on and no API key")
    func nonLoopbackWarning() throws {
        let server = try ServerUnderTest(workers: 1, extraArguments: ["--host", "0.0.0.0"])
        defer { server.stop() }
        #expect(server.log.contains("not loopback") && server.log.contains("no API key"), "\(server.log.suffix(2000))")
        let quiet = try ServerUnderTest(workers: 1)
        defer { quiet.stop() }
        #expect(!quiet.log.contains("not loopback"))
    }

    @Test("kill -9 the supervisor with the parent watch at its default: stopped children die of PR_SET_PDEATHSIG alone")
    func killSupervisorDeathSignal() throws {
        let fixture = try TestEnvironment.fixtureDirectory()
        let parent = TestEnvironment.temporaryDirectory("lk-pdeathsig")
        defer { try? FileManager.default.removeItem(atPath: parent) }
        // Missing: the server creates it.
        let stateDirectory = parent + "/state"
        let port = TestEnvironment.freePort()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try TestEnvironment.lorikeetBinary)
        // No --parent-pid and no LORIKEET_PARENT_WATCH: the supervisor is not tied to this
        // test process, and its children arm PR_SET_PDEATHSIG (the default).
        process.arguments = [
            "serve", "--workers", "2", "--port", "\(port)", "--state-dir", stateDirectory, "--served-model-name", "tiny", "--model",
            fixture + "/model",
        ]
        var environment = ProcessInfo.processInfo.environment
        environment["LORIKEET_PARENT_WATCH"] = nil
        process.environment = environment
        let logPath = parent + "/server.log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        process.standardOutput = FileHandle(forWritingAtPath: logPath)
        process.standardError = FileHandle(forWritingAtPath: logPath)
        try process.run()
        var children: [Int32] = []
        defer {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            for pid in children where Self.isAlive(pid) {
                kill(pid, SIGCONT)
                kill(pid, SIGKILL)
                var status: Int32 = 0
                waitpid(pid, &status, 0)
            }
        }
        func childPIDs() -> [Int32] {
            guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
            return entries.compactMap { Int32($0) }.filter { pid in
                guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")")
                else {
                    return false
                }
                let fields = stat[stat.index(after: close)...].split(separator: " ")
                return fields.count > 2 && Int32(fields[1]) == process.processIdentifier
            }
        }
        try Self.waitFor("two workers ready", timeout: 120) {
            children = childPIDs()
            let (status, output) = try TestEnvironment.runProcess(
                try TestEnvironment.lorikeetBinary, ["ctl", "status", "--state-dir", stateDirectory, "--json"])
            guard status == 0, let object = try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any] else {
                return false
            }
            return object["ready_workers"] as? Int == 2
        }
        children = childPIDs()
        #expect(children.count == 3, "engine + 2 workers expected: \(children)")
        // Created private, with no chmod afterwards (umask 077 in the supervisor, umask ~mode around bind).
        #expect(Self.modeBits(stateDirectory) == 0o700)
        for file in ["admin.sock", "engine.sock", "audit.log"] {
            #expect(
                Self.modeBits(stateDirectory + "/" + file) == 0o600,
                "\(file): \(String(Self.modeBits(stateDirectory + "/" + file), radix: 8))")
        }
        for pid in children {
            #expect(!Self.procFile(pid, "environ").contains { $0.hasPrefix("LORIKEET_PARENT_WATCH=") })
        }
        // Stopped, a child cannot run its getppid() poll: only the kernel's death signal
        // (SIGKILL, delivered even to a stopped process) can end it. This test process is
        // made a child subreaper first, so the orphans are re-parented here: their process
        // group is not orphaned (which would SIGHUP its stopped members and blur the
        // proof), and waitpid tells exactly which signal ended each one.
        #expect(Self.setChildSubreaper(true))
        defer { _ = Self.setChildSubreaper(false) }
        for pid in children { kill(pid, SIGSTOP) }
        kill(process.processIdentifier, SIGKILL)
        // (Not process.waitUntilExit(): Foundation may miss the exit once this process
        // adopts orphans; the supervisor is gone the moment it is a zombie.)
        let supervisorPID = process.processIdentifier
        let supervisorDeadline = Date().addingTimeInterval(20)
        while Self.isAlive(supervisorPID) && Date() < supervisorDeadline { usleep(10_000) }
        var endedBy: [Int32: Int32] = [:]
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline && endedBy.count < children.count {
            for pid in children where endedBy[pid] == nil {
                var status: Int32 = 0
                let reaped = waitpid(pid, &status, WNOHANG)
                if reaped == pid { endedBy[pid] = status & 0x7F }
                if reaped < 0 && !Self.isAlive(pid) { endedBy[pid] = -1 }  // reaped elsewhere: gone, signal unknown
            }
            usleep(20_000)
        }
        let alive = children.filter { endedBy[$0] == nil }
        #expect(endedBy.values.allSatisfy { $0 == SIGKILL || $0 == -1 }, "children ended by other signals: \(endedBy)")
        #expect(alive.isEmpty, "children alive 5 s after the supervisor was killed (no PR_SET_PDEATHSIG?): \(alive)")
    }
}
