"""Before/after benchmark of two `lorikeet` binaries in one run (bin/bench-compare).

For each round, each binary in turn (A B A B ...): `lorikeet serve --workers 2` on the
fixture model, wrk on GET /v1/models, then 40 adapter loads (the commit path: route to the
leader, engine add, persist, fan-out to every worker's ack) timed from the client. The
machine is shared and noisy, so the two binaries alternate and the report gives medians
over rounds and the ratio after/before for each number.
Usage: bench_compare.py BEFORE_BINARY AFTER_BINARY [--rounds N] [--duration S] [--label-before X] [--label-after Y]
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from bench import Bench  # noqa: E402


def measure(binary, fixture, bench):
    server = harness.Server(binary, fixture, 2, extra=("--max-loras", "64", "--max-cpu-loras", "64"))
    try:
        models = bench.wrk(f"http://127.0.0.1:{server.port}/v1/models")
        path = os.path.join(fixture, "adapters", "plain")
        loads = []
        for index in range(40):
            start = time.perf_counter()
            status, _ = harness.request(server.port, "POST", "/v1/load_lora_adapter", {"lora_name": f"c{index}", "lora_path": path})
            if status != 200:
                raise RuntimeError(f"load returned {status}")
            loads.append((time.perf_counter() - start) * 1000)
        return models["rps"], statistics.median(loads)
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--label-before", default="before")
    parser.add_argument("--label-after", default="after")
    args = parser.parse_args()
    bench = Bench(args)
    results = {"before": [], "after": []}
    for round_index in range(args.rounds):
        for key, binary in (("before", args.before), ("after", args.after)):
            rps, load = measure(binary, bench.fixture, bench)
            results[key].append((rps, load))
            print(f"  round {round_index + 1} {key}: GET /v1/models {rps:.0f} req/s, load p50 {load:.1f} ms", flush=True)
    before_rps = statistics.median(r for r, _ in results["before"])
    after_rps = statistics.median(r for r, _ in results["after"])
    before_load = statistics.median(l for _, l in results["before"])
    after_load = statistics.median(l for _, l in results["after"])
    print(f"\n| number ({args.rounds} alternating rounds, medians) | {args.label_before} | {args.label_after} | after/before |")
    print("|---|---|---|---|")
    print(f"| GET /v1/models req/s (2 workers, wrk -c{args.connections} -d{args.duration}s) | {before_rps:.0f} | {after_rps:.0f} | {after_rps / before_rps:.2f} |")
    print(f"| adapter load (commit) p50 ms, 2 workers | {before_load:.1f} | {after_load:.1f} | {after_load / before_load:.2f} |")


if __name__ == "__main__":
    main()
