"""Shared pieces of bin/bench and bin/drill: a `lorikeet serve` under test, HTTP and
`lorikeet ctl` helpers, and an engine-channel client (protobuf compiled from proto/
with protoc into a temp dir, as Tests/Fixtures/proto_interop.py does).

Loopback only; every process is started and stopped by pid.
"""
import atexit
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_proto_dir = None


def proto():
    """The engine_pb2 module, compiled once per process."""
    global _proto_dir
    if _proto_dir is None:
        _proto_dir = tempfile.mkdtemp(prefix="lk-proto-")
        atexit.register(shutil.rmtree, _proto_dir, True)
        files = [f"lorikeet/v1/{n}.proto" for n in ("common", "control", "cluster", "admin", "engine")]
        subprocess.run(["protoc", f"-I{ROOT}/proto", f"--python_out={_proto_dir}", *files], check=True)
        for package in ("lorikeet", "lorikeet/v1"):
            open(os.path.join(_proto_dir, package, "__init__.py"), "a").close()
        sys.path.insert(0, _proto_dir)
    from lorikeet.v1 import engine_pb2
    return engine_pb2


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def request(port, method, path, body=None, timeout=30):
    """One request on a fresh connection (so the kernel spreads them over the workers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Content-Type": "application/json", "Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def stop_process(process, timeout=15):
    """SIGINT (a graceful stop), then SIGKILL if `process` is still there after `timeout` s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def alive(pid):
    """Whether process `pid` still runs: a zombie (dead, not yet reaped: orphans wait for a
    PID 1 that may never reap them in a container) holds no socket and counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] not in ("Z", "X")


def error_message(data):
    try:
        return json.loads(data)["error"]["message"]
    except Exception:
        return data[:120].decode(errors="replace")


def completion(port, model, timeout=30):
    return request(port, "POST", "/v1/completions", {"model": model, "prompt": "x", "max_tokens": 1, "temperature": 0},
                   timeout=timeout)


class EngineClient:
    """The engine channel: 1 flag byte + 4-byte big-endian length + EngineEnvelope."""

    def __init__(self, socket_path, timeout=10):
        self.pb = proto()
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(socket_path)
        self.call_id = 0

    def _read(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("engine closed the connection")
            data += chunk
        return data

    def call(self, **body):
        self.call_id += 1
        envelope = self.pb.EngineEnvelope(call_id=self.call_id, **body)
        data = envelope.SerializeToString()
        self.sock.sendall(struct.pack(">BI", 0, len(data)) + data)
        _, length = struct.unpack(">BI", self._read(5))
        reply = self.pb.EngineEnvelope()
        reply.ParseFromString(self._read(length))
        return reply

    def adapters(self):
        """{name: int_id} of every adapter the engine holds (it lists duplicates as such)."""
        reply = self.call(list_adapters=self.pb.ListEngineAdaptersRequest())
        return [(a.name, a.int_id) for a in reply.adapter_list.adapters]

    def close(self):
        self.sock.close()


def fixture_dir(python=sys.executable):
    """The cached tiny fixture (same hash rule as bin/bench-supervisor and the test suites)."""
    src = open(os.path.join(ROOT, "Tests/Fixtures/make_tiny_llama.py"), "rb").read()
    h = 0xcbf29ce484222325
    for b in src:
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    path = "/tmp/lorikeet-fixtures-" + format(h, "x")
    if not os.path.isfile(os.path.join(path, "reference.json")):
        tmp = f"{path}.tmp-{os.getpid()}"
        subprocess.run([python, os.path.join(ROOT, "Tests/Fixtures/make_tiny_llama.py"), tmp], check=True,
                       stdout=subprocess.DEVNULL)
        try:
            os.rename(tmp, path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


class Server:
    """`lorikeet serve` on the fixture model, runtime adapters allowed under the fixture dir."""

    def __init__(self, binary, fixture, workers, extra=(), ready_timeout=180, environment=None):
        """`environment` adds (or overrides) environment variables of the server, e.g. more allowed prefixes."""
        self.binary = binary
        self.state = tempfile.mkdtemp(prefix="lk-serve-")
        self.port = free_port()
        self.environment = dict(os.environ, LORIKEET_ALLOW_RUNTIME_LORA_UPDATING="true",
                                LORIKEET_RUNTIME_LORA_ALLOWED_PATH_PREFIXES=fixture)
        # The parent watch by polling: PR_SET_PDEATHSIG follows the *thread* that spawned the
        # server, and a drill restarts killed nodes from its chaos thread, which ends first.
        self.environment["LORIKEET_PARENT_WATCH"] = "poll"
        self.environment.update(environment or {})
        self.arguments = [binary, "serve", "--workers", str(workers), "--port", str(self.port), "--state-dir", self.state,
                          "--model", os.path.join(fixture, "model"), "--served-model-name", "tiny",
                          # the server (and its children) exit when this script is gone, however it ends
                          "--parent-pid", str(os.getpid()), *extra]
        self.log_path = os.path.join(self.state, "server.log")
        self.log = open(self.log_path, "a")
        self.workers = workers
        self.start()
        self.wait_ready(ready_timeout)

    def start(self):
        """Starts the supervisor (again, after it died: same port, state directory and log)."""
        self.process = subprocess.Popen(self.arguments, env=self.environment, stdout=self.log, stderr=self.log)

    def ctl(self, *args, timeout=30):
        try:
            out = subprocess.run([self.binary, "ctl", *args, "--state-dir", self.state, "--json"],
                                 capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, "timeout"
        try:
            value = json.loads(out.stdout) if out.stdout.strip() else None
        except ValueError:
            value = None
        return value, (out.returncode, out.stderr.strip())

    def status(self):
        return self.ctl("status")[0]

    def worker_list(self):
        return self.ctl("workers")[0] or []

    def all_ready(self, workers=None):
        workers = self.workers if workers is None else workers
        listed = self.worker_list()
        return len(listed) == workers and all(w["state"] == "ready" for w in listed)

    def wait_ready(self, timeout=180, workers=None):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited ({self.process.returncode}); log in {self.log_path}")
            if self.all_ready(workers):
                return True
            time.sleep(0.05)
        raise RuntimeError("server not ready; log in " + self.log_path)

    def children(self):
        """{pid: command} of the supervisor's children (`worker`, `engine`, `cluster-agent`)."""
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                ppid = int(stat[stat.rindex(")") + 2:].split()[1])
                if ppid != self.process.pid:
                    continue
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                found[int(entry)] = argv[1].decode(errors="replace") if len(argv) > 1 else ""
            except (OSError, ValueError):
                continue
        return found

    def engine_pid(self):
        """The engine process: the supervisor's child whose command is `lorikeet engine`."""
        return next((pid for pid, command in self.children().items() if command == "engine"), None)

    def engine(self):
        return EngineClient(os.path.join(self.state, "engine.sock"))

    def stop(self, keep_state=False):
        stop_process(self.process)
        self.log.close()
        if not keep_state:
            shutil.rmtree(self.state, ignore_errors=True)
        return self.process.returncode
