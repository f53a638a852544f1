"""Interop check with Python's `protobuf` package, compiled from proto/ with protoc.

Usage: proto_interop.py ENVELOPE_TYPE < frames
Reads Lorikeet frames (1 flag byte + 4-byte BE length + message) from stdin, decodes
each with the Python classes generated from the same .proto files, prints one JSON
line per message (MessageToDict), then writes each message re-serialized by Python
as a frame to stdout's end, after a line '---FRAMES---' in hex.
"""
import importlib
import json
import os
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_module(out_dir, name):
    sys.path.insert(0, out_dir)
    return importlib.import_module(f"lorikeet.v1.{name}_pb2")


def main():
    envelope_type = sys.argv[1]
    with tempfile.TemporaryDirectory() as out:
        proto_dir = os.path.join(ROOT, "proto")
        files = [f"lorikeet/v1/{n}.proto" for n in ("common", "control", "admin", "engine", "cluster")]
        subprocess.run(["protoc", f"-I{proto_dir}", f"--python_out={out}", *files], check=True)
        for package in ("lorikeet", "lorikeet/v1"):
            open(os.path.join(out, package, "__init__.py"), "a").close()
        module_name = {"ControlEnvelope": "control", "AdminEnvelope": "admin", "EngineEnvelope": "engine", "ClusterEnvelope": "cluster"}[envelope_type]
        module = load_module(out, module_name)
        from google.protobuf.json_format import MessageToDict

        cls = getattr(module, envelope_type)
        data = sys.stdin.buffer.read()
        offset = 0
        reencoded = []
        while offset < len(data):
            flag, length = struct.unpack(">BI", data[offset : offset + 5])
            assert flag == 0, f"bad flag {flag}"
            payload = data[offset + 5 : offset + 5 + length]
            offset += 5 + length
            message = cls()
            message.ParseFromString(payload)
            print(json.dumps(MessageToDict(message, preserving_proto_field_name=True), sort_keys=True, ensure_ascii=False))
            # Rebuild from JSON so Python's own encoder produces the bytes we send back.
            from google.protobuf.json_format import ParseDict

            rebuilt = ParseDict(MessageToDict(message, preserving_proto_field_name=True), cls())
            body = rebuilt.SerializeToString()
            reencoded.append(struct.pack(">BI", 0, len(body)) + body)
        print("---FRAMES---")
        print(b"".join(reencoded).hex())


if __name__ == "__main__":
    main()
