"""Writes the seed corpora of the format fuzz targets: http-json, lora-config,
safetensors, gguf (fuzz/corpus/<target>/). Small files only.

Run with the repo's venv: .venv/bin/python fuzz/make_format_seeds.py
"""
import json
import os
import tempfile

import numpy as np
from safetensors.numpy import save
import gguf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(target, name, data):
    directory = os.path.join(ROOT, "fuzz", "corpus", target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# --- http-json: request bodies of every route that takes one
bodies = [
    {"model": "tiny", "prompt": "Hello", "max_tokens": 1, "temperature": 0},
    {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 4, "stop": ["\n", "x"], "seed": 7, "top_p": 0.9, "top_k": 5,
     "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True, "stop_token_ids": [2],
     "return_token_ids": True, "n": 1, "user": "u"},
    {"model": "sql", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi \u00e9\u4e2d"},
                                   {"role": "assistant", "content": [{"type": "text", "text": "yo"}]}],
     "max_completion_tokens": 3, "temperature": 1.5e-1},
    {"lora_name": "sql", "lora_path": "/data/lora/sql", "load_inplace": False, "pinned": True, "base_model_name": "tiny"},
    {"lora_name": "sql", "lora_int_id": 3},
]
for i, body in enumerate(bodies):
    write("http-json", f"seed-{i}", json.dumps(body))
write("http-json", "seed-escapes", r'{"prompt":"\ud83d\ude00\u0000\"\\\/\b\f\n\r\t","max_tokens":-0,"temperature":1E+2}')
write("http-json", "seed-nested", "[" * 70 + "]" * 70)
write("http-json", "seed-numbers", '[0,-1,9223372036854775807,9223372036854775808,1e308,-1.5e-300,0.5]')

# --- lora-config: adapter_config.json variants (the tiny fixture model is the base)
base = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
        "bias": "none", "use_rslora": False, "use_dora": False, "modules_to_save": None, "fan_in_fan_out": False}
variants = [
    {},
    {"r": 32, "lora_alpha": 32, "target_modules": ".*\\.(q_proj|o_proj|down_proj)"},
    {"r": 4, "target_modules": "all-linear", "use_rslora": True},
    {"target_modules": ["model.layers.0.self_attn.q_proj", "mlp.up_proj"], "rank_pattern": {}, "alpha_pattern": {}},
    {"modules_to_save": ["lm_head"]},
    {"use_dora": True},
    {"bias": "all"},
    {"target_modules": ["nope"]},
    {"r": 0},
    {"lora_alpha": None, "peft_type": "IA3"},
]
for i, change in enumerate(variants):
    write("lora-config", f"seed-{i}", json.dumps({**base, **change}))

# --- safetensors: small files, every dtype, and LoRA tensors shaped for the fixture model
rng = np.random.default_rng(1)
write("safetensors", "seed-dtypes", save({
    "a": rng.standard_normal((2, 3)).astype(np.float32),
    "b": rng.standard_normal((4,)).astype(np.float16),
    "c": np.zeros((0, 5), dtype=np.float32),
}, metadata={"format": "pt"}))
prefix = "base_model.model.model.layers.0.self_attn.q_proj"
write("safetensors", "seed-lora", save({
    f"{prefix}.lora_A.weight": rng.standard_normal((8, 64)).astype(np.float16),
    f"{prefix}.lora_B.weight": rng.standard_normal((64, 8)).astype(np.float16),
}))
write("safetensors", "seed-bad-offsets",
      (lambda h: len(h).to_bytes(8, "little") + h + b"\0" * 8)(
          b'{"x":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}'))

# --- gguf: a tiny Llama GGUF with a byte-level BPE tokenizer
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "tiny.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    tokens = ["<|im_start|>", "<|im_end|>", "H", "e", "l", "o", "He", "ll", "Hell", "Hello", "\u0120", ","]
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3] + [1] * (len(tokens) - 2))
    writer.add_token_merges(["H e", "l l", "He ll", "Hell o"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}")
    writer.add_tensor("token_embd.weight", rng.standard_normal((12, 8)).astype(np.float32))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with open(path, "rb") as f:
        write("gguf", "seed-tiny-llama", f.read())
write("gguf", "seed-truncated", b"GGUF\x03\x00\x00\x00" + b"\x01" + b"\x00" * 7 + b"\xff" * 8)
print("seeds written")
