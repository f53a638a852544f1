"""Supervisor numbers (run through bin/bench-supervisor, which builds the release binary).

For 2, 4 and 8 workers on the tiny fixture model:
  - load latency (POST /v1/load_lora_adapter -> 200), and the engine's own AddAdapter time
    for the same adapter measured directly on the engine socket, so the difference is what
    the commit path (supervisor persist + fan-out + every worker's ack) costs;
  - "visible on every worker": right after the 200, 3 * N fresh connections (spread over
    the workers by the kernel) must all resolve the adapter: stale reads are counted (the
    visibility latency is 0 by construction: the 200 waits for every worker's ack);
  - respawn-to-ready after kill -9 of a follower;
  - failed requests during a rolling restart (SIGHUP) under a steady request loop.
Prints a table; loopback only; every process is stopped by pid.
"""
import http.client
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.path.join(ROOT, ".build-release/release/lorikeet")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def request(port, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Content-Type": "application/json", "Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def ctl(state, *args):
    out = subprocess.run([BINARY, "ctl", *args, "--state-dir", state, "--json"], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else None


class Server:
    def __init__(self, workers, fixture):
        self.state = tempfile.mkdtemp(prefix="lk-bench-")
        self.port = free_port()
        env = dict(os.environ, LORIKEET_ALLOW_RUNTIME_LORA_UPDATING="true",
                   LORIKEET_RUNTIME_LORA_ALLOWED_PATH_PREFIXES=fixture)
        self.log = open(os.path.join(self.state, "server.log"), "w")
        self.process = subprocess.Popen(
            [BINARY, "serve", "--workers", str(workers), "--port", str(self.port), "--state-dir", self.state,
             "--model", os.path.join(fixture, "model"), "--served-model-name", "tiny",
             "--max-loras", "64", "--max-cpu-loras", "64"],
            env=env, stdout=self.log, stderr=self.log)
        self.workers = workers
        self.wait_ready()

    def wait_ready(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = ctl(self.state, "status")
            if status and status["ready_workers"] == self.workers:
                workers = ctl(self.state, "workers") or []
                if sum(1 for w in workers if w["state"] == "ready") == self.workers:
                    return
            time.sleep(0.05)
        raise RuntimeError("server not ready; log in " + self.log.name)

    def stop(self):
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def engine_add_ms(state, path, int_id):
    """AddAdapter straight on the engine socket (then RemoveAdapter), in ms."""
    sys.path.insert(0, PROTO_OUT)
    from lorikeet.v1 import engine_pb2

    def call(sock, envelope):
        body = envelope.SerializeToString()
        sock.sendall(struct.pack(">BI", 0, len(body)) + body)
        header = b""
        while len(header) < 5:
            header += sock.recv(5 - len(header))
        _, length = struct.unpack(">BI", header)
        data = b""
        while len(data) < length:
            data += sock.recv(length - len(data))
        reply = engine_pb2.EngineEnvelope()
        reply.ParseFromString(data)
        return reply

    sock = socket.socket(socket.AF_UNIX)
    sock.connect(os.path.join(state, "engine.sock"))
    health = call(sock, engine_pb2.EngineEnvelope(call_id=1, health=engine_pb2.HealthRequest()))
    epoch = health.health_reply.max_epoch
    start = time.perf_counter()
    call(sock, engine_pb2.EngineEnvelope(call_id=2, add_adapter=engine_pb2.AddAdapterRequest(
        epoch=epoch, name="bench-direct", int_id=int_id, path=path)))
    elapsed = (time.perf_counter() - start) * 1000
    call(sock, engine_pb2.EngineEnvelope(call_id=3, remove_adapter=engine_pb2.RemoveAdapterRequest(epoch=epoch, int_id=int_id)))
    sock.close()
    return elapsed


def bench_workers(workers, fixture):
    server = Server(workers, fixture)
    try:
        path = os.path.join(fixture, "adapters", "plain")
        loads, visible, engine = [], [], []
        for index in range(15):
            name = f"b{index}"
            start = time.perf_counter()
            status, _ = request(server.port, "POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
            loaded = time.perf_counter()
            assert status == 200, status
            # Read-your-writes: every fresh connection right after the 200 must resolve it.
            stale = sum(1 for _ in range(3 * workers) if request(
                server.port, "POST", "/v1/completions", {"model": name, "prompt": "x", "max_tokens": 1})[0] != 200)
            visible.append(stale)
            loads.append((loaded - start) * 1000)
            engine.append(engine_add_ms(server.state, path, 10_000 + index))
        # respawn-to-ready after kill -9 of a follower
        respawn = []
        for _ in range(3):
            workers_now = ctl(server.state, "workers")
            victim = next(w for w in workers_now if w["role"] == "follower")
            start = time.perf_counter()
            os.kill(victim["pid"], signal.SIGKILL)
            while True:
                now = ctl(server.state, "workers") or []
                if any(w["slot"] == victim["slot"] and w["state"] == "ready" and w["pid"] != victim["pid"] for w in now):
                    break
                time.sleep(0.01)
            respawn.append((time.perf_counter() - start) * 1000)
            server.wait_ready()
        # failed requests per rolling restart under load
        counts = {"ok": 0, "failed": 0}
        reasons = []
        running = [True]

        def loop():
            while running[0]:
                try:
                    status, _ = request(server.port, "POST", "/v1/completions", {"model": "b0", "prompt": "x", "max_tokens": 1})
                    counts["ok" if status == 200 else "failed"] += 1
                    if status != 200:
                        reasons.append(f"HTTP {status}")
                except Exception as error:
                    counts["failed"] += 1
                    reasons.append(repr(error))

        threads = [threading.Thread(target=loop) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        before = {w["pid"] for w in ctl(server.state, "workers")}
        roll_start = time.perf_counter()
        server.process.send_signal(signal.SIGHUP)
        while True:
            now = ctl(server.state, "workers") or []
            if len(now) == workers and all(w["state"] == "ready" and w["pid"] not in before for w in now):
                break
            time.sleep(0.05)
        roll_ms = (time.perf_counter() - roll_start) * 1000
        time.sleep(0.5)
        running[0] = False
        for t in threads:
            t.join()
        return {
            "workers": workers,
            "load_p50_ms": statistics.median(loads),
            "engine_add_p50_ms": statistics.median(engine),
            "commit_overhead_p50_ms": statistics.median(loads) - statistics.median(engine),
            "stale_reads": sum(visible), "reads": len(visible) * 3 * workers,
            "respawn_to_ready_ms": statistics.median(respawn),
            "roll_ms": roll_ms,
            "roll_requests": counts["ok"] + counts["failed"],
            "roll_failed": counts["failed"],
            "roll_reasons": sorted(set(reasons)),
        }
    finally:
        server.stop()


def main():
    fixture = sys.argv[1]
    global PROTO_OUT
    PROTO_OUT = tempfile.mkdtemp(prefix="lk-bench-proto-")
    files = [f"lorikeet/v1/{n}.proto" for n in ("common", "control", "admin", "engine")]
    subprocess.run(["protoc", f"-I{ROOT}/proto", f"--python_out={PROTO_OUT}", *files], check=True)
    for package in ("lorikeet", "lorikeet/v1"):
        open(os.path.join(PROTO_OUT, package, "__init__.py"), "a").close()
    counts = [int(n) for n in os.environ.get("LORIKEET_BENCH_WORKERS", "2 4 8").split()]
    rows = [bench_workers(n, fixture) for n in counts]
    header = ["workers", "load p50 ms", "engine add p50 ms", "commit overhead ms", "stale reads after 200",
              "respawn->ready ms", "HUP roll ms", "requests during roll", "failed"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r['workers']} | {r['load_p50_ms']:.1f} | {r['engine_add_p50_ms']:.1f} | {r['commit_overhead_p50_ms']:.1f} | "
              f"{r['stale_reads']}/{r['reads']} | {r['respawn_to_ready_ms']:.0f} | {r['roll_ms']:.0f} | {r['roll_requests']} | {r['roll_failed']} |")
    for r in rows:
        if r["roll_reasons"]:
            print(f"rolling restart failures at {r['workers']} workers: {', '.join(r['roll_reasons'])}")


if __name__ == "__main__":
    main()
