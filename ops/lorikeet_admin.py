#!/usr/bin/env python3
"""A minimal Lorikeet admin client in Python, from the .proto files alone.

Proves that any protobuf library can speak the admin socket (framing and messages:
proto/README.md). Needs `protoc` (Debian: protobuf-compiler) and the `protobuf`
package; the Python classes are generated at run time into a temporary directory.

Usage:
  lorikeet_admin.py [--socket PATH | --state-dir DIR] [--proto-dir DIR] VERB [ARGS]
Verbs:
  status | workers | adapters
  load NAME PATH [--pinned] [--inplace]
  unload NAME [--id N]
  batch FILE            (JSON: [{"load": {"lora_name", "lora_path"}}, {"unload": {"lora_name"}}])
  restart | scale N | drain SLOT | stop [--fast]
Prints the reply as JSON (proto field names). Exit codes as `lorikeet ctl`: 0 ok,
1 refused, 3 unreachable, 4 permission denied.
"""
import argparse
import importlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_DIR = os.path.join(os.path.dirname(HERE), "proto")
# The admin channel's frame limit (Limits.channelFrameBytes): the supervisor drops a
# connection that sends a larger frame, and never sends one.
MAX_FRAME = 16 * 1024 * 1024


def compile_protos(proto_dir, out_dir):
    """Runs protoc --python_out for the admin schema and its imports; returns admin_pb2."""
    files = [f"lorikeet/v1/{name}.proto" for name in ("common", "control", "cluster", "admin")]
    subprocess.run(["protoc", f"-I{proto_dir}", f"--python_out={out_dir}", *files], check=True)
    for package in ("lorikeet", "lorikeet/v1"):
        open(os.path.join(out_dir, package, "__init__.py"), "a").close()
    sys.path.insert(0, out_dir)
    return importlib.import_module("lorikeet.v1.admin_pb2")


def frame(payload):
    """Lorikeet framing: flag byte 0, 4-byte big-endian length, payload."""
    return struct.pack(">BI", 0, len(payload)) + payload


def read_exact(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def call(admin_pb2, path, envelope, timeout):
    """Sends one AdminEnvelope and returns the reply envelope (None if the peer closed)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except PermissionError:
        fail(f"permission denied on {path}: run as the server's user or root", 4)
    except OSError as error:
        fail(f"cannot reach the supervisor at {path}: {error}", 3)
    with sock:
        payload = envelope.SerializeToString()
        if len(payload) > MAX_FRAME:
            fail(f"the request is {len(payload)} bytes; the admin channel's limit is {MAX_FRAME} bytes", 1)
        sock.sendall(frame(payload))
        header = read_exact(sock, 5)
        if header is None:
            fail("the supervisor closed the connection (peer refused? see the server log)", 4)
        flag, length = struct.unpack(">BI", header)
        if flag != 0 or length > MAX_FRAME:
            fail(f"bad frame from the supervisor (flag {flag}, length {length})", 3)
        payload = read_exact(sock, length)
        if payload is None:
            fail("the supervisor closed the connection mid-frame", 3)
    reply = admin_pb2.AdminEnvelope()
    reply.ParseFromString(payload)
    return reply


def fail(message, code):
    print(f"lorikeet_admin: {message}", file=sys.stderr)
    sys.exit(code)


def build_request(admin_pb2, args):
    envelope = admin_pb2.AdminEnvelope(call_id=1)
    verb = args.verb
    if verb == "status":
        envelope.status.SetInParent()
    elif verb == "workers":
        envelope.list_workers.SetInParent()
    elif verb == "adapters":
        envelope.list_adapters.SetInParent()
    elif verb == "load":
        envelope.load.name, envelope.load.path = args.name, args.path
        envelope.load.pinned, envelope.load.load_inplace = args.pinned, args.inplace
    elif verb == "unload":
        envelope.unload.name, envelope.unload.int_id = args.name, args.id
    elif verb == "batch":
        with open(args.file) if args.file != "-" else sys.stdin as handle:
            items = json.load(handle)
        for item in items:
            entry = envelope.batch.items.add()
            if "load" in item:
                entry.load.name = item["load"]["lora_name"]
                entry.load.path = item["load"]["lora_path"]
                entry.load.load_inplace = bool(item["load"].get("load_inplace", False))
                entry.load.pinned = bool(item["load"].get("pinned", False))
            else:
                entry.unload.name = item["unload"]["lora_name"]
                entry.unload.int_id = int(item["unload"].get("lora_int_id", 0))
    elif verb == "restart":
        envelope.rolling_restart.SetInParent()
    elif verb == "scale":
        envelope.scale.workers = args.workers
    elif verb == "drain":
        envelope.drain_worker.slot = args.slot
    elif verb == "stop":
        envelope.stop.fast = args.fast
    return envelope


def refused(reply):
    """True when the reply reports a failure (any status code other than OK)."""
    body = reply.WhichOneof("body")
    if body == "result":
        return reply.result.status.code != 0
    if body == "mutation_reply":
        return reply.mutation_reply.status.code != 0
    if body == "batch_reply":
        return any(result.status.code != 0 for result in reply.batch_reply.results)
    return False


def to_dict(message_to_dict, message):
    """MessageToDict with default values printed (the keyword changed in protobuf 5.26)."""
    try:
        return message_to_dict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    except TypeError:
        return message_to_dict(message, preserving_proto_field_name=True, including_default_value_fields=True)


def main():
    parser = argparse.ArgumentParser(description="Lorikeet admin socket client (protobuf).")
    parser.add_argument("--socket", help="admin socket (default: STATE_DIR/admin.sock)")
    parser.add_argument("--state-dir", default="./lorikeet-state")
    parser.add_argument("--proto-dir", default=DEFAULT_PROTO_DIR, help="directory holding lorikeet/v1/*.proto")
    parser.add_argument("--timeout", type=float, default=60)
    verbs = parser.add_subparsers(dest="verb", required=True)
    for verb in ("status", "workers", "adapters", "restart"):
        verbs.add_parser(verb)
    load = verbs.add_parser("load")
    load.add_argument("name")
    load.add_argument("path")
    load.add_argument("--pinned", action="store_true")
    load.add_argument("--inplace", action="store_true")
    unload = verbs.add_parser("unload")
    unload.add_argument("name")
    unload.add_argument("--id", type=int, default=0)
    verbs.add_parser("batch").add_argument("file")
    verbs.add_parser("scale").add_argument("workers", type=int)
    verbs.add_parser("drain").add_argument("slot", type=int)
    verbs.add_parser("stop").add_argument("--fast", action="store_true")
    args = parser.parse_args()

    path = args.socket or os.path.join(args.state_dir, "admin.sock")
    with tempfile.TemporaryDirectory() as out:
        admin_pb2 = compile_protos(args.proto_dir, out)
        from google.protobuf.json_format import MessageToDict

        reply = call(admin_pb2, path, build_request(admin_pb2, args), args.timeout)
        body = reply.WhichOneof("body")
        document = to_dict(MessageToDict, getattr(reply, body)) if body else {}
        print(json.dumps({body or "empty": document}, indent=2, sort_keys=True))
        sys.exit(1 if refused(reply) else 0)


if __name__ == "__main__":
    main()
