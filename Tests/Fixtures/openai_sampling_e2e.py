#!/usr/bin/env python3
"""The sampling surface end to end with the real `openai` SDK against a running
`lorikeet worker` + `lorikeet engine` on the tiny-Llama fixture (driven by
LorikeetWorkerTests' RealEngineTests).

Usage: openai_sampling_e2e.py --base-url http://127.0.0.1:PORT/v1 --fixture DIR [--api-key KEY]

DIR is the make_tiny_llama.py output; sampling.json there holds numpy's log-softmax and
its re-implementation of vLLM's penalties (independent of the Swift code). Checks:
completions logprobs and echo against numpy, chat logprobs, SSE equal to JSON, greedy under
penalties and logit_bias equal to numpy's tokens, min_tokens, vLLM's defaults (temperature
1, chat max_tokens = the rest of the context, C8's 400), seeds, and the 400s of refused or
out-of-range fields. Prints one line per check and "N passed, 0 failed"; exits 1 on a failure.
"""
import argparse
import json
import math
import os
import sys

import jsonschema
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


def close(a, b, tol=1e-4):
    return a is not None and b is not None and abs(a - b) < tol


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--fixture", required=True)
    parser.add_argument("--api-key", default="no-key")
    args = parser.parse_args()
    with open(os.path.join(args.fixture, "reference.json")) as f:
        reference = json.load(f)
    with open(os.path.join(args.fixture, "sampling.json")) as f:
        sampling = json.load(f)
    prompt = reference["prompt_tokens"]
    context = 256
    client = OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    greedy_ref = sampling["greedy_logprobs"]
    steps = len(greedy_ref)

    def token_ids(response):
        return (response.choices[0].model_extra or {}).get("token_ids")

    # --- completions logprobs: numpy's log-softmax of the raw logits ---
    r = client.completions.create(
        model=model, prompt=prompt, max_tokens=steps, temperature=0, logprobs=5,
        extra_body={"ignore_eos": True, "return_token_ids": True})
    lp = r.choices[0].logprobs
    check(token_ids(r) == [s["token"] for s in greedy_ref], "completions: greedy tokens are numpy's")
    check(len(lp.tokens) == steps and len(lp.token_logprobs) == steps and len(lp.top_logprobs) == steps,
          "completions logprobs: one entry per token")
    check(all(close(got, want["logprob"]) for got, want in zip(lp.token_logprobs, greedy_ref)),
          "completions token_logprobs = numpy log-softmax (1e-4)")
    for i, (top, want) in enumerate(zip(lp.top_logprobs, greedy_ref)):
        values = sorted(top.values(), reverse=True)
        wanted = [v for _, v in want["top"]]
        # Byte tokens that are not UTF-8 all read U+FFFD: keys may collapse, values still match.
        check(all(any(close(v, w) for w in wanted) for v in values) and len(values) >= 1,
              f"completions top_logprobs[{i}] values are numpy's top 5")
    offsets = lp.text_offset
    check(offsets[0] == 0 and all(offsets[i + 1] - offsets[i] == len(lp.tokens[i]) for i in range(steps - 1)),
          "completions text_offset advances by each token's length")

    # --- the same request streamed: SSE equals JSON ---
    stream = client.completions.create(
        model=model, prompt=prompt, max_tokens=steps, temperature=0, logprobs=5, stream=True,
        extra_body={"ignore_eos": True})
    s_tokens, s_values, s_offsets, s_text = [], [], [], ""
    for chunk in stream:
        c = chunk.choices[0] if chunk.choices else None
        if c is None:
            continue
        s_text += c.text
        if c.logprobs:
            s_tokens += c.logprobs.tokens
            s_values += c.logprobs.token_logprobs
            s_offsets += c.logprobs.text_offset
    check(s_tokens == lp.tokens and s_values == lp.token_logprobs and s_offsets == offsets
          and s_text == r.choices[0].text, "completions SSE logprobs and text equal the JSON answer")

    # --- echo with logprobs: the prompt's log probabilities first ---
    r = client.completions.create(
        model=model, prompt=prompt, max_tokens=2, temperature=0, logprobs=3, echo=True, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    n = len(prompt)
    check(len(lp.token_logprobs) == n + 2, "echo: prompt and completion positions")
    check(lp.token_logprobs[0] is None and lp.top_logprobs[0] is None, "echo: the first prompt token has none")
    check(all(close(got, want["logprob"]) for got, want in zip(lp.token_logprobs[1:n], sampling["prompt_logprobs"])),
          "echo: prompt token_logprobs = numpy log-softmax")
    check(r.choices[0].text.startswith("Hello, Lorikeet!"), "echo: the text starts with the prompt")
    r = client.completions.create(model=model, prompt="Hello", max_tokens=3, temperature=0, echo=True)
    check(r.choices[0].text.startswith("Hello") and r.choices[0].logprobs is None, "echo without logprobs")

    # --- chat logprobs, JSON and SSE ---
    messages = [{"role": "user", "content": "hi"}]
    r = client.chat.completions.create(
        model=model, messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3,
        extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    check(len(content) == r.usage.completion_tokens == 6, "chat logprobs: one entry per token")
    check(all(len(e.top_logprobs) == 3 and e.logprob <= 0 for e in content), "chat top_logprobs has 3 entries")
    check(all(math.isclose(e.logprob, e.top_logprobs[0].logprob, abs_tol=1e-6) for e in content),
          "chat greedy: the chosen token is the most likely")
    check(all(sum(math.exp(t.logprob) for t in e.top_logprobs) <= 1 + 1e-5 for e in content),
          "chat top probabilities sum to at most 1")
    check(all(e.bytes == list(e.token.encode()) for e in content), "chat bytes are the token's UTF-8")
    streamed = []
    for chunk in client.chat.completions.create(
            model=model, messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3, stream=True,
            extra_body={"ignore_eos": True}):
        if chunk.choices and chunk.choices[0].logprobs:
            streamed += chunk.choices[0].logprobs.content
    check([(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content],
          "chat SSE logprobs equal the JSON answer")
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=3, temperature=0)
    check(r.choices[0].logprobs is None, "chat without logprobs: null")

    # --- penalties and logit_bias: numpy's greedy tokens ---
    pg = sampling["penalized_greedy"]
    r = client.completions.create(
        model=model, prompt=prompt, max_tokens=len(pg["tokens"]), temperature=0,
        presence_penalty=pg["presence_penalty"], frequency_penalty=pg["frequency_penalty"],
        logit_bias={str(t): b for t, b in pg["bias"]},
        extra_body={"repetition_penalty": pg["repetition_penalty"], "min_tokens": pg["min_tokens"],
                    "ignore_eos": True, "return_token_ids": True})
    check(token_ids(r) == pg["tokens"], "penalties + logit_bias + min_tokens: numpy's greedy tokens")

    # --- min_tokens masks stop tokens until reached ---
    first = greedy_ref[0]["token"]
    r = client.completions.create(
        model=model, prompt=prompt, max_tokens=5, temperature=0,
        extra_body={"stop_token_ids": [first], "min_tokens": 5, "return_token_ids": True, "ignore_eos": True})
    ids = token_ids(r)
    check(len(ids) == 5 and first not in ids, "min_tokens: the stop token id is masked until 5 tokens")
    r = client.completions.create(
        model=model, prompt=prompt, max_tokens=5, temperature=0,
        extra_body={"stop_token_ids": [first], "return_token_ids": True, "ignore_eos": True})
    check(token_ids(r) == [first] and r.choices[0].finish_reason == "stop", "without min_tokens the stop id ends at once")

    # --- vLLM's defaults ---
    r = client.chat.completions.create(model=model, messages=messages, temperature=0, extra_body={"ignore_eos": True})
    check(r.choices[0].finish_reason == "length"
          and r.usage.prompt_tokens + r.usage.completion_tokens == context,
          f"chat without max_tokens runs to the end of the context ({r.usage.completion_tokens} tokens)")
    try:
        client.completions.create(model=model, prompt=prompt, max_tokens=context)
        check(False, "max_tokens beyond the context is refused")
    except openai.BadRequestError as e:
        body = e.body or {}
        check(e.status_code == 400 and body.get("param") == "max_tokens"
              and "This model's maximum context length is 256 tokens. However, you requested 256 output tokens"
              in body.get("message", ""), f"C8: {body.get('message', '')[:80]}...")
    greedy_tokens = [s["token"] for s in greedy_ref]
    outs = set()
    for seed in range(4):
        r = client.completions.create(model=model, prompt=prompt, max_tokens=steps, seed=seed,
                                      extra_body={"ignore_eos": True, "return_token_ids": True})
        outs.add(tuple(token_ids(r)))
    check(len(outs) > 1 and any(o != tuple(greedy_tokens) for o in outs),
          "omitted temperature samples (1.0): different seeds, different tokens")
    a = client.completions.create(model=model, prompt=prompt, max_tokens=steps, seed=7, top_p=0.9,
                                  extra_body={"top_k": 50, "min_p": 0.01, "ignore_eos": True, "return_token_ids": True})
    b = client.completions.create(model=model, prompt=prompt, max_tokens=steps, seed=7, top_p=0.9,
                                  extra_body={"top_k": 50, "min_p": 0.01, "ignore_eos": True, "return_token_ids": True})
    check(token_ids(a) == token_ids(b), "the same seed gives the same tokens")

    # --- n: choices with seeds seed + i, as vLLM's ParentRequest derives them ---
    def sampled(seed, n=1, stream=False):
        kwargs = dict(model=model, prompt=prompt, max_tokens=8, seed=seed, n=n, logprobs=2,
                      extra_body={"ignore_eos": True, "return_token_ids": True})
        if not stream:
            r = client.completions.create(**kwargs)
            return [(c.index, c.text, c.logprobs.token_logprobs, (c.model_extra or {}).get("token_ids"))
                    for c in r.choices], r.usage
        texts, values = {}, {}
        for chunk in client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs):
            for c in chunk.choices:
                texts[c.index] = texts.get(c.index, "") + c.text
                if c.logprobs:
                    values[c.index] = values.get(c.index, []) + c.logprobs.token_logprobs
        return [(i, texts[i], values[i]) for i in sorted(texts)], None
    choices, usage = sampled(100, n=3)
    check([c[0] for c in choices] == [0, 1, 2], "n=3: choices indexed 0, 1, 2")
    singles = [sampled(100 + i)[0][0] for i in range(3)]
    check([c[1:] for c in choices] == [s[1:] for s in singles], "n=3, seed 100: the choices equal seeds 100, 101, 102")
    check(len({c[1] for c in choices}) > 1, "n=3: the choices differ")
    check(usage.completion_tokens == 24 and usage.prompt_tokens == len(prompt), "n=3: usage counts the prompt once")
    again, _ = sampled(100, n=3)
    check(again == choices, "n=3 with a seed is reproducible")
    streamed, _ = sampled(100, n=3, stream=True)
    check(streamed == [c[:3] for c in choices], "n=3 streamed equals the JSON answer")
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=4, n=2, temperature=0)
    check([c.index for c in r.choices] == [0, 1] and r.choices[0].message.content == r.choices[1].message.content,
          "chat n=2 greedy: two identical choices")

    # --- best_of: 5 candidates (seeds 100..104), the 2 with the highest summed log probability ---
    candidates = [sampled(100 + i)[0][0] for i in range(5)]
    ranked = sorted(range(5), key=lambda i: (-sum(candidates[i][2]), i))
    r = client.completions.create(model=model, prompt=prompt, max_tokens=8, seed=100, n=2, best_of=5,
                                  extra_body={"ignore_eos": True, "return_token_ids": True})
    check([c.index for c in r.choices] == [0, 1], "best_of=5, n=2: two choices, indexed 0 and 1")
    check([c.text for c in r.choices] == [candidates[i][1] for i in ranked[:2]],
          f"best_of=5, n=2: the two candidates with the highest cumulative log probability, best first ({ranked})")
    check(all(c.logprobs is None for c in r.choices), "best_of without logprobs: none shown")
    check(r.usage.completion_tokens == 16, "best_of: usage counts the returned choices (vLLM V0)")
    for bad, field in ((dict(n=3, best_of=2), "best_of"), (dict(best_of=3, stream=True), "best_of")):
        try:
            client.completions.create(model=model, prompt=prompt, max_tokens=2, **bad)
            check(False, f"{bad} refused")
        except openai.BadRequestError as error:
            check(error.status_code == 400 and field in str(error), f"{bad}: 400 naming {field}")

    # --- several prompts in one request: choices prompt by prompt (index = p * n + i) ---
    r = client.completions.create(model=model, prompt=["Hello", "World"], n=2, max_tokens=4, temperature=0,
                                  echo=True, extra_body={"ignore_eos": True})
    check([c.index for c in r.choices] == [0, 1, 2, 3], "2 prompts x n=2: four choices in order")
    single = [client.completions.create(model=model, prompt=p, max_tokens=4, temperature=0,
                                        extra_body={"ignore_eos": True}) for p in ["Hello", "World"]]
    check([c.text for c in r.choices] == ["Hello" + single[0].choices[0].text] * 2 + ["World" + single[1].choices[0].text] * 2,
          "2 prompts: each choice is its prompt's (echoed) completion")
    check(r.usage.prompt_tokens == single[0].usage.prompt_tokens + single[1].usage.prompt_tokens
          and r.usage.completion_tokens == 16, "2 prompts: usage sums each prompt once and every completion")
    r = client.completions.create(model=model, prompt=[[256, 72], [256, 87]], max_tokens=2, temperature=0)
    check(len(r.choices) == 2, "two token-id prompts: two choices")

    # --- structured output (random weights: every finished document shows the mask at work) ---
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                               "ok": {"type": "boolean"}}, "required": ["name", "ok"]}
    for seed in range(3):
        r = client.chat.completions.create(
            model=model, messages=messages, max_tokens=150, temperature=1, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}})
        content = r.choices[0].message.content
        if r.choices[0].finish_reason == "stop":
            doc = json.loads(content)
            # An independent validator, not our matcher.
            jsonschema.validate(doc, {**schema, "additionalProperties": False})
            check(set(doc) == {"name", "ok"}, f"json_schema seed {seed}: {content!r} validates with jsonschema")
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=150, temperature=0, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": schema}})
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    check(streamed.lstrip().startswith("{"), f"json_schema streamed: {streamed[:40]!r}")
    r = client.completions.create(model=model, prompt="x", max_tokens=20, temperature=1,
                                  extra_body={"guided_choice": ["red", "green", "blue"]})
    check(r.choices[0].text in ("red", "green", "blue") and r.choices[0].finish_reason == "stop",
          f"guided_choice: {r.choices[0].text!r}")
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=20, temperature=1,
                                       extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    check(r.choices[0].message.content in ("yes", "no"), "structured_outputs.choice")

    # --- bad_words (byte tokens: a two-character word is two tokens) ---
    free = client.completions.create(model=model, prompt="The quick", max_tokens=60, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    at = next(i for i in range(len(free) - 1) if free[i:i + 2].isascii() and free[i:i + 2].isprintable()
              and " " not in free[i:i + 2])
    word = free[at:at + 2]
    banned = client.completions.create(model=model, prompt="The quick", max_tokens=60, temperature=0,
                                       extra_body={"ignore_eos": True, "bad_words": [word]}).choices[0].text
    check(word not in banned and banned[:at + 1] == free[:at + 1], f"bad_words {word!r}: {free!r} became {banned!r}")

    # --- refusals name the field ---
    for what, kwargs, param in [
        ("tools", dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]), "tools"),
        ("top_logprobs 21", dict(logprobs=True, top_logprobs=21), "top_logprobs"),
        ("top_logprobs without logprobs", dict(top_logprobs=2), "top_logprobs"),
        ("logit_bias out of the vocabulary", dict(logit_bias={"258": 1}), "logit_bias"),
        ("a schema keyword outside the subset", dict(response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "string", "pattern": "^a"}}}), "response_format"),
        ("guided_regex", dict(extra_body={"guided_regex": "a+"}), "guided_regex"),
        ("two kinds of constraint", dict(response_format={"type": "json_object"},
                                         extra_body={"guided_choice": ["a"]}), "response_format"),
        ("presence_penalty 3", dict(presence_penalty=3), "presence_penalty"),
    ]:
        try:
            client.chat.completions.create(model=model, messages=messages, max_tokens=2, **kwargs)
            check(False, f"{what} is refused")
        except openai.BadRequestError as e:
            body = e.body or {}
            check(body.get("param") == param, f"{what}: 400 param {param} ({body.get('message', '')[:70]})")
    print(f"{checks} passed, 0 failed")


if __name__ == "__main__":
    main()
