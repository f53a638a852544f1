"""Writes the seed corpora of the frame fuzz targets (fuzz/corpus/<target>/), and the
http-json seeds at and just over the request limits (seed-limit-*; the other http-json
seeds come from make_format_seeds.py).

Run with the repo's venv: .venv/bin/python fuzz/make_seeds.py
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

with tempfile.TemporaryDirectory() as out:
    files = [f"lorikeet/v1/{n}.proto" for n in ("common", "control", "cluster", "admin", "engine")]
    subprocess.run(["protoc", f"-I{ROOT}/proto", f"--python_out={out}", *files], check=True)
    for package in ("lorikeet", "lorikeet/v1"):
        open(os.path.join(out, package, "__init__.py"), "a").close()
    sys.path.insert(0, out)
    from lorikeet.v1 import admin_pb2, common_pb2, control_pb2, engine_pb2

    def frame(message):
        body = message.SerializeToString()
        return struct.pack(">BI", 0, len(body)) + body

    adapter = common_pb2.Adapter(name="sql", int_id=3, path="/data/lora/sql", base_model="base", loaded_at_unix_ms=1)
    seeds = {
        "frames-control": [
            control_pb2.ControlEnvelope(call_id=1, hello=control_pb2.Hello(worker_id=1, pid=10, version="0.1.0")),
            control_pb2.ControlEnvelope(heartbeat=control_pb2.Heartbeat(seq=5)),
            control_pb2.ControlEnvelope(snapshot=control_pb2.TableSnapshot(table=common_pb2.AdapterTable(version=2, adapters=[adapter], next_int_id=4))),
            control_pb2.ControlEnvelope(call_id=9, commit=control_pb2.CommitRequest(epoch=2, change=control_pb2.TableChange(version=3, upserts=[adapter], removes=["x"]))),
            control_pb2.ControlEnvelope(call_id=9, load=common_pb2.LoadAdapterRequest(name="a", path="/p")),
        ],
        "frames-admin": [
            admin_pb2.AdminEnvelope(call_id=1, status=admin_pb2.StatusRequest()),
            admin_pb2.AdminEnvelope(call_id=2, batch=admin_pb2.BatchRequest(items=[admin_pb2.BatchItem(load=common_pb2.LoadAdapterRequest(name="a", path="/p"))])),
            admin_pb2.AdminEnvelope(call_id=3, worker_list=admin_pb2.WorkerList(workers=[admin_pb2.WorkerInfo(slot=1, pid=2, state="ready")])),
        ],
        "admin-requests": [
            admin_pb2.AdminEnvelope(call_id=1, load=common_pb2.LoadAdapterRequest(name="n" * 3000, path="/p" + "q" * 5000, caller="c" * 3000)),
            admin_pb2.AdminEnvelope(call_id=2, unload=common_pb2.UnloadAdapterRequest(name="line\nforged\u202etxt\"quote\\")),
            admin_pb2.AdminEnvelope(call_id=3, batch=admin_pb2.BatchRequest(items=[admin_pb2.BatchItem(load=common_pb2.LoadAdapterRequest(name=f"b{i}", path="/p", base_model="\x7f" * 300)) for i in range(20)])),
            admin_pb2.AdminEnvelope(call_id=4, load=common_pb2.LoadAdapterRequest(name="ok", path="/data/lora/ok", base_model="base")),
        ],
        "frames-engine": [
            engine_pb2.EngineEnvelope(call_id=1, generate=engine_pb2.GenerateRequest(request_id="r", prompt_tokens=[1, 2, 3], sampling=engine_pb2.SamplingParams(max_tokens=4, stop=["x"]), adapter=engine_pb2.AdapterRef(name="a", int_id=1))),
            engine_pb2.EngineEnvelope(call_id=1, chunk=engine_pb2.GenerateChunk(request_id="r", tokens=[5], text="hi", finish_reason="stop", usage=engine_pb2.Usage(prompt_tokens=3, completion_tokens=1))),
            engine_pb2.EngineEnvelope(call_id=2, add_adapter=engine_pb2.AddAdapterRequest(epoch=1, name="a", int_id=1, path="/p")),
        ],
    }
    for target, messages in seeds.items():
        directory = os.path.join(ROOT, "fuzz", "corpus", target)
        os.makedirs(directory, exist_ok=True)
        for index, message in enumerate(messages):
            with open(os.path.join(directory, f"seed-{index}"), "wb") as f:
                f.write(frame(message))
        with open(os.path.join(directory, "seed-multi"), "wb") as f:
            f.write(b"".join(frame(m) for m in messages))
        with open(os.path.join(directory, "seed-garbage"), "wb") as f:
            f.write(b"\x00\x00\x00\x00\x03\xff\xff\xff\x07\xff\xff\xff\xff")
    print("seeds written")

# --- http-json: request bodies at and just over the limits of Sources/LorikeetProto/Limits
# (issue 12), so the fuzzer starts next to every boundary: names, paths, base model names,
# stops, stop token ids, messages, batch items, nesting depth, forbidden characters.
NAME, PATH, STOPS, STOP_BYTES, STOP_IDS, MESSAGES, BATCH = 256, 4096, 16, 256, 256, 4096, 256
DEPTH = 64  # JSONParser.maximumDepth
plain = "/data/lora/plain"
# a path of exactly `n` bytes made of 255-byte components (NAME_MAX)
long_path = lambda n: ("/" + "/".join(["p" * 255] * (n // 256) + ["q" * (n - 256 * (n // 256) - 1)]))[:n]  # noqa: E731
limits = {
    "seed-limit-at": {"lora_name": "n" * NAME, "lora_path": long_path(PATH - 1), "base_model_name": "b" * NAME,
                      "load_inplace": True, "pinned": False},
    # Limits.adapterPathBytes (4096) is one more than PathPolicy.maximumPathBytes (4095)
    "seed-limit-path-4096": {"lora_name": "p", "lora_path": long_path(PATH)},
    "seed-limit-over": {"lora_name": "\u00e9" * (NAME // 2) + "n", "lora_path": long_path(PATH + 1),
                        "base_model_name": "b" * (NAME + 1)},
    "seed-limit-chars": {"lora_name": "a\u0000b\n\u202e\u2028\u061c\u0085\u007f", "lora_path": plain + "\u0000/../x",
                         "base_model_name": "\u2066tiny\u2069", "lora_int_id": 9223372036854775807},
    "seed-limit-stops-at": {"model": "tiny", "prompt": "hi", "max_tokens": 1, "stop": ["\u00e9" * (STOP_BYTES // 2)] * STOPS,
                            "stop_token_ids": list(range(STOP_IDS)), "n": 1},
    "seed-limit-stops": {"model": "m" * (NAME + 1), "prompt": "hi", "max_tokens": 1,
                         "stop": ["s" * STOP_BYTES] * STOPS + ["\u00e9" * (STOP_BYTES // 2) + "x"],
                         "stop_token_ids": list(range(STOP_IDS + 1))},
    "seed-limit-messages": {"model": "tiny", "messages": [{}] * (MESSAGES + 1), "stop": [], "stop_token_ids": []},
    "seed-limit-batch": {"items": [{"load": {"lora_name": f"b{i}", "lora_path": plain}} for i in range(BATCH)]
                         + [{"unload": {"lora_name": "x\u202e"}}]},
}
directory = os.path.join(ROOT, "fuzz", "corpus", "http-json")
os.makedirs(directory, exist_ok=True)
for name, body in limits.items():
    with open(os.path.join(directory, name), "wb") as f:
        f.write(json.dumps(body, separators=(",", ":")).encode())
# nesting at and one over the parser's depth limit, inside a request (object + array + depth)
for name, depth in (("seed-limit-depth-at", DEPTH - 2), ("seed-limit-depth-over", DEPTH - 1)):
    with open(os.path.join(directory, name), "wb") as f:
        f.write(b'{"messages":[' + b"[" * depth + b"]" * depth + b'],"model":"tiny"}')
for name in os.listdir(directory):
    assert os.path.getsize(os.path.join(directory, name)) < 64 * 1024, name
print("http-json limit seeds written")
