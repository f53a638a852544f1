#!/usr/bin/env python3
"""Write a tiny random Llama model, PEFT LoRA adapters and a numpy reference.

Usage: make_tiny_llama.py OUT_DIR

Needs numpy and safetensors (no torch). Deterministic: a fixed seed gives the
same bytes on every run. Layout of OUT_DIR:

  model/                 config.json + model.safetensors (embed_tokens stored as F16)
  adapters/plain/        r=8, q_proj+v_proj (target_modules as a list)
  adapters/rslora/       r=4, use_rslora, target_modules "all-linear"
  adapters/rank32/       r=32, target_modules as a regex string
  broken/<case>/         adapters that the engine must refuse
  reference.json         prompt, last-position logits and 16 greedy tokens
                         for the base model and each adapter
  sampling.json          vLLM's sampling formulas re-implemented in numpy on the
                         base model: log-softmax log probabilities (prompt and
                         greedy steps), processed logits (min_tokens, logit_bias,
                         penalties), the tokens that survive min_p / top-k / top-p,
                         and greedy decoding under penalties

The numpy forward pass below is the reference the Swift engine is checked
against: HF Llama (RMSNorm, rotate_half RoPE, GQA, SwiGLU), fp32, with LoRA
applied unmerged as y = W x + s * B (A x).
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
INTER = 128
VOCAB = 258  # 256 bytes + <s> + </s>
BOS, EOS = 256, 257
THETA = 10000.0
EPS = 1e-5
CONTEXT = 256
PROMPT = "Hello, Lorikeet!"
GREEDY_STEPS = 16

LINEAR = {
    "q_proj": ("self_attn", HEADS * HEAD_DIM, HIDDEN),
    "k_proj": ("self_attn", KV_HEADS * HEAD_DIM, HIDDEN),
    "v_proj": ("self_attn", KV_HEADS * HEAD_DIM, HIDDEN),
    "o_proj": ("self_attn", HIDDEN, HEADS * HEAD_DIM),
    "gate_proj": ("mlp", INTER, HIDDEN),
    "up_proj": ("mlp", INTER, HIDDEN),
    "down_proj": ("mlp", HIDDEN, INTER),
}


def module_path(layer, name):
    return f"model.layers.{layer}.{LINEAR[name][0]}.{name}"


def make_model(rng):
    w = {}
    # Stored as F16: keep the rounded values so the reference matches the file.
    w["model.embed_tokens.weight"] = rng.normal(0, 1.0, (VOCAB, HIDDEN)).astype(np.float16).astype(np.float32)
    for l in range(LAYERS):
        for name, (_, out_f, in_f) in LINEAR.items():
            w[module_path(l, name) + ".weight"] = rng.normal(0, 1.0 / np.sqrt(in_f), (out_f, in_f)).astype(np.float32)
        w[f"model.layers.{l}.input_layernorm.weight"] = (1.0 + 0.1 * rng.normal(size=HIDDEN)).astype(np.float32)
        w[f"model.layers.{l}.post_attention_layernorm.weight"] = (1.0 + 0.1 * rng.normal(size=HIDDEN)).astype(np.float32)
    w["model.norm.weight"] = (1.0 + 0.1 * rng.normal(size=HIDDEN)).astype(np.float32)
    w["lm_head.weight"] = rng.normal(0, 2.0 / np.sqrt(HIDDEN), (VOCAB, HIDDEN)).astype(np.float32)
    return w


def rmsnorm(x, w):
    return (x / np.sqrt(np.mean(x.astype(np.float64) ** 2) + EPS)).astype(np.float32) * w


def rope(x, pos):
    # x: [heads, HEAD_DIM]; HF rotate_half layout: pairs (i, i + HEAD_DIM/2).
    half = HEAD_DIM // 2
    inv = 1.0 / (THETA ** (np.arange(0, HEAD_DIM, 2, dtype=np.float64) / HEAD_DIM))
    ang = pos * inv
    cos, sin = np.cos(ang), np.sin(ang)
    x1, x2 = x[:, :half].astype(np.float64), x[:, half:].astype(np.float64)
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=1).astype(np.float32)


def linear(w, adapter, layer, name, x):
    y = w[module_path(layer, name) + ".weight"] @ x
    if adapter is not None:
        key = module_path(layer, name)
        if key in adapter["A"]:
            y = y + adapter["scale"] * (adapter["B"][key] @ (adapter["A"][key] @ x))
    return y


def forward(w, tokens, adapter):
    """Returns logits for every position (list of arrays)."""
    ks = [[] for _ in range(LAYERS)]
    vs = [[] for _ in range(LAYERS)]
    out = []
    group = HEADS // KV_HEADS
    for pos, tok in enumerate(tokens):
        h = w["model.embed_tokens.weight"][tok].copy()
        for l in range(LAYERS):
            x = rmsnorm(h, w[f"model.layers.{l}.input_layernorm.weight"])
            q = linear(w, adapter, l, "q_proj", x).reshape(HEADS, HEAD_DIM)
            k = linear(w, adapter, l, "k_proj", x).reshape(KV_HEADS, HEAD_DIM)
            v = linear(w, adapter, l, "v_proj", x).reshape(KV_HEADS, HEAD_DIM)
            q, k = rope(q, pos), rope(k, pos)
            ks[l].append(k)
            vs[l].append(v)
            K = np.stack(ks[l])  # [T, KV, D]
            V = np.stack(vs[l])
            att = np.zeros((HEADS, HEAD_DIM), dtype=np.float32)
            for hd in range(HEADS):
                kv = hd // group
                s = (K[:, kv, :] @ q[hd]) / np.sqrt(HEAD_DIM)
                s = np.exp(s - s.max())
                s = s / s.sum()
                att[hd] = s @ V[:, kv, :]
            h = h + linear(w, adapter, l, "o_proj", att.reshape(-1))
            x = rmsnorm(h, w[f"model.layers.{l}.post_attention_layernorm.weight"])
            g = linear(w, adapter, l, "gate_proj", x)
            u = linear(w, adapter, l, "up_proj", x)
            act = g / (1.0 + np.exp(-g)) * u
            h = h + linear(w, adapter, l, "down_proj", act)
        x = rmsnorm(h, w["model.norm.weight"])
        out.append((w["lm_head.weight"] @ x).astype(np.float32))
    return out


def greedy(w, prompt, adapter, steps):
    """Greedy tokens plus the smallest top-1/top-2 logit margin seen, so a
    fixture whose float32 rounding could flip an argmax is caught here."""
    toks = list(prompt)
    gen = []
    margin = float("inf")
    for _ in range(steps):
        logits = forward(w, toks, adapter)[-1]
        top2 = np.sort(logits)[-2:]
        margin = min(margin, float(top2[1] - top2[0]))
        t = int(np.argmax(logits))
        gen.append(t)
        toks.append(t)
    return gen, margin


# ---- vLLM's sampling formulas (numpy), the reference for the engine's sampler ----
# vllm/v1/sample/sampler.py (order), vllm/model_executor/layers/utils.py
# (apply_penalties), vllm/v1/sample/logits_processor/builtin.py (min_tokens,
# logit_bias, min_p), vllm/v1/sample/ops/topk_topp_sampler.py (apply_top_k_top_p).

def log_softmax(logits):
    x = logits.astype(np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def top_logprobs(logits, n):
    lp = log_softmax(logits)
    order = sorted(range(len(lp)), key=lambda i: (-lp[i], i))[:n]
    return [[int(i), float(lp[i])] for i in order]


def vllm_process(logits, prompt, output, min_tokens, stop_ids, bias, rep, freq, pres):
    """min_tokens, then logit_bias, then apply_penalties (repetition over prompt and
    output, frequency and presence over output), in float32 as vLLM."""
    l = logits.astype(np.float32).copy()
    if len(output) < min_tokens:
        l[list(stop_ids)] = -np.inf
    for t, b in bias.items():
        l[t] += np.float32(b)
    v = len(l)
    prompt_mask = np.zeros(v, bool)
    prompt_mask[list(prompt)] = True
    counts = np.bincount(np.array(output, dtype=np.int64), minlength=v)[:v].astype(np.float32)
    output_mask = counts > 0
    penalties = np.where(prompt_mask | output_mask, np.float32(rep), np.float32(1.0)).astype(np.float32)
    l = np.where(l > 0, l / penalties, l * penalties).astype(np.float32)
    l -= np.float32(freq) * counts
    l -= np.float32(pres) * output_mask.astype(np.float32)
    return l


def vllm_filter(logits, temperature, min_p, k, p):
    """Temperature, then min_p (MinPLogitsProcessor), then apply_top_k_top_p."""
    l = logits.astype(np.float32) / np.float32(temperature)
    if min_p > 0:
        probs = np.exp(l - l.max())
        probs /= probs.sum()
        l = np.where(probs < min_p * probs.max(), -np.inf, l)
    order = np.argsort(l, kind="stable")  # ascending
    ls = l[order].copy()
    if k > 0:
        threshold = ls[len(ls) - k]
        ls[ls < threshold] = -np.inf
    if 0 < p < 1:
        e = np.exp(ls.astype(np.float64) - ls.max())
        probs_sum = np.cumsum(e / e.sum())
        mask = probs_sum <= 1 - p
        mask[-1] = False
        ls[mask] = -np.inf
    out = np.empty_like(l)
    out[order] = ls
    return out


def sampling_reference(w, prompt):
    ref = {}
    logits = forward(w, prompt, None)
    ref["prompt_logprobs"] = [
        {"token": int(prompt[i]), "logprob": float(log_softmax(logits[i - 1])[prompt[i]]),
         "top": top_logprobs(logits[i - 1], 5)}
        for i in range(1, len(prompt))
    ]
    toks, steps = list(prompt), []
    for _ in range(8):
        last = forward(w, toks, None)[-1]
        t = int(np.argmax(last))
        steps.append({"token": t, "logprob": float(log_softmax(last)[t]), "top": top_logprobs(last, 5)})
        toks.append(t)
    ref["greedy_logprobs"] = steps

    base = logits[-1]
    output = [101, 32, 101, 65, 101, 0]
    cases = []
    for name, kw in [
        ("penalties", dict(min_tokens=0, bias={}, rep=1.3, freq=0.4, pres=0.7)),
        ("negative", dict(min_tokens=0, bias={}, rep=0.8, freq=-0.5, pres=-1.5)),
        ("bias_min_tokens", dict(min_tokens=10, bias={65: 5.0, 66: -100.0, 3: 0.25}, rep=1.0, freq=0.0, pres=0.0)),
        ("all", dict(min_tokens=7, bias={101: -2.0, 120: 3.5}, rep=1.15, freq=0.3, pres=0.2)),
    ]:
        l = vllm_process(base, prompt, output, stop_ids=[EOS], **kw)
        cases.append({
            "name": name, "min_tokens": kw["min_tokens"], "bias": [[t, b] for t, b in kw["bias"].items()],
            "repetition_penalty": kw["rep"], "frequency_penalty": kw["freq"], "presence_penalty": kw["pres"],
            "masked": [int(i) for i in np.where(np.isinf(l))[0]],
            "logits": [0.0 if np.isinf(x) else float(x) for x in l],
        })
    ref["output_tokens"] = output
    ref["processed"] = cases

    filters = []
    for t, min_p, k, p in [(0.8, 0.05, 0, 1.0), (1.0, 0.0, 10, 1.0), (0.7, 0.0, 0, 0.9), (1.3, 0.02, 20, 0.8),
                           (1.0, 0.0, 0, 0.5), (2.0, 0.1, 0, 0.95)]:
        l = vllm_filter(base, t, min_p, k, p)
        kept = np.where(~np.isinf(l))[0]
        e = np.exp(l[kept].astype(np.float64) - l[kept].max())
        filters.append({"temperature": t, "min_p": min_p, "top_k": k, "top_p": p,
                        "kept": [int(i) for i in kept], "probs": [float(x) for x in e / e.sum()]})
    ref["filters"] = filters

    # Greedy decoding with every processor on, 16 steps (the margin keeps float32
    # rounding from flipping an argmax).
    params = dict(min_tokens=4, stop_ids=[EOS], bias={176: -2.0, 101: 1.5}, rep=1.5, freq=0.8, pres=0.5)
    toks, out, margin = list(prompt), [], float("inf")
    for _ in range(16):
        l = vllm_process(forward(w, toks, None)[-1], prompt, out, **params)
        top2 = np.sort(l)[-2:]
        margin = min(margin, float(top2[1] - top2[0]))
        t = int(np.argmax(l))
        out.append(t)
        toks.append(t)
    if margin < 1e-2:
        sys.exit(f"penalized greedy margin {margin} too small; change the parameters")
    ref["penalized_greedy"] = {"min_tokens": 4, "bias": [[176, -2.0], [101, 1.5]], "repetition_penalty": 1.5,
                               "frequency_penalty": 0.8, "presence_penalty": 0.5, "tokens": out, "margin": margin}
    return ref


def make_adapter(rng, r, alpha, modules, rslora, b_scale):
    a, b = {}, {}
    tensors = {}
    for l in range(LAYERS):
        for name in modules:
            _, out_f, in_f = LINEAR[name]
            key = module_path(l, name)
            A = rng.normal(0, 1.0 / np.sqrt(in_f), (r, in_f)).astype(np.float32)
            B = rng.normal(0, b_scale / np.sqrt(r), (out_f, r)).astype(np.float32)
            a[key], b[key] = A, B
            tensors[f"base_model.model.{key}.lora_A.weight"] = A
            tensors[f"base_model.model.{key}.lora_B.weight"] = B
    scale = alpha / np.sqrt(r) if rslora else alpha / r
    return {"A": a, "B": b, "scale": float(scale)}, tensors


def adapter_config(r, alpha, targets, **extra):
    cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "tiny-llama",
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": targets,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    cfg.update(extra)
    return cfg


def write_adapter(path, cfg, tensors):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    if tensors is not None:
        save_file(tensors, os.path.join(path, "adapter_model.safetensors"))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_tiny_llama.py OUT_DIR")
    out = sys.argv[1]
    rng = np.random.default_rng(7)
    w = make_model(rng)

    mdir = os.path.join(out, "model")
    os.makedirs(mdir, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": VOCAB,
        "max_position_embeddings": CONTEXT,
        "rms_norm_eps": EPS,
        "rope_theta": THETA,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "torch_dtype": "float32",
    }
    with open(os.path.join(mdir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    stored = dict(w)
    stored["model.embed_tokens.weight"] = w["model.embed_tokens.weight"].astype(np.float16)
    save_file(stored, os.path.join(mdir, "model.safetensors"), metadata={"format": "pt"})

    adapters = {}
    specs = {
        "plain": dict(r=8, alpha=16, modules=["q_proj", "v_proj"], targets=["q_proj", "v_proj"], rslora=False),
        "rslora": dict(r=4, alpha=8, modules=list(LINEAR), targets="all-linear", rslora=True),
        "rank32": dict(r=32, alpha=32, modules=["q_proj", "o_proj", "down_proj"],
                       targets=r".*\.(q_proj|o_proj|down_proj)", rslora=False),
    }
    adapter_tensors = {}
    for name, s in specs.items():
        ad, tensors = make_adapter(rng, s["r"], s["alpha"], s["modules"], s["rslora"], b_scale=1.0)
        adapters[name] = ad
        adapter_tensors[name] = tensors
        write_adapter(os.path.join(out, "adapters", name),
                      adapter_config(s["r"], s["alpha"], s["targets"], use_rslora=s["rslora"]), tensors)

    # Adapters the engine must refuse.
    plain = specs["plain"]
    pt = adapter_tensors["plain"]
    broken = os.path.join(out, "broken")
    base_cfg = lambda **kw: adapter_config(plain["r"], plain["alpha"], plain["targets"], **kw)
    write_adapter(os.path.join(broken, "dora"), base_cfg(use_dora=True), pt)
    write_adapter(os.path.join(broken, "modules_to_save"), base_cfg(modules_to_save=["lm_head"]), pt)
    write_adapter(os.path.join(broken, "bias"), base_cfg(bias="all"), pt)
    write_adapter(os.path.join(broken, "unknown_target"),
                  adapter_config(plain["r"], plain["alpha"], ["q_proj", "x_proj"]), pt)
    extra = dict(pt)
    extra["base_model.model.model.layers.0.mlp.x_proj.lora_A.weight"] = np.zeros((8, HIDDEN), np.float32)
    extra["base_model.model.model.layers.0.mlp.x_proj.lora_B.weight"] = np.zeros((HIDDEN, 8), np.float32)
    write_adapter(os.path.join(broken, "unknown_tensor"), base_cfg(), extra)
    bad = dict(pt)
    bad["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"] = np.zeros((HIDDEN, 8), np.float32)
    write_adapter(os.path.join(broken, "shape_mismatch"), base_cfg(), bad)
    write_adapter(os.path.join(broken, "missing_file"), base_cfg(), None)
    write_adapter(os.path.join(broken, "truncated"), base_cfg(), pt)
    p = os.path.join(broken, "truncated", "adapter_model.safetensors")
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.truncate(size - 100)
    write_adapter(os.path.join(broken, "no_tensors"), base_cfg(), None)
    header = b"{}" + b" " * 6
    with open(os.path.join(broken, "no_tensors", "adapter_model.safetensors"), "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
    write_adapter(os.path.join(broken, "bad_json"), base_cfg(), pt)
    with open(os.path.join(broken, "bad_json", "adapter_config.json"), "w") as f:
        f.write("{\"r\": 8, ")

    prompt = [BOS] + list(PROMPT.encode("utf-8"))
    ref = {"prompt": PROMPT, "prompt_tokens": prompt, "greedy_steps": GREEDY_STEPS, "cases": {}}
    for name, ad in [("base", None)] + list(adapters.items()):
        logits = forward(w, prompt, ad)[-1]
        tokens, margin = greedy(w, prompt, ad, GREEDY_STEPS)
        if margin < 1e-2:
            sys.exit(f"{name}: greedy margin {margin} too small for an exact-token test; change the seed")
        ref["cases"][name] = {
            "logits": [float(x) for x in logits],
            "greedy": tokens,
            "min_margin": margin,
            "scale": None if ad is None else ad["scale"],
        }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f)
    with open(os.path.join(out, "sampling.json"), "w") as f:
        json.dump(sampling_reference(w, prompt), f)
    for name, c in ref["cases"].items():
        print(name, c["greedy"], "min margin %.4f" % c["min_margin"])


if __name__ == "__main__":
    main()
