"""The benchmark suite (run through bin/bench, which builds the release binaries first).

Sections (all loopback, all bounded; each prints a markdown table):
  http        wrk on GET /v1/models and POST /v1/completions (max_tokens 1, fixture model)
              through `lorikeet serve` at 1, 2 and 4 workers, each next to a wrk run on the
              minimal SwiftNIO hello server (lorikeet-bench-hello) made just before it; ratios.
  lora        completions for the base model vs an adapter (one hot adapter, and a random one
              of all loaded) with 1, 100 and 1,000 adapters loaded (through `lorikeet ctl batch`),
              and GET /v1/models as the table grows; engine sized --max-loras/--max-cpu-loras 1024.
  supervisor  bin/lib/bench_supervisor.py (load latency, read-your-writes, respawn-to-ready of a
              follower, failed requests per rolling restart at 2/4/8 workers).
  respawn     kill -9 of the leader (until a load succeeds again) and of the engine (until a
              base request is served again), 4 workers, 3 trials each.
  engine      bin/bench-engine (fixture model) and bin/bench-engine --model smollm2 (no llama.cpp
              unless --llama-cpp).
Writes the tables between the generated-section markers of docs/BENCHMARKS.md.
Usage: bench.py [--duration S] [--connections N] [--threads N] [--only SECTION,...] [--llama-cpp] [--no-docs]
"""
import argparse
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ROOT = harness.ROOT
RELEASE = os.path.join(ROOT, ".build-release/release")
BINARY = os.path.join(RELEASE, "lorikeet")
HELLO = os.path.join(RELEASE, "lorikeet-bench-hello")
DOC = os.path.join(ROOT, "docs/BENCHMARKS.md")
BEGIN, END = "<!-- bench:begin (written by bin/bench) -->", "<!-- bench:end -->"

REPORT_LUA = """
done = function(summary, latency, requests)
    io.write(string.format("RESULT %.1f %.3f %.3f %d %d\\n", summary.requests / (summary.duration / 1e6),
        latency:percentile(50) / 1000, latency:percentile(99) / 1000,
        summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
        summary.requests))
end
"""


def completion_lua(models):
    names = ",".join(json.dumps(m) for m in models)
    return f"""
local names = {{{names}}}
request = function()
    local n = names[math.random(#names)]
    return wrk.format("POST", nil, {{["Content-Type"] = "application/json"}},
        '{{"model":"' .. n .. '","prompt":"Hello","max_tokens":1,"temperature":0}}')
end
"""


class LoadSampler(threading.Thread):
    """Samples the 1-minute load average every 5 s for the whole run."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples = []
        self.running = True

    def run(self):
        while self.running:
            self.samples.append(os.getloadavg()[0])
            time.sleep(5)


class Bench:
    def __init__(self, args):
        self.args = args
        self.fixture = harness.fixture_dir()
        self.sections = []

    def wrk(self, url, lua=""):
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(lua + REPORT_LUA)
            script = f.name
        try:
            out = subprocess.run(
                ["wrk", f"-t{self.args.threads}", f"-c{self.args.connections}", f"-d{self.args.duration}s", "--latency",
                 "-s", script, url], capture_output=True, text=True, timeout=self.args.duration + 60)
        finally:
            os.unlink(script)
        line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT")), None)
        if line is None:
            raise RuntimeError(f"wrk failed: {out.stdout} {out.stderr}")
        _, rps, p50, p99, errors, total = line.split()
        return {"rps": float(rps), "p50": float(p50), "p99": float(p99), "errors": int(errors), "total": int(total)}

    def emit(self, title, text):
        print(f"\n## {title}\n\n{text}", flush=True)
        self.sections.append((title, text))

    # ---- http

    def http(self):
        hello_port = harness.free_port()
        hello = subprocess.Popen([HELLO, str(hello_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows = []
        try:
            deadline = time.time() + 30
            while time.time() < deadline:
                try:
                    harness.request(hello_port, "GET", "/", timeout=2)
                    break
                except OSError:
                    time.sleep(0.1)
            for workers in (1, 2, 4):
                base = self.wrk(f"http://127.0.0.1:{hello_port}/")
                server = harness.Server(BINARY, self.fixture, workers)
                try:
                    models = self.wrk(f"http://127.0.0.1:{server.port}/v1/models")
                    completions = self.wrk(f"http://127.0.0.1:{server.port}/v1/completions", completion_lua(["tiny"]))
                finally:
                    server.stop()
                rows.append((workers, base, models, completions))
                print(f"  {workers} worker(s): hello {base['rps']:.0f} req/s, models {models['rps']:.0f}, "
                      f"completions {completions['rps']:.0f}", flush=True)
        finally:
            hello.send_signal(signal.SIGTERM)
            hello.wait(10)
        lines = ["| workers | route | req/s | p50 ms | p99 ms | errors/requests | ratio to NIO hello (same run) |",
                 "|---|---|---|---|---|---|---|"]
        for workers, base, models, completions in rows:
            for route, r in (("NIO hello GET /", base), ("GET /v1/models", models), ("POST /v1/completions", completions)):
                ratio = r["rps"] / base["rps"] if base["rps"] else 0
                lines.append(f"| {workers} | {route} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                             f"{r['errors']}/{r['total']} | {ratio:.2f} |")
        self.emit("HTTP throughput through lorikeet serve vs a minimal SwiftNIO server",
                  f"wrk -t{self.args.threads} -c{self.args.connections} -d{self.args.duration}s, loopback, keep-alive; "
                  "completions: tiny fixture model, max_tokens 1, temperature 0. The hello server is measured "
                  "right before each worker count.\n\n" + "\n".join(lines))

    # ---- lora

    def lora(self):
        server = harness.Server(BINARY, self.fixture, 2,
                                extra=["--max-loras", "1024", "--max-cpu-loras", "1024", "--max-lora-rank", "64"])
        path = os.path.join(self.fixture, "adapters", "plain")
        lines = ["| adapters loaded | request | req/s | p50 ms | p99 ms | errors/requests | cost vs base (p50) | throughput vs base |",
                 "|---|---|---|---|---|---|---|---|"]
        loads = []
        try:
            loaded = 0
            for target in (1, 100, 1000):
                items = [{"load": {"lora_name": f"l{i}", "lora_path": path}} for i in range(loaded, target)]
                took = 0.0
                for chunk in range(0, len(items), 256):  # a batch holds at most 256 items (docs/LIMITS.md)
                    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                        json.dump(items[chunk:chunk + 256], f)
                    start = time.perf_counter()
                    value, detail = server.ctl("batch", f.name, timeout=600)
                    took += time.perf_counter() - start
                    os.unlink(f.name)
                    if detail == "timeout" or detail[0] != 0:
                        raise RuntimeError(f"ctl batch failed: {detail}")
                loads.append((len(items), took))
                loaded = target
                names = [f"l{i}" for i in range(target)]
                base = self.wrk(f"http://127.0.0.1:{server.port}/v1/completions", completion_lua(["tiny"]))
                hot = self.wrk(f"http://127.0.0.1:{server.port}/v1/completions", completion_lua(["l0"]))
                spread = self.wrk(f"http://127.0.0.1:{server.port}/v1/completions", completion_lua(names))
                models = self.wrk(f"http://127.0.0.1:{server.port}/v1/models")
                for label, r in (("base model", base), ("one adapter (l0)", hot),
                                 (f"random adapter of {target}", spread), ("GET /v1/models", models)):
                    cost = r["p50"] / base["p50"] if base["p50"] else 0
                    thr = r["rps"] / base["rps"] if base["rps"] else 0
                    same = label != "GET /v1/models"
                    lines.append(f"| {target} | {label} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                                 f"{r['errors']}/{r['total']} | {cost:.2f} | {thr:.2f} |" if same else
                                 f"| {target} | {label} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                                 f"{r['errors']}/{r['total']} | - | - |")
                print(f"  {target} adapters: base {base['rps']:.0f} req/s, hot adapter {hot['rps']:.0f}, "
                      f"spread {spread['rps']:.0f}", flush=True)
        finally:
            server.stop()
        batch = "; ".join(f"{n} loads in {t:.2f} s ({1000 * t / max(1, n):.1f} ms each)" for n, t in loads)
        self.emit("LoRA request cost vs base request cost",
                  f"lorikeet serve --workers 2, engine --max-loras 1024 --max-cpu-loras 1024; adapters: the fixture's "
                  f"`plain` (rank 8, q/v) under new names, loaded with `lorikeet ctl batch` ({batch}). "
                  f"wrk as above, POST /v1/completions max_tokens 1.\n\n" + "\n".join(lines))

    # ---- supervisor (reuses bench_supervisor.py)

    def supervisor(self):
        out = subprocess.run([sys.executable, os.path.join(ROOT, "bin/lib/bench_supervisor.py"), self.fixture],
                             capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(f"bench_supervisor.py failed: {out.stderr[-2000:]}")
        table = "\n".join(l for l in out.stdout.splitlines() if l.startswith("|"))
        migrate = next((l for l in out.stdout.splitlines() if l.startswith("net.ipv4.tcp_migrate_req")), "")
        self.emit("Supervisor: load latency, read-your-writes, respawn-to-ready, rolling restart, scale-down "
                  "(bin/bench-supervisor)",
                  "15 loads per worker count; after each 200, 3 x N fresh connections must resolve the adapter; "
                  "respawn = kill -9 of a follower until its slot is ready (median of 3); roll = SIGHUP, then "
                  f"TTOU = one worker fewer, each under 4 request loops (fresh connection per request; {migrate})."
                  "\n\n" + table)

    # ---- respawn of the leader and the engine

    def respawn(self):
        server = harness.Server(BINARY, self.fixture, 4, extra=["--max-loras", "8", "--max-cpu-loras", "64"])
        path = os.path.join(self.fixture, "adapters", "plain")
        leader, engine = [], []
        try:
            for trial in range(3):
                victim = next(w for w in server.worker_list() if w["role"] == "leader")
                start = time.perf_counter()
                os.kill(victim["pid"], signal.SIGKILL)
                while True:
                    status, _ = harness.request(server.port, "POST", "/v1/load_lora_adapter",
                                                {"lora_name": f"r{trial}", "lora_path": path}, timeout=30)
                    if status == 200:
                        break
                    time.sleep(0.01)
                leader.append((time.perf_counter() - start) * 1000)
                server.wait_ready()
            for _ in range(3):
                pid = server.engine_pid()
                start = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.005)
                while True:
                    try:
                        if harness.completion(server.port, "r0", timeout=30)[0] == 200:
                            break
                    except OSError:
                        pass
                    time.sleep(0.01)
                engine.append((time.perf_counter() - start) * 1000)
                server.wait_ready()
        finally:
            server.stop()
        lines = ["| fault (4 workers) | ready again when | median ms | trials ms |", "|---|---|---|---|",
                 f"| kill -9 leader | a new load is acknowledged (failover + commit) | {statistics.median(leader):.0f} | "
                 + ", ".join(f"{x:.0f}" for x in leader) + " |",
                 f"| kill -9 engine | an adapter request is served (engine restarted, table re-added) | "
                 f"{statistics.median(engine):.0f} | " + ", ".join(f"{x:.0f}" for x in engine) + " |"]
        self.emit("Respawn-to-ready of the leader and the engine", "\n".join(lines))

    # ---- engine (reuses bin/bench-engine)

    def engine(self):
        fixture = subprocess.run([os.path.join(ROOT, "bin/bench-engine")], capture_output=True, text=True, timeout=1800)
        args = [os.path.join(ROOT, "bin/bench-engine"), "--model", "smollm2"]
        if not self.args.llama_cpp:
            args.append("--no-llama-cpp")
        smol = subprocess.run(args, capture_output=True, text=True, timeout=3600)
        for name, out in (("bin/bench-engine", fixture), ("bin/bench-engine --model smollm2", smol)):
            if out.returncode != 0:
                raise RuntimeError(f"{name} failed: {out.stdout[-1000:]} {out.stderr[-1000:]}")
        keep = lambda text: "\n".join(l for l in text.splitlines() if l.strip() and not l.startswith("["))
        self.emit("Engine decode tokens/s (bin/bench-engine)",
                  "Fixture model (hidden 64, 2 layers), decode tokens/s per case, best of 3:\n\n```\n"
                  + keep(fixture.stdout) + "\n```\n\nDefault model, SmolLM2-135M-Instruct Q4_1 GGUF"
                  + ("" if self.args.llama_cpp else " (llama.cpp comparison skipped: `bin/bench --llama-cpp`)")
                  + ":\n\n```\n" + keep(smol.stdout) + "\n```")

    # ---- docs

    def machine(self, sampler, started, elapsed):
        model = "unknown"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        s = sampler.samples or [os.getloadavg()[0]]
        return (f"Run {started:%Y-%m-%d %H:%M} UTC, {elapsed / 60:.1f} min, commit {commit}{' (modified)' if dirty else ''}; "
                f"{os.cpu_count()} cores ({model}), shared with other work: 1-minute load average during the run "
                f"min {min(s):.1f} / mean {statistics.mean(s):.1f} / max {max(s):.1f}.")

    def write_docs(self, header):
        body = "\n\n".join([BEGIN, header] + [f"### {t}\n\n{x}" for t, x in self.sections] + [END])
        text = open(DOC).read() if os.path.exists(DOC) else "# Benchmarks\n\n" + BEGIN + "\n" + END + "\n"
        if BEGIN in text and END in text:
            text = text[:text.index(BEGIN)] + body + text[text.index(END) + len(END):]
        else:
            text = text.rstrip() + "\n\n" + body + "\n"
        with open(DOC, "w") as f:
            f.write(text)
        print(f"\nwrote {os.path.relpath(DOC, ROOT)}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="http,lora,supervisor,respawn,engine")
    parser.add_argument("--llama-cpp", action="store_true")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    bench = Bench(args)
    sampler = LoadSampler()
    sampler.start()
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.time()
    print(f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.1f}", flush=True)
    failed = []
    for section in args.only.split(","):
        print(f"== {section}", flush=True)
        try:
            getattr(bench, section)()
        except Exception as e:
            failed.append(section)
            print(f"section {section} failed: {e}", flush=True)
    sampler.running = False
    header = bench.machine(sampler, started, time.time() - t0)
    print("\n" + header)
    if not args.no_docs and bench.sections:
        bench.write_docs(header)
    if failed:
        print("failed sections: " + ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
