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

With --hostile, a hostile client (class Hostile) also sends, at a steady rate, every
class of request the server must refuse with its own 4xx (issue 12: oversized names, paths,
batches, bodies, stops, messages, prompts; bad characters; text/plain; a foreign Host;
paths out of the prefix; malformed JSON), raw TCP garbage and garbage admin-socket frames,
and holds slowloris connections; then three more checks: every hostile request got its
expected answer (a 5xx or reset only when an overlapping chaos action explains it), no
process restart or shared channel closed that the chaos loop did not cause (server log
against the pids it killed), and no failed legitimate request that a chaos action does not
explain.

Then it checks the invariants (see Drill.check), prints what it did, the failures seen
with their reasons, and `N passed, N failed`; exits 1 when a check failed.
Usage: drill.py BINARY FIXTURE SECONDS [--seed N] [--hostile]
"""
import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import sys
import tempfile
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


def outcome_unknown(status, reason):
    """A mutation answer that does not say whether it committed: no answer at all, a fleet
    commit whose etcd write outcome is unknown (503), or one committed but not confirmed by
    every node in time (504). A retry answering "already loaded" / 404 is then that commit."""
    return status is None or "outcome is unknown" in reason or "committed at" in reason


class Drill:
    def __init__(self, binary, fixture, seconds, seed, hostile=False):
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
        self.chaos_windows = []            # (kind, start, healed at) of every chaos action
        self.chaos_killed = set()          # pids the chaos loop kill -9ed
        self.hostile = Hostile(self, seed) if hostile else None

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
                    self.mutations["load ok (an earlier try with no answer or an unknown outcome had committed it)"] += 1
                else:
                    self.anomalies.append(f"{adapter.name}: load refused ({self.last_reason}), yet committed")
                return
            if outcome_unknown(status, reason):
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
        """Unloads until answered; a 404 after a try with no answer (or an unknown outcome) means that try committed."""
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
                adapter.unload_acked = now   # gone everywhere: a 404 waits for the fleet as a 200 does
                if unknown_before:
                    self.mutations["unload ok (an earlier try with no answer or an unknown outcome had committed it)"] += 1
                else:
                    self.anomalies.append(f"{adapter.name}: unload answered 404 while acknowledged loaded ({reason[:60]})")
                return
            if outcome_unknown(status, reason):
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
            value = self.observe_table(self.server)
            if value:
                with self.lock:
                    self.next_ids.append((time.time(), value["next_id"], value["version"]))
            time.sleep(0.3)

    def observe_table(self, server):
        """One `ctl adapters` of `server`, folded into the run's (name, id) record; None when it failed."""
        value, _ = server.ctl("adapters", timeout=10)
        if not isinstance(value, dict):
            self.monitor_errors += 1
            return None
        with self.lock:
            for entry in value["adapters"]:
                self.table_seen[entry["name"]].add(entry["id"])
                self.ids_seen[entry["id"]].add(entry["name"])
        return value

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
                self.chaos_killed.add(victim["pid"])
                os.kill(victim["pid"], signal.SIGKILL)
            elif kind == "kill-engine":
                pid = self.server.engine_pid()
                if pid is None:
                    continue
                detail = f"pid {pid}"
                self.chaos_killed.add(pid)
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
            self.chaos_windows.append((kind, start, time.time()))
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
        log(f"starting lorikeet serve --workers 4 ({self.binary}), seed {self.seed}, {self.seconds} s"
            + (", with a hostile client" if self.hostile else ""))
        # Kills every ~2.5 s over 3-5 slots can trip a slot's crash-loop breaker (5 deaths
        # within 10 s of starting, in 60 s): a 5 s pause instead of the default 60 s keeps
        # that in a short drill while still exercising the pause and the retry after it.
        self.server = harness.Server(self.binary, self.fixture, 4,
                                     extra=["--max-loras", "8", "--max-cpu-loras", "64", "--max-lora-rank", "64",
                                            "--crash-loop-cooldown-seconds", "5"],
                                     environment={"LORIKEET_RUNTIME_LORA_ALLOWED_PATH_PREFIXES":
                                                  f"{self.fixture}:{self.hostile.allowed}"} if self.hostile else None)
        log(f"ready on 127.0.0.1:{self.server.port}, state {self.server.state}")
        extra = []
        if self.hostile:
            extra = [threading.Thread(target=self.hostile.loop, daemon=True),
                     threading.Thread(target=self.hostile.slowloris, daemon=True)]
        self.drive(extra, alive=lambda: self.server.process.poll() is None, chaos_join=RECOVERY_TIMEOUT + 10)
        log("load and chaos stopped; waiting for the server to be whole")
        final_heal = self.server.process.poll() is None and self.heal()
        results = self.check(final_heal)
        if self.hostile:
            results += self.check_hostile()

        def stop(failed):
            code = self.server.stop(keep_state=failed)
            if failed:
                print(f"server state and log kept in {self.server.state}")
            print(f"server exit code after SIGINT: {code}")
            if self.hostile:
                self.hostile.cleanup()
        return self.conclude(results, stop)

    def drive(self, extra_threads, alive, chaos_join):
        """Runs the clients, the mutator, the monitor, `extra_threads` and the chaos loop for
        the drill's time (less if `alive()` turns false or the chaos loop gave up), then stops them."""
        threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(3)]
        threads += [threading.Thread(target=self.mutator, daemon=True), threading.Thread(target=self.monitor, daemon=True)]
        threads += extra_threads
        chaos = threading.Thread(target=self.chaos, daemon=True)
        for t in threads + [chaos]:
            t.start()
        deadline = time.time() + self.seconds
        while time.time() < deadline and alive() and not self.chaos_done.is_set():
            time.sleep(0.2)
        self.running = False
        chaos.join(chaos_join)
        for t in threads:
            t.join(120)

    def conclude(self, results, stop):
        """Prints the report and `N passed, N failed`; `stop(failed)` stops what the drill
        started (keeping state and logs when a check failed). Returns the exit code."""
        self.report(results)
        failed = sum(1 for ok, _, _ in results if not ok)
        stop(failed > 0)
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
        self.record_actions_healed(record, "all slots ready, base request served")
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
        conflicts, detail = self.id_conflicts([table_ids], adapters)
        record(len(ids) == len(set(ids)) and not conflicts,
               "ids unique (table now, and across the run: one id per name, never reused)",
               f"{len(self.ids_seen)} ids seen over the run" + detail)

        regress = [(a, b) for a, b in zip(self.next_ids, self.next_ids[1:]) if b[1] < a[1] or b[2] < a[2]]
        record(not regress and self.next_ids, "next id and table version never go back (monitor samples)",
               f"{len(self.next_ids)} samples, next id {self.next_ids[-1][1] if self.next_ids else '?'}"
               + (f"; went back: {regress[:2]}" if regress else ""))
        self.record_answers_and_late_200s(record, refused, set(table_ids), "is in the table",
                                          "no 200 for an adapter after its unload was acknowledged")

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

    def record_actions_healed(self, record, whole):
        """Every chaos action was followed by the system being whole again (`whole` says what that means)."""
        unhealed = [a for a in self.actions if not a[3]]
        record(self.actions and not unhealed, f"every chaos action healed ({whole})",
               f"{len(self.actions)} actions, slowest {max((a[2] for a in self.actions), default=0):.1f} s"
               + (f"; not healed: {unhealed[0][0]} {unhealed[0][1]}" if unhealed else ""))

    def id_conflicts(self, tables, adapters):
        """Folds the final `tables` ({name: id} each) and the ids the mutator saw into the
        run's record; returns (whether any name had several ids or any id several names over
        the run, detail text)."""
        with self.lock:
            for table in tables:
                for name, i in (table or {}).items():
                    self.table_seen[name].add(i)
                    self.ids_seen[i].add(name)
            for a in adapters:
                for i in a.ids:
                    self.table_seen[a.name].add(i)
                    self.ids_seen[i].add(a.name)
        renamed = {n: s for n, s in self.table_seen.items() if len(s) > 1}
        shared = {i: s for i, s in self.ids_seen.items() if len(s) > 1}
        detail = ((f"; names with several ids {dict(list(renamed.items())[:3])}" if renamed else "")
                  + (f"; ids with several names {dict(list(shared.items())[:3])}" if shared else ""))
        return bool(renamed or shared), detail

    def record_answers_and_late_200s(self, record, refused, committed, where, late_label):
        """The checks every drill shares: no mutation answer contradicted by the table, no
        refused load committed, no 200 for an adapter in a request sent after its unload was
        acknowledged."""
        record(not self.anomalies, "every mutation answer matches what was committed",
               "; ".join(self.anomalies[:3]) if self.anomalies else "no contradiction")
        sneaked = sorted(refused & committed)
        record(not sneaked, f"no adapter whose load was refused {where}",
               f"{len(refused)} refused" + (f"; present: {sneaked[:5]}" if sneaked else ""))
        after = [(s, m, st) for s, _, m, st, _ in self.requests
                 if m in self.adapters and self.adapters[m].unload_acked
                 and s > self.adapters[m].unload_acked]
        late = [(m, s) for s, m, st in after if st == 200]
        record(not late, late_label,
               f"{len(after)} requests sent after an acknowledged unload" + (f"; served: {late[:3]}" if late else ""))

    def chaos_cause(self, start, end, status, reason):
        """The chaos action that explains a failed request over [start, end] (None when none
        does): one that overlapped it (from 0.5 s before the action to CHAOS_MARGIN s after
        it healed) and can cause that failure: an engine error needs an engine kill; a
        connection closed without an answer needs a worker that died or retired (a kill,
        HUP, TTOU); any other 5xx (the leader away) any action."""
        text = (reason or "").lower()
        if "timeout" in text:
            return None   # a request that hung: no fault explains that (and it spans many actions)
        if status is None:
            kinds = {"kill-follower", "kill-leader", "hup", "ttou"}
        elif "engine" in text:
            kinds = {"kill-engine"}
        else:
            kinds = None
        for kind, begun, healed in self.chaos_windows:
            if (kinds is None or kind in kinds) and start <= healed + CHAOS_MARGIN and end >= begun - 0.5:
                return f"{kind} at {begun - log.start:.1f}s"
        return None

    def legitimate(self, end, model):
        """Whether a request ending at `end` must succeed: for the base model, or for an
        adapter whose unload had not been sent (nor acknowledged) before it ended."""
        a = self.adapters.get(model)
        return a is None or not ((a.unload_sent is not None and a.unload_sent < end)
                                 or (a.unload_acked is not None and a.unload_acked < end))

    def legit_failures(self):
        """Legitimate requests that failed without a chaos action that explains it."""
        failed = []
        for start, end, model, status, reason in self.requests:
            if status == 200 or not self.legitimate(end, model):
                continue
            if not self.chaos_cause(start, end, status, reason):
                failed.append((start, model, status, reason))
        return failed

    def unexplained_exits(self):
        """Process exits and closed shared channels in the server log the chaos loop did not
        cause: a worker exit logged at error level (not a retirement) whose pid was not kill
        -9ed by chaos, a `killing worker` decision about any other pid, engine restarts beyond
        the engine kills, a control channel the supervisor closed on an error, and an engine
        connection the engine closed for any reason but its peer going away (a worker's death
        is judged by the exit lines)."""
        pattern = re.compile(r"^\S+ (\w+) lorikeet\.(\w+): (.*)\[Lorikeet\w+\] (.*)$")
        unexplained, engine_exits = [], []
        with open(self.server.log_path, errors="replace") as f:
            for line in f:
                match = pattern.match(line.rstrip("\n"))
                if not match:
                    continue
                level, process, metadata, message = match.groups()
                if process == "engine" and message.startswith("closing engine connection") \
                        and not re.search(r"reset by peer|Broken pipe|truncated|stream ended inside a frame|connection closed", message):
                    unexplained.append(f"engine: {message[:120]}")
                if process != "supervisor":
                    continue
                if message.startswith("closing control channel"):
                    unexplained.append(f"{metadata.strip()}: {message[:120]}")
                pid = re.search(r"\bpid=(\d+)", metadata)
                pid = int(pid.group(1)) if pid else None
                if message.startswith("killing worker") and pid not in self.chaos_killed:
                    unexplained.append(f"pid {pid}: {message[:120]}")
                elif re.match(r"worker (killed by signal|exited with status)", message):
                    if level != "info" and pid not in self.chaos_killed:
                        unexplained.append(f"pid {pid}: {message[:120]}")
                elif message.startswith("engine ") and "restarting" in message:
                    engine_exits.append(message[:120])
        kills = sum(1 for a in self.actions if a[0] == "kill-engine")
        if len(engine_exits) > kills:
            unexplained += [f"engine: {m}" for m in engine_exits[kills:]]
        return unexplained, len(engine_exits)

    def hostile_cause(self, start, end, outcome):
        """chaos_cause for a hostile result (outcome "no answer (…)" or "5xx: message")."""
        return self.chaos_cause(start, end, None if outcome.startswith("no answer") else 500, outcome)

    def check_hostile(self):
        results = []
        hostile = self.hostile
        wrong = [(n, o) for n, s, e, o, ok in hostile.results if ok is False]
        unexcused = [(n, o) for n, s, e, o, ok in hostile.results if ok is None and not self.hostile_cause(s, e, o)]
        excused = sum(1 for n, s, e, o, ok in hostile.results if ok is None and self.hostile_cause(s, e, o))
        results.append((bool(hostile.results) and not wrong and not unexcused,
                        "every hostile request got its expected 4xx (garbage: 400 or close), a 5xx or reset only when a chaos action explains it",
                        f"{len(hostile.results)} sent in {len({r[0] for r in hostile.results})} classes, "
                        f"{excused} 5xx/resets explained by chaos"
                        + (f"; {len(wrong)} wrong answers, e.g. {wrong[:3]}" if wrong else "")
                        + (f"; {len(unexcused)} 5xx/resets outside chaos, e.g. {unexcused[:3]}" if unexcused else "")))
        unexplained, engine_restarts = self.unexplained_exits()
        killed_workers = sum(1 for a in self.actions if a[0] in ("kill-follower", "kill-leader"))
        results.append((not unexplained, "no process restart or shared channel closed that the chaos loop did not cause (none by clients)",
                        f"{killed_workers} worker and {engine_restarts} engine restarts, all after chaos kills"
                        if not unexplained else f"{len(unexplained)} unexplained: {unexplained[:4]}"))
        failed = self.legit_failures()
        legit = sum(1 for _, e, m, _, _ in self.requests if self.legitimate(e, m))
        results.append((not failed, "no failed legitimate request that a chaos action does not explain",
                        f"{legit} legitimate requests"
                        + (f"; {len(failed)} failed, e.g. "
                           + "; ".join(f"{m} -> {st or 'no answer'} {r[:60]} at {t - log.start:.1f}s" for t, m, st, r in failed[:3])
                           if failed else "")))
        return results

    def report_hostile(self):
        hostile = self.hostile
        print("\n== hostile traffic (class: sent, outcomes)")
        by_class = collections.defaultdict(collections.Counter)
        for name, start, end, outcome, ok in hostile.results:
            cause = None if ok is not None else self.hostile_cause(start, end, outcome)
            tag = "" if ok else (" [WRONG]" if ok is False else f" [{cause}]" if cause else " [NOT explained by chaos]")
            by_class[name][outcome + tag] += 1
        for name, _ in hostile.classes:
            outcomes = by_class.get(name, {})
            print(f"  {name:40s} {sum(outcomes.values()):5d}: "
                  + ", ".join(f"{k} x{v}" for k, v in sorted(outcomes.items(), key=lambda kv: -kv[1])))
        lifetimes = sorted(hostile.slow_lifetimes)
        print(f"  {'slowloris (partial headers, 1 line/' + str(SLOWLORIS_TRICKLE) + ' s)':40s} "
              f"{hostile.slow['opened']:5d}: " + ", ".join(f"{k} x{v}" for k, v in hostile.slow.items() if k != "opened")
              + (f"; lifetime median {lifetimes[len(lifetimes) // 2]:.0f} s, max {lifetimes[-1]:.0f} s" if lifetimes else ""))
        covered, cursor = 0.0, 0.0
        for _, begun, healed in sorted(self.chaos_windows, key=lambda w: w[1]):
            lo, hi = max(begun - 0.5, cursor), healed + CHAOS_MARGIN
            covered += max(0.0, hi - lo)
            cursor = max(cursor, hi)
        print(f"  chaos windows (action start - 0.5 s to healed + {CHAOS_MARGIN:.0f} s) cover "
              f"{100 * covered / max(1.0, self.seconds):.0f}% of the run; an engine error is excused only by an "
              f"engine kill ({sum(1 for w in self.chaos_windows if w[0] == 'kill-engine')}), a reset only by a worker "
              f"kill/HUP/TTOU")
        causes = collections.Counter()
        for start, end, model, status, reason in self.requests:
            if status == 200 or not self.legitimate(end, model):
                continue
            cause = self.chaos_cause(start, end, status, reason)
            causes[cause.split(" at ")[0] if cause else "NOT explained"] += 1
        print("  legitimate failures by the chaos action that explains them: "
              + (", ".join(f"{k}: {v}" for k, v in causes.most_common()) or "none"))
        legit = [e - s for s, e, m, st, _ in self.requests if st == 200]
        legit.sort()
        if legit:
            print(f"  legitimate 200s: {len(legit)}, latency median {legit[len(legit) // 2] * 1000:.0f} ms, "
                  f"p99 {legit[int(len(legit) * 0.99)] * 1000:.0f} ms, max {legit[-1] * 1000:.0f} ms")

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
        if self.hostile:
            self.report_hostile()
        print("\n== checks")
        for ok, name, detail in results:
            print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}")


# ---- --hostile: a client that keeps sending what the server must refuse cleanly

HOSTILE_INTERVAL = 0.25     # one hostile request (or raw/admin probe) every this many seconds
SLOWLORIS_CONNECTIONS = 16  # connections kept open with never-finished headers
SLOWLORIS_TRICKLE = 2.0     # seconds between the header lines each of them sends
CHAOS_MARGIN = 2.0          # seconds after a chaos action healed in which a 5xx or reset is still the fault's
MIB = 1024 * 1024


def raw_http(port, method, path, body=b"", headers=None, timeout=60, chunked=False):
    """One request on a fresh connection with full control of the bytes: returns
    (status or None, response body, transport error name or "")."""
    headers = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json", "Connection": "close",
               **(headers or {})}
    if chunked:
        headers["Transfer-Encoding"] = "chunked"
    elif body or method == "POST":
        headers["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    error = ""
    try:
        try:
            sock.sendall(head.encode())
            if chunked:
                for offset in range(0, len(body), 256 * 1024):
                    part = body[offset:offset + 256 * 1024]
                    sock.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
                sock.sendall(b"0\r\n\r\n")
            else:
                sock.sendall(body)
        except OSError as e:   # the server may answer (413) and close before the body is all sent
            error = type(e).__name__
        data = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            if not data:
                return None, b"", type(e).__name__
        match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
        if not match:
            return None, data[:200], error or "no HTTP answer"
        return int(match.group(1)), data.split(b"\r\n\r\n", 1)[-1], ""
    finally:
        sock.close()


class Hostile:
    """The hostile client of `--hostile`: every class of request the server must refuse with
    its own 4xx (issue 12), one every HOSTILE_INTERVAL s in shuffled rounds, plus raw TCP
    garbage, garbage frames on the admin socket, and slowloris connections (own thread).
    Every answer is judged against the class's expectation; a 5xx or a connection reset is
    excused only when it overlapped a chaos action (see Drill.chaos_windows)."""

    def __init__(self, drill, seed):
        self.drill = drill
        self.rng = random.Random(seed * 7 + 1)
        self.results = []          # (class, start, end, outcome, ok: True/False/None=transport or 5xx)
        self.slow = collections.Counter()
        self.slow_lifetimes = []
        # An extra allowed prefix holding a symlink to a real adapter outside it, and a
        # copy of that adapter next to it (reachable with `..`): following either would load.
        self.private = tempfile.mkdtemp(prefix="lk-drill-hostile-")
        self.allowed = os.path.join(self.private, "allowed")
        self.outside = os.path.join(self.private, "outside")
        os.makedirs(self.allowed)
        shutil.copytree(os.path.join(drill.fixture, "adapters", "plain"), os.path.join(self.outside, "plain"))
        os.symlink(os.path.join(self.outside, "plain"), os.path.join(self.allowed, "escape"))
        self.classes = self.build()

    def cleanup(self):
        shutil.rmtree(self.private, ignore_errors=True)

    def build(self):
        """(class name, sender) pairs; a sender returns (outcome text, ok)."""
        plain = os.path.join(self.drill.fixture, "adapters", "plain")
        huge = "n" * (5 * MIB)
        enc = lambda value: json.dumps(value).encode()  # noqa: E731
        load, unload = "/v1/load_lora_adapter", "/v1/unload_lora_adapter"
        bodies = {
            "huge-name": enc({"lora_name": huge, "lora_path": plain}),
            "huge-path": enc({"lora_name": "hostile-path", "lora_path": plain + "/" + huge}),
            "huge-unload": enc({"lora_name": huge}),
            "batch": enc({"items": [{"load": {"lora_name": f"hostile-b{i}", "lora_path": plain}} for i in range(300)]}),
            "over-limit": enc({"lora_name": "x" * (9 * MIB), "lora_path": plain}),
            "stops": enc({"model": "tiny", "prompt": "hi", "max_tokens": 1, "stop": [f"stop{i}" for i in range(1000)]}),
            "long-stop": enc({"model": "tiny", "prompt": "hi", "max_tokens": 1, "stop": ["s" * 10_000]}),
            "messages": enc({"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}] * 5000}),
            "stop-ids": enc({"model": "tiny", "prompt": "hi", "max_tokens": 1, "stop_token_ids": [1] * 1000}),
            "prompt": enc({"model": "tiny", "prompt": "a " * (2 * MIB), "max_tokens": 1}),
        }
        bad_names = ["hostile\u0000nul", "hostile\nforged", "hostile\u202etxt"]
        bad_paths = [  # (label, path): each must be refused as "outside the configured allowed prefixes"
            ("/etc", "/etc"),
            ("..", self.allowed + "/../outside/plain"),       # `..` out of the prefix, to a real adapter
            ("../..", self.allowed + "/../../etc"),
            ("symlink", os.path.join(self.allowed, "escape")),  # symlink inside the prefix -> that adapter
        ]
        wrong = [(load, b'{"lora_name": "x", "lora_path": '), (load, b"[1, 2"), (load, b"\xff\xfe{}"),
                 (load, enc({"lora_name": 5, "lora_path": plain})), (load, enc({"lora_name": "x", "lora_path": ["a"]})),
                 (unload, enc({"lora_name": None})), (load, enc("just a string")),
                 ("/v1/completions", enc({"model": "tiny", "prompt": "x", "max_tokens": "many"})),
                 ("/v1/chat/completions", enc({"model": "tiny", "messages": "not a list"}))]
        turns = collections.Counter()

        def turn(items):   # each list's variants in turn
            turns[id(items)] += 1
            return items[turns[id(items)] % len(items)]

        def http(path, body, status, param=None, word=None, **kw):
            return lambda: self.judge(raw_http(self.drill.server.port, "POST", path, body, **kw), status, param, word)

        def bad_name():
            body = enc({"lora_name": turn(bad_names), "lora_path": plain})
            return self.judge(raw_http(self.drill.server.port, "POST", load, body), 400, "lora_name")

        def bad_path():
            label, path = turn(bad_paths)
            body = enc({"lora_name": f"hostile-p{turns[id(bad_paths)]}", "lora_path": path})
            outcome, ok = self.judge(raw_http(self.drill.server.port, "POST", load, body), 400, "lora_path", "outside the configured allowed prefixes")
            return f"{outcome} ({label})", ok

        def missing_path():
            body = enc({"lora_name": "hostile-missing", "lora_path": os.path.join(self.allowed, "missing", "x")})
            return self.judge(raw_http(self.drill.server.port, "POST", load, body), 400, "lora_path", "must exist and be accessible")

        def malformed():
            path, body = turn(wrong)
            return self.judge(raw_http(self.drill.server.port, "POST", path, body), 400)

        return [
            ("load 5 MiB lora_name", http(load, bodies["huge-name"], 400, "lora_name")),
            ("load 5 MiB lora_path", http(load, bodies["huge-path"], 400, "lora_path")),
            ("unload 5 MiB lora_name", http(unload, bodies["huge-unload"], 400, "lora_name")),
            ("name with NUL/newline/U+202E", bad_name),
            ("NUL in lora_path", http(load, enc({"lora_name": "hostile-nul", "lora_path": plain + "\u0000/../x"}),
                                      400, "lora_path")),
            ("batch of 300 items", http("/v1/lora_adapters/batch", bodies["batch"], 400, "items")),
            ("body over 8 MiB", http(load, bodies["over-limit"], 413)),
            ("body over 8 MiB, chunked", http(load, bodies["over-limit"], 413, chunked=True)),
            ("stop with 1000 entries", http("/v1/completions", bodies["stops"], 400, "stop")),
            ("stop with a 10 kB entry", http("/v1/completions", bodies["long-stop"], 400, "stop")),
            ("5000 messages", http("/v1/chat/completions", bodies["messages"], 400, "messages")),
            ("1000 stop_token_ids", http("/v1/completions", bodies["stop-ids"], 400, "stop_token_ids")),
            ("4 MiB prompt", http("/v1/completions", bodies["prompt"], 400, word="context length")),
            ("Content-Type: text/plain", http(load, enc({"lora_name": "hostile-csrf", "lora_path": plain}), 415,
                                              headers={"Content-Type": "text/plain"})),
            ("Host: evil.example", http(load, enc({"lora_name": "hostile-rebind", "lora_path": plain}), 403,
                                        headers={"Host": "evil.example"})),
            ("path outside the prefix / .. / symlink", bad_path),
            ("missing path under the prefix", missing_path),
            ("malformed JSON, wrong types", malformed),
            ("raw TCP garbage, then close", self.garbage),
            ("admin socket garbage frame", self.admin_garbage),
        ]

    def judge(self, answer, status, param=None, word=None):
        got, body, error = answer
        if got is None:
            return f"no answer ({error})", False if "Timeout" in error else None
        try:
            err = json.loads(body)["error"]
            message, got_param = err.get("message", ""), err.get("param")
        except Exception:
            message, got_param = None, None
        if got >= 500:
            return f"{got}: {(message or body[:60].decode(errors='replace'))[:60]}", None
        if got != status:
            return f"{got} instead of {status}: {(message or '')[:60]}", False
        if message is None:
            return f"{got} without an OpenAI error envelope", False
        if param is not None and got_param != param:
            return f"{got} with param {got_param!r} instead of {param!r}", False
        if word is not None and word not in message:
            return f"{got} without '{word}': {message[:60]}", False
        if len(body) >= 4096:
            return f"{got} echoing {len(body)} bytes", False
        return f"{got}" + (f" {param}" if param else "") + (f" '{word}'" if word else ""), True

    def garbage(self):
        """Random bytes (sometimes after a plausible request line), our side closed: the server
        answers 400 or closes; it must not hang on the connection."""
        data = bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(1, 4096)))
        if self.rng.random() < 0.5:
            data = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999999999999999\r\n" + data
        sock = socket.create_connection(("127.0.0.1", self.drill.server.port), timeout=10)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except TimeoutError:
            return "still open 10 s after our close", False
        except OSError as e:
            return f"reset ({type(e).__name__})", True   # an answer and close with our bytes unread
        finally:
            sock.close()
        match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
        if not answer:
            return "closed without an answer", True
        if match and match.group(1).startswith(b"4"):
            return f"answered {match.group(1).decode()}, closed", True
        return f"answered {answer[:40]!r}", False if not match or not match.group(1).startswith(b"5") else None

    def admin_garbage(self):
        """A garbage frame on the admin socket: the supervisor closes the connection, says nothing."""
        frames = [("length over the limit", b"\x00\xff\xff\xff\xff" + b"x" * 64),
                  ("not protobuf", b"\x00\x00\x00\x00\x08\xff\xff\xff\xff\xff\xff\xff\xff"),
                  ("compressed flag", b"\x01\x00\x00\x00\x02ab"),
                  ("random bytes", bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(5, 512))))]
        label, data = frames[self.rng.randrange(len(frames))]
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(10)
        try:
            sock.connect(os.path.join(self.drill.server.state, "admin.sock"))
            if data[0] == 0 and len(data) >= 5 and struct.unpack(">I", data[1:5])[0] + 5 > len(data) \
                    and struct.unpack(">I", data[1:5])[0] <= 16 * MIB:
                data = b"\x01" + data[1:]   # a random frame that would wait for more bytes: make it invalid at once
            sock.sendall(data)
            answer = sock.recv(65536)
        except TimeoutError:
            return f"still open after 10 s ({label})", False
        except OSError as e:
            return f"reset ({type(e).__name__}) ({label})", True
        finally:
            sock.close()
        return (f"closed ({label})", True) if not answer else (f"answered {len(answer)} bytes ({label})", False)

    def loop(self):
        plan = []
        next_at = time.time()
        while self.drill.running:
            if not plan:
                plan = self.classes[:]
                self.rng.shuffle(plan)
            name, send = plan.pop()
            start = time.time()
            try:
                outcome, ok = send()
            except Exception as e:
                outcome, ok = f"no answer ({type(e).__name__})", None
            end = time.time()
            with self.drill.lock:
                self.results.append((name, start, end, outcome, ok))
            next_at = max(next_at + HOSTILE_INTERVAL, end)
            while self.drill.running and time.time() < next_at:
                time.sleep(0.02)

    def slowloris(self):
        """Keeps SLOWLORIS_CONNECTIONS connections sending one header line every
        SLOWLORIS_TRICKLE s and never finishing; records how the server ends them."""
        open_ = []   # (socket, opened at, next line at)
        line = 0
        while self.drill.running:
            now = time.time()
            while len(open_) < SLOWLORIS_CONNECTIONS:
                try:
                    sock = socket.create_connection(("127.0.0.1", self.drill.server.port), timeout=2)
                    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                    sock.setblocking(False)
                    open_.append((sock, now, now + SLOWLORIS_TRICKLE))
                    self.slow["opened"] += 1
                except OSError as e:
                    self.slow[f"connect failed ({type(e).__name__})"] += 1
                    break
            keep = []
            for sock, opened, due in open_:
                ended = None
                try:
                    data = sock.recv(4096)
                    ended = "answered and closed by the server" if data else "closed by the server"
                except BlockingIOError:
                    pass
                except OSError as e:
                    ended = f"reset ({type(e).__name__})"
                if ended is None and now >= due:
                    line += 1
                    try:
                        sock.send(b"X-Slow-%d: a\r\n" % line)
                        due = now + SLOWLORIS_TRICKLE
                    except OSError as e:
                        ended = f"reset ({type(e).__name__})"
                if ended:
                    self.slow[ended] += 1
                    self.slow_lifetimes.append(now - opened)
                    sock.close()
                else:
                    keep.append((sock, opened, due))
            open_ = keep
            time.sleep(0.1)
        for sock, opened, _ in open_:
            self.slow["still open at the end (closed by us)"] += 1
            self.slow_lifetimes.append(time.time() - opened)
            sock.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("fixture")
    parser.add_argument("seconds", type=float)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    parser.add_argument("--hostile", action="store_true", help="mix a hostile client into the drill")
    args = parser.parse_args()
    drill = Drill(args.binary, args.fixture, args.seconds, args.seed, hostile=args.hostile)
    try:
        sys.exit(drill.run())
    except Exception:
        traceback.print_exc()
        if getattr(drill, "server", None):
            print(f"server log: {drill.server.log_path}")
            drill.server.stop(keep_state=True)
        if drill.hostile:
            drill.hostile.cleanup()
        print("0 passed, 1 failed")
        sys.exit(1)


if __name__ == "__main__":
    main()
