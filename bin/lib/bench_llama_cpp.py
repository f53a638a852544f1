#!/usr/bin/env python3
"""llama.cpp peer for `bin/bench-engine --model smollm2` (a benchmark peer, never a dependency).

Reads the JSON written by `lorikeet-bench-engine --model smollm2 --json`, runs llama.cpp
(llama-cpp-python) on the same GGUF with the same 100 prompt token ids, greedy, at the same
thread counts, and prints both side by side with the lorikeet/llama.cpp ratios.
"""
import json
import sys
import time

import llama_cpp
import numpy as np


def measure(llm, prompt, decode_tokens):
    """(time to first token in ms, decode tokens/s), greedy, like the engine's request."""
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    ttft = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    for _ in range(decode_tokens - 1):
        llm.eval([token])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    rate = (decode_tokens - 1) / (time.perf_counter() - start)
    return ttft, rate


def measure_all(model_path, report):
    """llama.cpp at each thread count of a lorikeet report: [(threads, ttft ms, tokens/s)]."""
    prompt = report["promptTokens"]
    decode = report["decodeTokens"]
    rows = []
    for ours in report["results"]:
        threads = ours["threads"]
        llm = llama_cpp.Llama(
            model_path=model_path, n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
        measure(llm, prompt, 8)  # warm-up
        runs = [measure(llm, prompt, decode) for _ in range(3)]
        rows.append({"threads": threads, "ttftMs": min(r[0] for r in runs), "decodeTokensPerSecond": max(r[1] for r in runs)})
        del llm
    return rows


def table(pairs):
    """Prints lorikeet vs llama.cpp: each round (measured back to back, so the machine's load is
    alike) and the best of all rounds for each side."""
    report = pairs[0][0]
    prompt, decode = report["promptTokens"], report["decodeTokens"]
    print()
    print(f"SmolLM2-135M-Instruct Q4_1, greedy, {len(prompt)}-token prompt, {decode} decode tokens; "
          f"{len(pairs)} round(s), lorikeet then llama.cpp in each, best of 3 per side per round")
    print(f"lorikeet weights: {report['storage']} ({report['weightMiB']:.0f} MiB, peak RSS "
          f"{max(p[0]['rssMiB'] for p in pairs):.0f} MiB); llama.cpp: llama-cpp-python {llama_cpp.__version__} built with GGML_NATIVE")
    header = f"{'threads':>7} {'round':>6} | {'lorikeet tok/s':>14} {'llama.cpp tok/s':>15} {'ratio':>6} | {'lorikeet TTFT':>13} {'llama.cpp TTFT':>14} {'ratio':>6}"
    print(header)
    print("-" * len(header))

    def line(threads, label, ours_rate, rate, ours_ttft, ttft):
        print(f"{threads:>7} {label:>6} | {ours_rate:>14.1f} {rate:>15.1f} {ours_rate / rate:>6.2f} | "
              f"{ours_ttft:>10.1f} ms {ttft:>11.1f} ms {ttft / ours_ttft:>6.2f}")

    for i, ours in enumerate(report["results"]):
        threads = ours["threads"]
        ours_rows = [p[0]["results"][i] for p in pairs]
        theirs_rows = [p[1][i] for p in pairs]
        if len(pairs) > 1:
            for r, (o, t) in enumerate(zip(ours_rows, theirs_rows)):
                line(threads, str(r + 1), o["decodeTokensPerSecond"], t["decodeTokensPerSecond"], o["ttftMs"], t["ttftMs"])
        line(threads, "best", max(o["decodeTokensPerSecond"] for o in ours_rows),
             max(t["decodeTokensPerSecond"] for t in theirs_rows), min(o["ttftMs"] for o in ours_rows),
             min(t["ttftMs"] for t in theirs_rows))
    print("(ratio = lorikeet / llama.cpp for tokens/s and llama.cpp / lorikeet for TTFT: above 1 means lorikeet is faster)")


def main():
    # measure MODEL REPORT OUT: llama.cpp for one lorikeet report, written to OUT (one round).
    # table REPORT OUT [REPORT OUT ...]: the side-by-side table over every round.
    # MODEL REPORT: one round, measured and printed.
    if sys.argv[1] == "measure":
        with open(sys.argv[3]) as f:
            report = json.load(f)
        with open(sys.argv[4], "w") as f:
            json.dump(measure_all(sys.argv[2], report), f)
    elif sys.argv[1] == "table":
        pairs = []
        for report_path, out_path in zip(sys.argv[2::2], sys.argv[3::2]):
            with open(report_path) as f, open(out_path) as g:
                pairs.append((json.load(f), json.load(g)))
        table(pairs)
    else:
        with open(sys.argv[2]) as f:
            report = json.load(f)
        table([(report, measure_all(sys.argv[1], report))])


if __name__ == "__main__":
    main()
