"""Supervisor numbers (run through bin/bench-supervisor, which builds the release binary).

For 2, 4 and 8 workers on the tiny fixture model:
  - load latency (POST /v1/load_lora_adapter -> 200), and the engine's own AddAdapter time
    for the same adapter measured directly on the engine socket, so the difference is what
    the commit path (supervisor persist + fan-out + every worker's ack) costs;
  - "visible on every worker": right after the 200, 3 * N fresh connections (spread over
    the workers by the kernel) must all resolve the adapter: stale reads are counted (the
    visibility latency is 0 by construction: the 200 waits for every worker's ack);
  - respawn-to-ready after kill -9 of a follower;
  - failed requests during a rolling restart (SIGHUP) and a scale-down (SIGTTOU) under a
    steady request loop.
Prints a table; loopback only; every process is stopped by pid.
"""
import os
import signal
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ROOT = harness.ROOT
BINARY = os.path.join(ROOT, ".build-release/release/lorikeet")


def request(port, method, path, body=None):
    return harness.request(port, method, path, body, timeout=60)


def engine_add_ms(state, path, int_id):
    """AddAdapter straight on the engine socket (then RemoveAdapter), in ms."""
    engine = harness.EngineClient(os.path.join(state, "engine.sock"))
    pb = engine.pb
    try:
        epoch = engine.call(health=pb.HealthRequest()).health_reply.max_epoch
        start = time.perf_counter()
        engine.call(add_adapter=pb.AddAdapterRequest(epoch=epoch, name="bench-direct", int_id=int_id, path=path))
        elapsed = (time.perf_counter() - start) * 1000
        engine.call(remove_adapter=pb.RemoveAdapterRequest(epoch=epoch, int_id=int_id))
        return elapsed
    finally:
        engine.close()


class LoadLoop:
    """4 client threads sending 1-token completions on fresh connections until stopped."""

    def __init__(self, port, threads=4):
        self.port = port
        self.ok = 0
        self.failed = 0
        self.reasons = set()
        self.running = True
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def _loop(self):
        while self.running:
            try:
                status, _ = request(self.port, "POST", "/v1/completions", {"model": "b0", "prompt": "x", "max_tokens": 1})
                reason = None if status == 200 else f"HTTP {status}"
            except Exception as error:
                reason = repr(error)
            with self.lock:
                if reason is None:
                    self.ok += 1
                else:
                    self.failed += 1
                    self.reasons.add(reason)

    def stop(self):
        self.running = False
        for thread in self.threads:
            thread.join()
        return {"requests": self.ok + self.failed, "failed": self.failed, "reasons": sorted(self.reasons)}


def migrate_req_setting():
    """net.ipv4.tcp_migrate_req: 1 lets the kernel move connections queued on a closed
    SO_REUSEPORT listener to another one (see ops/sysctl.d/90-lorikeet.conf)."""
    try:
        with open("/proc/sys/net/ipv4/tcp_migrate_req") as handle:
            return handle.read().strip()
    except OSError:
        return "unavailable"


def bench_workers(workers, fixture):
    server = harness.Server(BINARY, fixture, workers, extra=("--max-loras", "64", "--max-cpu-loras", "64"))
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
            workers_now = server.worker_list()
            victim = next(w for w in workers_now if w["role"] == "follower")
            start = time.perf_counter()
            os.kill(victim["pid"], signal.SIGKILL)
            while True:
                now = server.worker_list() or []
                if any(w["slot"] == victim["slot"] and w["state"] == "ready" and w["pid"] != victim["pid"] for w in now):
                    break
                time.sleep(0.01)
            respawn.append((time.perf_counter() - start) * 1000)
            server.wait_ready()
        # failed requests per rolling restart (HUP), then per scale-down (TTOU), under load
        load = LoadLoop(server.port)
        time.sleep(0.5)
        before = {w["pid"] for w in server.worker_list()}
        roll_start = time.perf_counter()
        server.process.send_signal(signal.SIGHUP)
        while True:
            now = server.worker_list() or []
            if len(now) == workers and all(w["state"] == "ready" and w["pid"] not in before for w in now):
                break
            time.sleep(0.05)
        roll_ms = (time.perf_counter() - roll_start) * 1000
        time.sleep(0.5)
        rolled = load.stop()
        load = LoadLoop(server.port)
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTTOU)
        while len(server.worker_list() or []) != workers - 1:
            time.sleep(0.05)
        time.sleep(0.5)
        scaled = load.stop()
        return {
            "workers": workers,
            "load_p50_ms": statistics.median(loads),
            "engine_add_p50_ms": statistics.median(engine),
            "commit_overhead_p50_ms": statistics.median(loads) - statistics.median(engine),
            "stale_reads": sum(visible), "reads": len(visible) * 3 * workers,
            "respawn_to_ready_ms": statistics.median(respawn),
            "roll_ms": roll_ms,
            "roll_requests": rolled["requests"], "roll_failed": rolled["failed"], "roll_reasons": rolled["reasons"],
            "ttou_requests": scaled["requests"], "ttou_failed": scaled["failed"], "ttou_reasons": scaled["reasons"],
        }
    finally:
        server.stop()


def main():
    fixture = sys.argv[1] if len(sys.argv) > 1 else harness.fixture_dir()
    counts = [int(n) for n in os.environ.get("LORIKEET_BENCH_WORKERS", "2 4 8").split()]
    rows = [bench_workers(n, fixture) for n in counts]
    header = ["workers", "load p50 ms", "engine add p50 ms", "commit overhead ms", "stale reads after 200",
              "respawn->ready ms", "HUP roll ms", "requests during roll", "failed", "requests during TTOU", "failed"]
    print(f"net.ipv4.tcp_migrate_req = {migrate_req_setting()}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r['workers']} | {r['load_p50_ms']:.1f} | {r['engine_add_p50_ms']:.1f} | {r['commit_overhead_p50_ms']:.1f} | "
              f"{r['stale_reads']}/{r['reads']} | {r['respawn_to_ready_ms']:.0f} | {r['roll_ms']:.0f} | {r['roll_requests']} | "
              f"{r['roll_failed']} | {r['ttou_requests']} | {r['ttou_failed']} |")
    for r in rows:
        if r["roll_reasons"]:
            print(f"rolling restart failures at {r['workers']} workers: {', '.join(r['roll_reasons'])}")
        if r["ttou_reasons"]:
            print(f"scale-down failures at {r['workers']} workers: {', '.join(r['ttou_reasons'])}")


if __name__ == "__main__":
    main()
