#!/usr/bin/env python3
"""Reference for LoRA on GGUF weights: writes a PEFT adapter (r=4 on q/k/v/o_proj, random
small A and B) and the last-position logits of a numpy Llama forward pass, base and with the
adapter, computed in float64 on the weights dequantized by the `gguf` package.

Usage: gguf_lora_reference.py MODEL.gguf OUT_DIR TOKEN_ID...

Q and K come out of llama.cpp's converter with rows permuted for its RoPE layout; they are
permuted back to the Hugging Face layout with the exact inverse of convert_hf_to_gguf.py's
`permute` (HF rotate_half RoPE then applies, and so does a PEFT adapter trained on the HF model).

Writes OUT_DIR/adapter/{adapter_config.json,adapter_model.safetensors},
OUT_DIR/base_logits.f32, OUT_DIR/lora_logits.f32 (little-endian float32) and OUT_DIR/info.json.
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import save_file

R, ALPHA = 4, 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def field(reader, key):
    f = reader.fields[key]
    return f.parts[f.data[0]][0]


def unpermute(w, n_head):
    # convert_hf_to_gguf.py: w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def main():
    path, out = sys.argv[1], sys.argv[2]
    tokens = [int(t) for t in sys.argv[3:]]
    reader = GGUFReader(path)
    n_layer = int(field(reader, "llama.block_count"))
    n_head = int(field(reader, "llama.attention.head_count"))
    n_kv = int(field(reader, "llama.attention.head_count_kv"))
    hidden = int(field(reader, "llama.embedding_length"))
    theta = float(field(reader, "llama.rope.freq_base"))
    eps = float(field(reader, "llama.attention.layer_norm_rms_epsilon"))
    head_dim = hidden // n_head
    w = {}
    for t in reader.tensors:
        v = dequantize(t.data, t.tensor_type).astype(np.float64)
        if t.name.endswith("attn_q.weight"):
            v = unpermute(v, n_head)
        elif t.name.endswith("attn_k.weight"):
            v = unpermute(v, n_kv)
        w[t.name] = v

    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
    rng = np.random.default_rng(20240611)
    adapter, tensors = {}, {}
    for l in range(n_layer):
        for m in TARGETS:
            out_f, in_f = w[f"blk.{l}.{names[m]}.weight"].shape
            A = rng.normal(0, 1.0 / np.sqrt(in_f), (R, in_f)).astype(np.float32)
            B = rng.normal(0, 0.05, (out_f, R)).astype(np.float32)
            adapter[(l, m)] = (A.astype(np.float64), B.astype(np.float64))
            key = f"base_model.model.model.layers.{l}.self_attn.{m}"
            tensors[f"{key}.lora_A.weight"] = A
            tensors[f"{key}.lora_B.weight"] = B
    scale = ALPHA / R
    os.makedirs(os.path.join(out, "adapter"), exist_ok=True)
    save_file(tensors, os.path.join(out, "adapter", "adapter_model.safetensors"))
    with open(os.path.join(out, "adapter", "adapter_config.json"), "w") as f:
        json.dump({
            "peft_type": "LORA", "task_type": "CAUSAL_LM",
            "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "r": R, "lora_alpha": ALPHA, "lora_dropout": 0.0, "target_modules": TARGETS, "bias": "none",
            "use_rslora": False, "use_dora": False, "modules_to_save": None, "fan_in_fan_out": False,
            "inference_mode": True,
        }, f, indent=2)

    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    pos = np.arange(len(tokens), dtype=np.float64)
    ang = np.outer(pos, inv_freq)
    cos = np.concatenate([np.cos(ang), np.cos(ang)], axis=1)
    sin = np.concatenate([np.sin(ang), np.sin(ang)], axis=1)

    def rmsnorm(x, g):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g

    def rope(x):  # x: [T, heads, head_dim], HF rotate_half
        half = head_dim // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos[:, None, :] + rot * sin[:, None, :]

    def forward(use_adapter):
        T = len(tokens)
        h = w["token_embd.weight"][tokens]
        mask = np.triu(np.full((T, T), -np.inf), 1)
        for l in range(n_layer):
            def lin(m, x):
                y = x @ w[f"blk.{l}.{names[m] if m in names else m}.weight"].T
                if use_adapter and (l, m) in adapter:
                    A, B = adapter[(l, m)]
                    y = y + scale * (x @ A.T) @ B.T
                return y
            x = rmsnorm(h, w[f"blk.{l}.attn_norm.weight"])
            q = rope(lin("q_proj", x).reshape(T, n_head, head_dim))
            k = rope(lin("k_proj", x).reshape(T, n_kv, head_dim))
            v = lin("v_proj", x).reshape(T, n_kv, head_dim)
            group = n_head // n_kv
            att = np.empty((T, n_head, head_dim))
            for hd in range(n_head):
                s = q[:, hd, :] @ k[:, hd // group, :].T / np.sqrt(head_dim) + mask
                s = np.exp(s - s.max(axis=-1, keepdims=True))
                s /= s.sum(axis=-1, keepdims=True)
                att[:, hd, :] = s @ v[:, hd // group, :]
            h = h + lin("o_proj", att.reshape(T, n_head * head_dim))
            x = rmsnorm(h, w[f"blk.{l}.ffn_norm.weight"])
            g = x @ w[f"blk.{l}.ffn_gate.weight"].T
            u = x @ w[f"blk.{l}.ffn_up.weight"].T
            h = h + (g / (1 + np.exp(-g)) * u) @ w[f"blk.{l}.ffn_down.weight"].T
        x = rmsnorm(h[-1], w["output_norm.weight"])
        out_w = w.get("output.weight", w["token_embd.weight"])
        return x @ out_w.T

    base = forward(False)
    lora = forward(True)
    base.astype("<f4").tofile(os.path.join(out, "base_logits.f32"))
    lora.astype("<f4").tofile(os.path.join(out, "lora_logits.f32"))
    with open(os.path.join(out, "info.json"), "w") as f:
        json.dump({"tokens": tokens, "scale": scale, "base_argmax": int(base.argmax()), "lora_argmax": int(lora.argmax()),
                   "relative_change": float(np.linalg.norm(lora - base) / np.linalg.norm(base))}, f)


if __name__ == "__main__":
    main()
