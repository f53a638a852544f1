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


def main():
    model_path, report_path = sys.argv[1], sys.argv[2]
    with open(report_path) as f:
        report = json.load(f)
    prompt = report["promptTokens"]
    decode = report["decodeTokens"]
    rows = []
    for ours in report["results"]:
        threads = ours["threads"]
        llm = llama_cpp.Llama(
            model_path=model_path, n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
        measure(llm, prompt, 8)  # warm-up
        runs = [measure(llm, prompt, decode) for _ in range(3)]
        ttft = min(r[0] for r in runs)
        rate = max(r[1] for r in runs)
        rows.append((threads, ours["decodeTokensPerSecond"], rate, ours["ttftMs"], ttft))
        del llm
    print()
    print(f"SmolLM2-135M-Instruct Q4_1, greedy, {len(prompt)}-token prompt, {decode} decode tokens, best of 3")
    print(f"lorikeet weights: {report['storage']} ({report['weightMiB']:.0f} MiB, peak RSS {report['rssMiB']:.0f} MiB); "
          f"llama.cpp: llama-cpp-python {llama_cpp.__version__} built with GGML_NATIVE")
    header = f"{'threads':>7} | {'lorikeet tok/s':>14} {'llama.cpp tok/s':>15} {'ratio':>6} | {'lorikeet TTFT':>13} {'llama.cpp TTFT':>14} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for threads, ours_rate, rate, ours_ttft, ttft in rows:
        print(f"{threads:>7} | {ours_rate:>14.1f} {rate:>15.1f} {ours_rate / rate:>6.2f} | "
              f"{ours_ttft:>10.1f} ms {ttft:>11.1f} ms {ttft / ours_ttft:>6.2f}")
    print("(ratio = lorikeet / llama.cpp for tokens/s and llama.cpp / lorikeet for TTFT: above 1 means lorikeet is faster)")


if __name__ == "__main__":
    main()
