#!/usr/bin/env python3
"""Reference outputs for LorikeetGGUFTests, computed with well-kept PyPI libraries.

Usage: tokenizer_reference.py MODEL.gguf CORPUS.json OUT_DIR

Writes OUT_DIR/reference.json:
  encodings: [[string, ids], ...] in corpus order. A list of pairs rather than a
             {string: ids} object: Swift compares strings by canonical equivalence, so
             "cafe\u0301" and "café" would collide as dictionary keys.
  chats:     the model's own Jinja chat template rendered with jinja2 for each corpus chat
             (with and without the generation prompt).
  tensors:   {hf_name: {"shape": [...], "saved_rows": N, "file": "NAME.f32"}}: the first
             N rows (little-endian float32) of selected tensors dequantized
             with the `gguf` package and, for q_proj/k_proj, un-permuted with numpy from
             llama.cpp's RoPE row order back to Hugging Face order.

The tokenizer is Hugging Face `tokenizers` BPE rebuilt from the GGUF vocabulary and merges
with SmolLM2's pre-tokenizer (tokenizer.json of HuggingFaceTB/SmolLM2-135M-Instruct):
Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)],
and the control tokens (GGUF token type 3) added as special tokens.
"""

import json
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers


def field_value(reader, key):
    return reader.fields[key].contents()


def build_tokenizer(reader):
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    merges = field_value(reader, "tokenizer.ggml.merges")
    types = field_value(reader, "tokenizer.ggml.token_type")
    assert field_value(reader, "tokenizer.ggml.model") == "gpt2"
    assert field_value(reader, "tokenizer.ggml.pre") == "smollm"
    vocab = {tok: i for i, tok in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges])
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3]
    tok.add_special_tokens(specials)
    # Adding must not have re-numbered anything.
    for t in specials:
        assert tok.token_to_id(t.content) == vocab[t.content]
    return tok


def unpermute(w, n_head):
    # llama.cpp convert_hf_to_gguf: permute(w) = w.reshape(n_head, 2, hd/2, in).swapaxes(1, 2)
    # Inverse: view GGUF rows as (n_head, hd/2, 2) and swap back.
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def main():
    model_path, corpus_path, out_dir = sys.argv[1:4]
    reader = GGUFReader(model_path)
    corpus = json.load(open(corpus_path, encoding="utf-8"))
    tok = build_tokenizer(reader)

    encodings = [[s, tok.encode(s, add_special_tokens=False).ids] for s in corpus["strings"]]

    template = field_value(reader, "tokenizer.chat_template")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    compiled = env.from_string(template)
    chats = []
    for messages in corpus["chats"]:
        chats.append(
            {
                "messages": messages,
                "with_prompt": compiled.render(messages=messages, add_generation_prompt=True),
                "without_prompt": compiled.render(messages=messages, add_generation_prompt=False),
            }
        )

    n_head = int(field_value(reader, "llama.attention.head_count"))
    n_head_kv = int(field_value(reader, "llama.attention.head_count_kv"))
    tensors_by_name = {t.name: t for t in reader.tensors}
    wanted = {
        "blk.0.attn_q.weight": ("model.layers.0.self_attn.q_proj.weight", n_head),
        "blk.0.attn_k.weight": ("model.layers.0.self_attn.k_proj.weight", n_head_kv),
        "blk.0.attn_v.weight": ("model.layers.0.self_attn.v_proj.weight", None),
        "blk.29.attn_q.weight": ("model.layers.29.self_attn.q_proj.weight", n_head),
        "blk.29.attn_k.weight": ("model.layers.29.self_attn.k_proj.weight", n_head_kv),
        "blk.7.ffn_down.weight": ("model.layers.7.mlp.down_proj.weight", None),
        "blk.3.ffn_norm.weight": ("model.layers.3.post_attention_layernorm.weight", None),
        "token_embd.weight": ("model.embed_tokens.weight", None),
    }
    tensors = {}
    for gguf_name, (hf_name, heads) in wanted.items():
        t = tensors_by_name[gguf_name]
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(d) for d in reversed(t.shape)]
        w = w.reshape(shape)
        if heads is not None:
            w = unpermute(w, heads)
        # The embedding is large: keep its first rows only.
        saved_rows = min(shape[0], 512) if len(shape) == 2 else shape[0]
        file = hf_name + ".f32"
        w[:saved_rows].astype("<f4").tofile(os.path.join(out_dir, file))
        tensors[hf_name] = {"shape": shape, "saved_rows": saved_rows, "file": file}

    out = {"encodings": encodings, "chats": chats, "tensors": tensors, "template": template}
    tmp = os.path.join(out_dir, "reference.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=True)
    os.replace(tmp, os.path.join(out_dir, "reference.json"))


if __name__ == "__main__":
    main()
