"""Fault drill (run through bin/drill): `lorikeet serve --workers 4` on the tiny fixture model
for a fixed time while

  - 3 client threads send completions (fresh connection each) for the base model, for
    adapters that are loaded, and for adapters whose unload was acknowledged;
  - a mutator loads and unloads adapters, through HTTP on any worker and through
    `lorikeet ctl load/unload` (names are never reused, so every name has one life);
  - a monitor polls `lorikeet ctl adapters` to record every (name, id) the table shows;
  - a chaos loop kill -9s a random follower, the leader, the engine, sends SIGHUP
    (rolling restart) and SIGTTIN/SIGTTOU (scale up/down, kept within 3..5 workers),
    waiting after each for the server to be whole again (every slot ready, a base
    request answered; a slot paused by the crash-loop breaker, here for 5 s, is waited for).

Then it checks the invariants (see CHECKS below), prints what it did, the failures seen
with their reasons, and `N passed, N failed`; exits 1 when a check failed.
Usage: drill.py BINARY FIXTURE SECONDS [--seed N]
"""
import argparse
import collections
import os
import random
import re
import signal
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

MIN_WORKERS, MAX_WORKERS = 3, 5
LOADED_TARGET = 8          # the mutator keeps about this many adapters loaded
RECOVERY_TIMEOUT = 120     # seconds a chaos action may take to heal
ADAPTER_DIRS = ("plain", "rslora", "rank32")


class Log:
    def __init__(self):
        self.lock = threading.Lock()
        self.start = time.time()

    def __call__(self, text):
        with self.lock:
            print(f"[{time.time() - self.start:7.1f}s] {text}", flush=True)


log = Log()


class Adapter:
    """One adapter name's life: load sent/acked, unload sent/acked, ids seen."""

    def __init__(self, name, path):
        self.name = name
        self.path = path
        self.load_sent = None
        self.load_acked = None     # time the 200 (or ALREADY_EXISTS on a retry) came back
        self.load_failed = None    # definitive error answer (HTTP 4xx/5xx, ctl refused)
        self.unload_sent = None    # first unload attempt
        self.unload_acked = None   # time of the 200 (or 404 on a retry after an ambiguous try)
        self.ambiguous = False     # a call whose outcome is unknown and was not resolved
        self.via = ""
        self.ids = set()


class Drill:
    def __init__(self, binary, fixture, seconds, seed):
        self.binary = binary
        self.fixture = fixture
        self.seconds = seconds
        self.rng = random.Random(seed)
        self.seed = seed
        self.lock = threading.Lock()
        self.adapters = {}                 # name -> Adapter
        self.requests = []                 # (start, end, model, status or None, reason)
        self.actions = []                  # (kind, detail, seconds to heal or None, ok)
        self.mutations = collections.Counter()
        self.running = True
        self.chaos_done = threading.Event()
        self.expected_workers = 4
        self.sequence = 0
        self.table_seen = collections.defaultdict(set)   # name -> ids seen in the committed table
        self.ids_seen = collections.defaultdict(set)     # id -> names
        self.monitor_errors = 0
        self.anomalies = []                # answers that contradict the committed outcome
        self.last_reason = ""
        self.next_ids = []                 # (time, next_id, table version) from the monitor

    # ---- client loops

    def pick_model(self, rng):
        with self.lock:
            loaded = [a.name for a in self.adapters.values() if a.load_acked and not a.unload_sent]
            gone = [a.name for a in self.adapters.values() if a.unload_acked]
        roll = rng.random()
        if roll < 0.35 or (not loaded and not gone):
            return "tiny"
        if roll < 0.8 and loaded:
            return rng.choice(loaded)
        if gone:
            return rng.choice(gone[-20:])
        return "tiny"

    def client(self, index):
        rng = random.Random(self.seed * 100 + index)
        while self.running:
            model = self.pick_model(rng)
            start = time.time()
            try:
                status, body = harness.completion(self.server.port, model, timeout=30)
                reason = "" if status == 200 else harness.error_message(body)
            except Exception as e:  # connection reset by a killed worker, timeouts
                status, reason = None, type(e).__name__
            end = time.time()
            with self.lock:
                self.requests.append((start, end, model, status, reason))

    # ---- mutations

    def new_adapter(self):
        self.sequence += 1
        name = f"d{self.sequence}"
        adapter = Adapter(name, os.path.join(self.fixture, "adapters", self.rng.choice(ADAPTER_DIRS)))
        with self.lock:
            self.adapters[name] = adapter
        return adapter

    def http_mutation(self, route, body):
        try:
            status, data = harness.request(self.server.port, "POST", route, body, timeout=60)
            return status, ("" if status == 200 else harness.error_message(data))
        except Exception as e:
            return None, type(e).__name__

    def ctl_mutation(self, *args):
        value, detail = self.server.ctl(*args, timeout=60)
        if detail == "timeout":
            return None, "ctl timeout", value
        code, stderr = detail
        if code == 0:
            return 200, "", value
        if code == 1 and isinstance(value, dict):   # refused, with a status
            status = value.get("status", {})
            http = {"NOT_FOUND": 404, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "INTERNAL": 500}
            return http.get(status.get("code"), 400), f"{status.get('code')}: {status.get('message')}", value
        return None, f"ctl exit {code}: {stderr[:80]}", value

    def load(self, adapter):
        """Loads until answered; retries calls whose outcome is unknown or that were refused as unavailable."""
        adapter.load_sent = time.time()
        adapter.via = self.rng.choice(["http", "http", "ctl"])
        unknown_before = False
        give_up = time.time() + 30
        for attempt in range(1000):
            if attempt and time.time() > give_up:
                break
            if adapter.via == "http":
                status, reason = self.http_mutation("/v1/load_lora_adapter",
                                                    {"lora_name": adapter.name, "lora_path": adapter.path})
            else:
                status, reason, value = self.ctl_mutation("load", adapter.name, adapter.path)
                if status == 200 and value and value.get("adapter"):
                    adapter.ids.add(value["adapter"]["id"])
            now = time.time()
            if status == 200:
                adapter.load_acked = now
                self.mutations["load ok"] += 1
                return
            if status is not None and attempt > 0 and "already" in reason.lower():
                adapter.load_acked = now
                if unknown_before:
                    self.mutations["load ok (an earlier try with no answer had committed it)"] += 1
                else:
                    self.anomalies.append(f"{adapter.name}: load refused ({self.last_reason}), yet committed")
                return
            if status is None:
                unknown_before = True
            elif status not in (500, 502, 503, 504):
                adapter.load_failed = now
                self.mutations[f"load refused {status}: {reason[:70]}"] += 1
                return
            self.last_reason = f"{status or 'no answer'} {reason[:70]}"
            self.mutations[f"load retried after {self.last_reason}"] += 1
            time.sleep(0.5)
        if unknown_before:
            adapter.ambiguous = True
        else:
            adapter.load_failed = time.time()
        self.mutations["load gave up"] += 1

    def unload(self, adapter):
        """Unloads until answered; a 404 after a try with no answer means that try committed."""
        adapter.unload_sent = time.time()
        via = self.rng.choice(["http", "http", "ctl"])
        unknown_before = False
        give_up = time.time() + 30
        while time.time() < give_up:
            if via == "http":
                status, reason = self.http_mutation("/v1/unload_lora_adapter", {"lora_name": adapter.name})
            else:
                status, reason, _ = self.ctl_mutation("unload", adapter.name)
            now = time.time()
            if status == 200:
                adapter.unload_acked = now
                self.mutations["unload ok"] += 1
                return
            if status == 404:
                adapter.unload_acked = now   # certainly gone by now
                if unknown_before:
                    self.mutations["unload ok (an earlier try with no answer had committed it)"] += 1
                else:
                    self.anomalies.append(f"{adapter.name}: unload answered 404 while acknowledged loaded ({reason[:60]})")
                return
            if status is None:
                unknown_before = True
            elif status not in (500, 502, 503, 504):
                self.mutations[f"unload refused {status}: {reason[:70]}"] += 1
                adapter.unload_sent = None   # still loaded; may be unloaded again later
                return
            self.mutations[f"unload retried after {status or 'no answer'} {reason[:70]}"] += 1
            time.sleep(0.5)
        if unknown_before:
            adapter.ambiguous = True
        else:
            adapter.unload_sent = None
        self.mutations["unload gave up"] += 1

    def mutator(self):
        while self.running:
            with self.lock:
                loaded = [a for a in self.adapters.values() if a.load_acked and not a.unload_sent and not a.ambiguous]
            if len(loaded) < LOADED_TARGET and (self.rng.random() < 0.7 or not loaded):
                self.load(self.new_adapter())
            elif loaded:
                self.unload(self.rng.choice(loaded))
            time.sleep(self.rng.uniform(0.05, 0.3))

    def monitor(self):
        while self.running:
            value, _ = self.server.ctl("adapters", timeout=10)
            if isinstance(value, dict):
                with self.lock:
                    self.next_ids.append((time.time(), value["next_id"], value["version"]))
                    for entry in value["adapters"]:
                        self.table_seen[entry["name"]].add(entry["id"])
                        self.ids_seen[entry["id"]].add(entry["name"])
            else:
                self.monitor_errors += 1
            time.sleep(0.3)

    # ---- chaos

    def heal(self, before_pids=None, timeout=RECOVERY_TIMEOUT):
        """Waits until every expected slot is ready (with new pids after a HUP) and a base request is served."""
        deadline = time.time() + timeout
        self.paused_slots = set()
        while time.time() < deadline and self.server.process.poll() is None:
            workers = self.server.worker_list()
            self.paused_slots |= {w["slot"] for w in workers if w["state"] == "crash-loop"}
            if len(workers) == self.expected_workers and all(w["state"] == "ready" for w in workers):
                if before_pids is None or not ({w["pid"] for w in workers} & before_pids):
                    try:
                        if harness.completion(self.server.port, "tiny", timeout=10)[0] == 200:
                            return True
                    except Exception:
                        pass
            time.sleep(0.05)
        return False

    def chaos(self):
        kinds = ["kill-follower", "kill-leader", "kill-engine", "hup", "ttin", "ttou"]
        plan = []
        time.sleep(min(3, self.seconds / 10))
        while self.running and self.server.process.poll() is None:
            if not plan:
                plan = kinds[:]
                self.rng.shuffle(plan)
                plan += self.rng.choices(["kill-follower", "kill-leader", "kill-engine"], k=2)
            kind = plan.pop(0)
            if kind == "ttin" and self.expected_workers >= MAX_WORKERS:
                kind = "ttou"
            elif kind == "ttou" and self.expected_workers <= MIN_WORKERS:
                kind = "ttin"
            detail, before = "", None
            start = time.time()
            workers = self.server.worker_list()
            if kind in ("kill-follower", "kill-leader"):
                role = "follower" if kind == "kill-follower" else "leader"
                victims = [w for w in workers if w["role"] == role and w["state"] == "ready"]
                if not victims:
                    continue
                victim = self.rng.choice(victims)
                detail = f"pid {victim['pid']} slot {victim['slot']}"
                os.kill(victim["pid"], signal.SIGKILL)
            elif kind == "kill-engine":
                pid = self.server.engine_pid()
                if pid is None:
                    continue
                detail = f"pid {pid}"
                os.kill(pid, signal.SIGKILL)
            elif kind == "hup":
                before = {w["pid"] for w in workers}
                self.server.process.send_signal(signal.SIGHUP)
            elif kind == "ttin":
                self.expected_workers += 1
                self.server.process.send_signal(signal.SIGTTIN)
            elif kind == "ttou":
                self.expected_workers -= 1
                self.server.process.send_signal(signal.SIGTTOU)
            if kind in ("ttin", "ttou"):
                detail = f"to {self.expected_workers} workers"
            time.sleep(0.2)
            healed = self.heal(before)
            took = time.time() - start
            self.actions.append((kind, detail, took, healed))
            paused = f" (crash-loop breaker paused slot {sorted(self.paused_slots)})" if self.paused_slots else ""
            log(f"chaos {kind} {detail}: {'whole again' if healed else 'NOT whole'} after {took:.1f} s{paused}")
            if not healed:
                break
            pause = self.rng.uniform(1, 4)
            deadline = time.time() + pause
            while self.running and time.time() < deadline:
                time.sleep(0.1)
        self.chaos_done.set()

    # ---- the run

    def run(self):
        log(f"starting lorikeet serve --workers 4 ({self.binary}), seed {self.seed}, {self.seconds} s")
        # Kills every ~2.5 s over 3-5 slots can trip a slot's crash-loop breaker (5 deaths
        # within 10 s of starting, in 60 s): a 5 s pause instead of the default 60 s keeps
        # that in a short drill while still exercising the pause and the retry after it.
        self.server = harness.Server(self.binary, self.fixture, 4,
                                     extra=["--max-loras", "8", "--max-cpu-loras", "64", "--max-lora-rank", "64",
                                            "--crash-loop-cooldown-seconds", "5"])
        log(f"ready on 127.0.0.1:{self.server.port}, state {self.server.state}")
        threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(3)]
        threads += [threading.Thread(target=self.mutator, daemon=True), threading.Thread(target=self.monitor, daemon=True)]
        chaos = threading.Thread(target=self.chaos, daemon=True)
        for t in threads + [chaos]:
            t.start()
        deadline = time.time() + self.seconds
        while time.time() < deadline and self.server.process.poll() is None and not self.chaos_done.is_set():
            time.sleep(0.2)
        self.running = False
        chaos.join(RECOVERY_TIMEOUT + 10)
        for t in threads:
            t.join(120)
        log("load and chaos stopped; waiting for the server to be whole")
        final_heal = self.server.process.poll() is None and self.heal()
        results = self.check(final_heal)
        self.report(results)
        failed = sum(1 for ok, _, _ in results if not ok)
        code = self.server.stop(keep_state=failed > 0)
        if failed:
            print(f"server state and log kept in {self.server.state}")
        print(f"server exit code after SIGINT: {code}")
        print(f"{len(results) - failed} passed, {failed} failed")
        return 1 if failed else 0

    # ---- checks

    def check(self, final_heal):
        results = []

        def record(ok, name, detail):
            results.append((bool(ok), name, detail))

        alive = self.server.process.poll() is None
        record(alive, "supervisor alive for the whole drill",
               "running" if alive else f"exited with {self.server.process.returncode}")
        unhealed = [a for a in self.actions if not a[3]]
        record(self.actions and not unhealed, "every chaos action healed (all slots ready, base request served)",
               f"{len(self.actions)} actions, slowest {max((a[2] for a in self.actions), default=0):.1f} s"
               + (f"; not healed: {unhealed[0][0]} {unhealed[0][1]}" if unhealed else ""))
        kinds = {a[0] for a in self.actions}
        wanted = {"kill-follower", "kill-leader", "kill-engine", "hup", "ttin", "ttou"}
        if self.seconds >= 60:
            record(wanted <= kinds, "every kind of fault injected",
                   "missing: " + ", ".join(sorted(wanted - kinds)) if wanted - kinds else ", ".join(sorted(kinds)))
        record(final_heal, "whole again at the end", f"{self.expected_workers} workers ready, base request served"
               if final_heal else "not whole within the timeout")
        if not alive:
            return results

        adapters = list(self.adapters.values())
        expected = {a.name for a in adapters if a.load_acked and not a.unload_sent and not a.ambiguous}
        gone = {a.name for a in adapters if a.unload_acked}
        refused = {a.name for a in adapters if a.load_failed and not a.load_acked}

        # The committed table (supervisor) and its ids.
        table, _ = self.server.ctl("adapters")
        table = table["adapters"] if isinstance(table, dict) else []
        table_ids = {e["name"]: e["id"] for e in table}
        missing = sorted(expected - set(table_ids))
        record(not missing, "every acknowledged load is in the committed table",
               f"{len(expected)} expected" + (f"; missing {missing[:5]}" if missing else ""))

        # Every worker: /v1/models over many fresh connections.
        views, failed_views = collections.Counter(), 0
        for _ in range(12 * self.expected_workers):
            try:
                status, body = harness.request(self.server.port, "GET", "/v1/models", timeout=10)
                names = frozenset(m["id"] for m in __import__("json").loads(body)["data"] if m["id"] != "tiny")
                views[names] += 1
            except Exception:
                failed_views += 1
        bad = [names for names in views if not expected <= names or names & gone]
        record(not bad and not failed_views and views,
               "every acknowledged load on every worker, no acknowledged unload anywhere (/v1/models)",
               f"{sum(views.values())} fresh connections, {len(views)} distinct view(s)"
               + (f", {failed_views} failed" if failed_views else "")
               + (f"; a view lacks {sorted(expected - bad[0])[:5]} / has {sorted(bad[0] & gone)[:5]}" if bad else ""))
        record(len(views) == 1 and set(next(iter(views))) == set(table_ids) if views else False,
               "all workers agree with the committed table",
               "one view, equal to the table" if len(views) == 1 else f"{len(views)} different views")

        # The engine's adapter list over the engine socket.
        # After an engine restart the leader re-adds the table within a reconcile period
        # (1 s): wait for the engine to converge (bounded) before comparing.
        listed, converge_start = None, time.time()
        while True:
            try:
                engine = self.server.engine()
                listed = engine.adapters()
                engine.close()
            except Exception as e:
                listed = None
                error = f"{type(e).__name__}: {e}"
            if (listed is not None and dict(listed) == table_ids) or time.time() - converge_start > 20:
                break
            time.sleep(0.2)
        if listed is None:
            record(False, "engine adapter list readable", error)
        else:
            log(f"engine converged to the committed table {time.time() - converge_start:.1f} s after the drill")
        if listed is not None:
            engine_names = {n for n, _ in listed}
            engine_ids = [i for _, i in listed]
            record(expected <= engine_names and not (engine_names & gone),
                   "engine holds every acknowledged load and no acknowledged unload",
                   f"{len(listed)} in the engine"
                   + (f"; missing {sorted(expected - engine_names)[:5]}" if expected - engine_names else "")
                   + (f"; still has {sorted(engine_names & gone)[:5]}" if engine_names & gone else ""))
            record(dict(listed) == table_ids, "engine list equals the committed table (names and ids)",
                   "equal" if dict(listed) == table_ids else
                   f"engine-only {sorted(set(dict(listed).items()) - set(table_ids.items()))[:4]}, "
                   f"table-only {sorted(set(table_ids.items()) - set(dict(listed).items()))[:4]}")
            record(len(engine_ids) == len(set(engine_ids)), "engine ids unique", f"{len(engine_ids)} ids")

        # Ids: unique in the table, one id per name and one name per id over the whole run.
        ids = list(table_ids.values())
        with self.lock:
            for name, i in table_ids.items():
                self.table_seen[name].add(i)
                self.ids_seen[i].add(name)
            for a in adapters:
                for i in a.ids:
                    self.table_seen[a.name].add(i)
                    self.ids_seen[i].add(a.name)
        renamed = {n: s for n, s in self.table_seen.items() if len(s) > 1}
        shared = {i: s for i, s in self.ids_seen.items() if len(s) > 1}
        record(len(ids) == len(set(ids)) and not renamed and not shared,
               "ids unique (table now, and across the run: one id per name, never reused)",
               f"{len(self.ids_seen)} ids seen over the run"
               + (f"; names with several ids {dict(list(renamed.items())[:3])}" if renamed else "")
               + (f"; ids with several names {dict(list(shared.items())[:3])}" if shared else ""))

        regress = [(a, b) for a, b in zip(self.next_ids, self.next_ids[1:]) if b[1] < a[1] or b[2] < a[2]]
        record(not regress and self.next_ids, "next id and table version never go back (monitor samples)",
               f"{len(self.next_ids)} samples, next id {self.next_ids[-1][1] if self.next_ids else '?'}"
               + (f"; went back: {regress[:2]}" if regress else ""))
        record(not self.anomalies, "every mutation answer matches what was committed",
               "; ".join(self.anomalies[:3]) if self.anomalies else "no contradiction")

        # Refused loads must not have been committed behind the caller's back.
        sneaked = sorted(refused & set(table_ids))
        record(not sneaked, "no adapter whose load was refused is in the table",
               f"{len(refused)} refused" + (f"; present: {sneaked[:5]}" if sneaked else ""))

        # No 200 for an adapter in a request that started after its unload was acknowledged.
        late = [(m, s) for s, _, m, st, _ in self.requests
                if st == 200 and m in self.adapters and self.adapters[m].unload_acked and s > self.adapters[m].unload_acked]
        after_unload = sum(1 for s, _, m, _, _ in self.requests
                           if m in self.adapters and self.adapters[m].unload_acked and s > self.adapters[m].unload_acked)
        record(not late, "no 200 for an adapter after its unload was acknowledged",
               f"{after_unload} requests sent after an acknowledged unload"
               + (f"; served: {late[:3]}" if late else ""))

        # Read-your-writes under faults: a loaded adapter never answers "not found".
        stale = [(m, st) for s, e, m, st, _ in self.requests
                 if st == 404 and m in self.adapters and self.adapters[m].load_acked
                 and s > self.adapters[m].load_acked
                 and (self.adapters[m].unload_sent is None or e < self.adapters[m].unload_sent)]
        record(not stale, "no 404 for an adapter while it was acknowledged loaded",
               f"{sum(1 for _, _, m, _, _ in self.requests if m in self.adapters)} adapter requests"
               + (f"; {len(stale)} 404s, e.g. {stale[:3]}" if stale else ""))

        # After the drill every loaded adapter and the base model answer.
        failures = []
        for name in ["tiny"] + sorted(expected):
            try:
                status, body = harness.completion(self.server.port, name)
                if status != 200:
                    failures.append((name, status, harness.error_message(body)[:60]))
            except Exception as e:
                failures.append((name, type(e).__name__))
        record(not failures, "base model and every loaded adapter served after the drill",
               f"{1 + len(expected)} models" + (f"; failures {failures[:3]}" if failures else ""))
        return results

    def report(self, results):
        print("\n== what the drill did")
        counts = collections.Counter(a[0] for a in self.actions)
        heal = collections.defaultdict(list)
        for kind, _, took, _ in self.actions:
            heal[kind].append(took)
        for kind in sorted(counts):
            times = sorted(heal[kind])
            print(f"  {kind:14s} x{counts[kind]:<3d} healed in median {times[len(times) // 2]:.1f} s, max {times[-1]:.1f} s")
        statuses = collections.Counter(st for _, _, _, st, _ in self.requests)
        base = [r for r in self.requests if r[2] == "tiny"]
        print(f"  requests: {len(self.requests)} ({len(base)} base); by status: "
              + ", ".join(f"{k if k is not None else 'no answer'}: {v}" for k, v in statuses.most_common()))
        print(f"  base-model availability during the drill: "
              f"{100.0 * sum(1 for r in base if r[3] == 200) / max(1, len(base)):.2f}%")
        print(f"  adapters: {len(self.adapters)} names; mutations: "
              + ", ".join(f"{k}: {v}" for k, v in self.mutations.most_common() if k.endswith("ok")))
        print("\n== failures seen (expected under faults unless a check below fails), with reasons")
        reasons = collections.Counter()
        state = self.server.state

        def normal(text):
            text = text.replace(state, "<state>")
            return re.sub(r"'d\d+'|`d\d+`|\bd\d+\b", "<adapter>", text)

        for start, _, model, status, reason in self.requests:
            if status == 200:
                continue
            a = self.adapters.get(model)
            unloaded = a is not None and a.unload_acked is not None and start > a.unload_acked
            kind = "unloaded-adapter" if unloaded else ("base" if model == "tiny" else "adapter")
            reasons[f"{kind} request -> {status or 'no answer'}: {normal(reason)[:90]}"] += 1
        for k, v in self.mutations.most_common():
            if not k.endswith("ok"):
                reasons[f"mutation {normal(k)}"] += v
        for line, count in reasons.most_common(25):
            print(f"  {count:6d}  {line}")
        if not reasons:
            print("  none")
        print("\n== checks")
        for ok, name, detail in results:
            print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("fixture")
    parser.add_argument("seconds", type=float)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    args = parser.parse_args()
    drill = Drill(args.binary, args.fixture, args.seconds, args.seed)
    try:
        sys.exit(drill.run())
    except Exception:
        traceback.print_exc()
        if getattr(drill, "server", None):
            print(f"server log: {drill.server.log_path}")
            drill.server.stop(keep_state=True)
        print("0 passed, 1 failed")
        sys.exit(1)


if __name__ == "__main__":
    main()
