#!/usr/bin/env python3
"""End-to-end check of a running `lorikeet worker` + `lorikeet engine` with the real
`openai` SDK (driven by LorikeetWorkerTests' RealEngineTests).

Usage: openai_e2e.py --base-url http://127.0.0.1:PORT/v1 --fixture DIR [--api-key KEY]
                     [--adapter plain]

DIR is the make_tiny_llama.py output (model/, adapters/, reference.json). Checks:
models.list; completions and chat, JSON and SSE (with include_usage); the base model's
greedy tokens equal reference.json; an adapter loaded over HTTP, then used with
model=<name>, gives exactly its reference tokens; unloaded, it is refused (404).
Prints one line per check and "N passed, 0 failed" at the end; exits 1 on a failure.
"""
import argparse
import json
import os
import sys

import urllib.error
import urllib.request

import openai
from openai import OpenAI

checks = 0


def check(condition, what):
    global checks
    if not condition:
        print(f"FAIL: {what}")
        print(f"{checks} passed, 1 failed")
        sys.exit(1)
    checks += 1
    print(f"ok: {what}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--fixture", required=True)
    parser.add_argument("--api-key", default="no-key")
    parser.add_argument("--adapter", default="plain")
    args = parser.parse_args()

    with open(os.path.join(args.fixture, "reference.json")) as f:
        reference = json.load(f)
    prompt_tokens = reference["prompt_tokens"]
    steps = reference["greedy_steps"]
    client = OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=120)

    class Reply:
        def __init__(self, status_code, text):
            self.status_code = status_code
            self.text = text

        def json(self):
            return json.loads(self.text)

    def post(path, body):
        """The adapter routes are not in the SDK: plain HTTP, as vLLM's docs use curl."""
        request = urllib.request.Request(
            args.base_url + path, data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"Bearer {args.api_key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return Reply(response.status, response.read().decode())
        except urllib.error.HTTPError as error:
            return Reply(error.code, error.read().decode())

    models = [m.id for m in client.models.list()]
    check(len(models) >= 1, f"models.list gives {models}")
    base = models[0]

    def greedy(model):
        response = client.completions.create(
            model=model, prompt=prompt_tokens, max_tokens=steps, temperature=0,
            extra_body={"return_token_ids": True, "ignore_eos": True})
        choice = response.choices[0]
        return (choice.model_extra or {}).get("token_ids"), response

    tokens, response = greedy(base)
    check(tokens == reference["cases"]["base"]["greedy"], f"base greedy tokens {tokens}")
    check(response.usage.completion_tokens == steps, f"usage {response.usage}")
    check(response.usage.prompt_tokens == len(prompt_tokens), "prompt_tokens counted")

    text = client.completions.create(model=base, prompt="Hello", max_tokens=5, temperature=0)
    check(text.object == "text_completion" and text.choices[0].finish_reason in ("length", "stop"),
          f"completion text {text.choices[0].text!r} finish {text.choices[0].finish_reason}")

    stream = client.completions.create(
        model=base, prompt="Hello", max_tokens=5, temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    check(streamed == text.choices[0].text, f"streamed completion equals the JSON one ({streamed!r})")
    check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == text.usage.completion_tokens,
          "stream ends with a usage chunk")

    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}]
    chat = client.chat.completions.create(model=base, messages=messages, max_tokens=6, temperature=0)
    check(chat.object == "chat.completion" and chat.choices[0].message.role == "assistant",
          f"chat reply {chat.choices[0].message.content!r}")
    chat_stream = client.chat.completions.create(
        model=base, messages=messages, max_tokens=6, temperature=0, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in chat_stream if c.choices]
    check("".join(pieces) == chat.choices[0].message.content, "streamed chat equals the JSON one")

    name = "e2e-" + args.adapter
    path = os.path.join(args.fixture, "adapters", args.adapter)
    loaded = post("/load_lora_adapter", {"lora_name": name, "lora_path": path})
    check(loaded.status_code == 200 and "added successfully" in loaded.text, f"load: {loaded.status_code} {loaded.text}")
    again = post("/load_lora_adapter", {"lora_name": name, "lora_path": path})
    check(again.status_code == 400 and "is already loaded" in again.json()["error"]["message"], "second load refused")
    listed = {m.id: m for m in client.models.list()}
    check(name in listed and (listed[name].model_extra or {}).get("parent") == base, "adapter listed with its parent")

    tokens, _ = greedy(name)
    check(tokens == reference["cases"][args.adapter]["greedy"], f"adapter greedy tokens {tokens}")
    base_again, _ = greedy(base)
    check(base_again == reference["cases"]["base"]["greedy"], "base model unchanged beside the adapter")

    unloaded = post("/unload_lora_adapter", {"lora_name": name})
    check(unloaded.status_code == 200 and "removed successfully" in unloaded.text, f"unload: {unloaded.text}")
    try:
        client.completions.create(model=name, prompt="x", max_tokens=1)
        check(False, "unloaded adapter refused")
    except openai.NotFoundError as error:
        check(error.status_code == 404, f"unloaded adapter refused: {error.body}")
    try:
        client.completions.create(model=base, prompt="x", max_tokens=1, n=17)
        check(False, "n=17 refused")
    except openai.BadRequestError as error:
        check((error.body or {}).get("param") == "n", "n=17 (over Limits.choices) refused with param n")

    print(f"{checks} passed, 0 failed")


if __name__ == "__main__":
    main()
