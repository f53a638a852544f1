"""Fleet fault drill (run through `bin/drill --fleet`; issue 14, docs/CLUSTER.md): a real
3-member etcd cluster and three `lorikeet serve --cluster-endpoints ...` nodes (A, B, C, 2
workers each) on the tiny fixture model, for a fixed time, while

  - 3 client threads send completions (fresh connection each) to random nodes for the base
    model, for loaded adapters and for adapters whose unload was acknowledged;
  - a mutator loads and unloads adapters through random nodes (HTTP and `lorikeet ctl`),
    names never reused (the single-node drill's load/unload logic: calls with no answer are
    retried, "already loaded" after such a call counts as the earlier call's success);
  - a monitor polls every node's `lorikeet ctl adapters` to record every (name, id) seen;
  - a chaos loop, one action at a time, waiting after each until the fleet is whole again:
      kill-node      kill -9 a node's supervisor (its children follow), restart it with its
                     old state directory and port;
      kill-worker    kill -9 a random worker of a random node;
      kill-engine    kill -9 a node's engine;
      kill-agent     kill -9 a node's cluster agent (its etcd client and lease);
      stop-node      SIGSTOP a node (supervisor and children) for 1.5 leases, then SIGCONT:
                     commits meanwhile wait at most its lease; resumed, it must not serve
                     an adapter unloaded meanwhile before it has caught up;
      kill-member    kill -9 one etcd member, restart it 3 s later (quorum holds);
      lose-quorum    kill -9 two etcd members for 1.5 leases (loads 503, base requests
                     must still be served), then restart both: the fleet heals by itself.

Then it checks (FleetDrill.check): every node alive and whole; every node's committed table
the same; every acknowledged load in it on every node and no acknowledged unload; every
node's workers (/v1/models over fresh connections) and engine agree with its table; ids
unique fleet-wide over the whole run (one id per name, one name per id); no mutation answer
contradicted by what was committed; no refused load committed; no 200 from any node for an
adapter in a request sent after its unload was acknowledged; base requests served during the
quorum loss. Prints `N passed, N failed`; exits 1 when a check failed.
Usage: drill_fleet.py BINARY FIXTURE SECONDS [--seed N]
"""
import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import drill  # noqa: E402
import etcd  # noqa: E402
import harness  # noqa: E402

log = drill.log
NODES = ("A", "B", "C")
WORKERS = 2
LEASE = 5                  # --cluster-lease-seconds: short, so fencing happens within a drill
RECOVERY_TIMEOUT = 120
KINDS = ["kill-node", "kill-worker", "kill-engine", "kill-agent", "stop-node", "kill-member", "lose-quorum"]


class FleetDrill(drill.Drill):
    def __init__(self, binary, fixture, seconds, seed):
        super().__init__(binary, fixture, seconds, seed)
        self.nodes = {}                    # name -> harness.Server
        self.down = set()                  # nodes the chaos loop has killed or stopped
        self.quorum_lost = []              # (start, end) of every quorum loss
        self.base_during_quorum_loss = collections.Counter()   # status -> count

    # ---- where a call goes: a random node (one that is down answers nothing, as in production)

    def node(self, rng=None):
        return self.nodes[(rng or self.rng).choice(NODES)]

    def client(self, index):
        rng = random.Random(self.seed * 100 + index)
        while self.running:
            model = self.pick_model(rng)
            node = self.node(rng)
            start = time.time()
            try:
                status, body = harness.completion(node.port, model, timeout=30)
                reason = "" if status == 200 else harness.error_message(body)
            except Exception as e:  # a killed or stopped node
                status, reason = None, type(e).__name__
            end = time.time()
            with self.lock:
                self.requests.append((start, end, model, status, reason))
                if model == "tiny" and any(a <= start and end <= b for a, b in self.quorum_lost_windows()):
                    self.base_during_quorum_loss[status] += 1

    def quorum_lost_windows(self):
        return [(a, b if b is not None else float("inf")) for a, b in self.quorum_lost]

    def http_mutation(self, route, body):
        node = self.node()
        try:
            status, data = harness.request(node.port, "POST", route, body, timeout=60)
            return status, ("" if status == 200 else harness.error_message(data))
        except Exception as e:
            return None, type(e).__name__

    def ctl_mutation(self, *args):
        self.server = self.node()
        return super().ctl_mutation(*args)

    def monitor(self):
        while self.running:
            for name in NODES:
                if name in self.down:
                    continue
                self.observe_table(self.nodes[name])
            time.sleep(0.3)

    # ---- chaos

    def node_whole(self, node):
        if node.process.poll() is not None:
            return False
        workers = node.worker_list()
        if len(workers) != WORKERS or not all(w["state"] == "ready" for w in workers):
            return False
        try:
            if harness.request(node.port, "GET", "/health", timeout=5)[0] != 200:
                return False
            return harness.completion(node.port, "tiny", timeout=10)[0] == 200
        except Exception:
            return False

    def heal(self, before_pids=None, timeout=RECOVERY_TIMEOUT):
        """Waits until every etcd member is healthy and every node is ready, unfenced and serving."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                self.etcd.wait_healthy(timeout=max(1, deadline - time.time()))
            except RuntimeError:
                return False
            if all(self.node_whole(self.nodes[name]) for name in NODES):
                listed, _ = self.nodes["A"].ctl("nodes", timeout=10)
                states = {n["name"]: n["state"] for n in (listed or {}).get("nodes", [])}
                if all(states.get(name) == "ready" for name in NODES):
                    return True
            time.sleep(0.2)
        return False

    def signal_node(self, node, sig):
        for pid in [node.process.pid, *node.children()]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def pause(self, seconds):
        deadline = time.time() + seconds
        while self.running and time.time() < deadline:
            time.sleep(0.1)

    def act(self, kind):
        """Injects one fault; returns a description, or None when it could not be done."""
        name = self.rng.choice(NODES)
        node = self.nodes[name]
        if kind == "kill-node":
            children = list(node.children())
            self.down.add(name)
            node.process.kill()
            node.process.wait()
            deadline = time.time() + 30
            while any(harness.alive(pid) for pid in children) and time.time() < deadline:
                time.sleep(0.05)
            self.pause(self.rng.uniform(1, 4))
            node.start()
            self.down.discard(name)
            return f"node {name} (pid {node.process.pid} now)"
        if kind in ("kill-worker", "kill-engine", "kill-agent"):
            command = {"kill-worker": "worker", "kill-engine": "engine", "kill-agent": "cluster-agent"}[kind]
            pids = [pid for pid, c in node.children().items() if c == command]
            if not pids:
                return None
            pid = self.rng.choice(pids)
            os.kill(pid, signal.SIGKILL)
            return f"node {name} pid {pid}"
        if kind == "stop-node":
            self.down.add(name)
            self.signal_node(node, signal.SIGSTOP)
            time.sleep(LEASE * 1.5)
            self.signal_node(node, signal.SIGCONT)
            self.down.discard(name)
            return f"node {name} for {LEASE * 1.5:.1f} s"
        if kind == "kill-member":
            member = self.rng.randrange(3)
            self.etcd.kill(member)
            time.sleep(3)
            self.etcd.start(member)
            return f"member m{member} for 3 s"
        if kind == "lose-quorum":
            members = self.rng.sample(range(3), 2)
            window = [time.time(), None]
            with self.lock:
                self.quorum_lost.append(window)
            for member in members:
                self.etcd.kill(member)
            time.sleep(LEASE * 1.5)
            for member in members:
                self.etcd.start(member)
            window[1] = time.time()
            return f"members {members} for {LEASE * 1.5:.1f} s"
        raise ValueError(kind)

    def chaos(self):
        plan = []
        time.sleep(min(3, self.seconds / 10))
        while self.running:
            if not plan:
                plan = KINDS[:]
                self.rng.shuffle(plan)
            kind = plan.pop(0)
            start = time.time()
            try:
                detail = self.act(kind)
            except Exception as e:
                detail = f"failed to inject: {e}"
                traceback.print_exc()
            if detail is None:
                continue
            healed = self.heal()
            took = time.time() - start
            self.actions.append((kind, detail, took, healed))
            self.chaos_windows.append((kind, start, time.time()))
            log(f"chaos {kind} {detail}: {'whole again' if healed else 'NOT whole'} after {took:.1f} s")
            if not healed:
                break
            self.pause(self.rng.uniform(1, 3))
        self.chaos_done.set()

    # ---- the run

    def run(self):
        log(f"starting a 3-member etcd cluster and nodes {', '.join(NODES)} ({WORKERS} workers each, "
            f"lease {LEASE} s, {self.binary}), seed {self.seed}, {self.seconds} s")
        self.etcd = etcd.Cluster()
        cluster = f"drill{os.getpid()}"
        for name in NODES:
            self.nodes[name] = harness.Server(
                self.binary, self.fixture, WORKERS,
                extra=["--max-loras", "8", "--max-cpu-loras", "64", "--max-lora-rank", "64",
                       "--cluster-endpoints", self.etcd.endpoints, "--cluster-name", cluster,
                       "--node-name", name, "--cluster-lease-seconds", str(LEASE)])
            log(f"node {name} ready on 127.0.0.1:{self.nodes[name].port}, state {self.nodes[name].state}")
        self.server = self.nodes["A"]
        self.drive([], alive=lambda: True, chaos_join=RECOVERY_TIMEOUT + 60)
        log("load and chaos stopped; waiting for the fleet to be whole")
        results = self.check(self.heal())

        def stop(failed):
            for name in NODES:
                code = self.nodes[name].stop(keep_state=failed)
                if failed:
                    print(f"node {name}: state and log kept in {self.nodes[name].state}")
                print(f"node {name} exit code after SIGINT: {code}")
            self.etcd.shutdown(keep=failed)
            if failed:
                print(f"etcd data and logs kept in {self.etcd.directory}")
        return self.conclude(results, stop)

    # ---- checks

    def check(self, final_heal):
        results = []

        def record(ok, name, detail):
            results.append((bool(ok), name, detail))

        dead = [name for name in NODES if self.nodes[name].process.poll() is not None]
        record(not dead, "every node's supervisor alive at the end (restarted after each kill)",
               "all running" if not dead else f"exited: {dead}")
        self.record_actions_healed(record, "etcd healthy, every node ready, unfenced, serving")
        kinds = {a[0] for a in self.actions}
        if self.seconds >= 240:
            record(set(KINDS) <= kinds, "every kind of fault injected",
                   "missing: " + ", ".join(sorted(set(KINDS) - kinds)) if set(KINDS) - kinds else ", ".join(sorted(kinds)))
        record(final_heal, "whole again at the end", "every node ready and serving" if final_heal else "not whole within the timeout")
        if dead:
            return results

        adapters = list(self.adapters.values())
        expected = {a.name for a in adapters if a.load_acked and not a.unload_sent and not a.ambiguous}
        gone = {a.name for a in adapters if a.unload_acked}
        refused = {a.name for a in adapters if a.load_failed and not a.load_acked}

        # Every node's committed table: the same everywhere once idle (each node applies the
        # fleet's table from etcd's watch; wait a little for the last commit to arrive).
        tables, waited = {}, time.time()
        while True:
            for name in NODES:
                value, _ = self.nodes[name].ctl("adapters")
                tables[name] = {e["name"]: e["id"] for e in value["adapters"]} if isinstance(value, dict) else None
            if len({json.dumps(t, sort_keys=True) for t in tables.values()}) == 1 or time.time() - waited > 20:
                break
            time.sleep(0.3)
        reference = tables["A"] or {}
        record(all(t == reference for t in tables.values()) and tables["A"] is not None,
               "every node's committed table is the same (names and ids)",
               f"{len(reference)} adapters" if all(t == reference for t in tables.values())
               else "; ".join(f"{n}: {len(t) if t is not None else 'unreadable'}" for n, t in tables.items()))
        for name in NODES:
            table = tables[name] or {}
            missing = sorted(expected - set(table))
            present = sorted(gone & set(table))
            record(not missing and not present, f"node {name}: every acknowledged load committed, no acknowledged unload",
                   f"{len(expected)} expected" + (f"; missing {missing[:5]}" if missing else "")
                   + (f"; unloaded but present {present[:5]}" if present else ""))

        # Every node's workers over fresh connections, and its engine.
        for name in NODES:
            node, table = self.nodes[name], tables[name] or {}
            views, failures = collections.Counter(), collections.Counter()
            for _ in range(8 * WORKERS):
                try:
                    status, body = harness.request(node.port, "GET", "/v1/models", timeout=10)
                    if status != 200:
                        failures[f"{status} {body[:120]!r}"] += 1
                        continue
                    views[frozenset(m["id"] for m in json.loads(body)["data"] if m["id"] != "tiny")] += 1
                except Exception as error:
                    failures[f"{type(error).__name__}: {str(error)[:120]}"] += 1
            record(list(views) == [frozenset(table)] and not failures,
                   f"node {name}: every worker lists exactly its table (/v1/models)",
                   f"{sum(views.values())} fresh connections, {len(views)} distinct view(s)"
                   + (f", {sum(failures.values())} failed ({'; '.join(f'{n} x {k}' for k, n in failures.most_common(3))})"
                      if failures else ""))
            if failures:
                # Which processes listen on the node's port (a stale listener takes its share of
                # new connections): evidence for the log.
                try:
                    listeners = subprocess.run(["ss", "-ltnpH", f"sport = :{node.port}"], capture_output=True, text=True)
                    print(f"node {name}: listeners on port {node.port}:\n{listeners.stdout or listeners.stderr}", flush=True)
                except OSError as error:
                    print(f"node {name}: cannot list the listeners ({error})", flush=True)
            listed, started = None, time.time()
            while time.time() - started < 20:
                try:
                    engine = node.engine()
                    listed = dict(engine.adapters())
                    engine.close()
                except Exception:
                    listed = None
                if listed == table:
                    break
                time.sleep(0.2)
            record(listed == table, f"node {name}: engine holds exactly its table (names and ids)",
                   "equal" if listed == table else f"engine {len(listed or {})}, table {len(table)}")

        # Ids unique fleet-wide over the whole run.
        conflicts, detail = self.id_conflicts(list(tables.values()), adapters)
        record(not conflicts, "ids unique fleet-wide over the run (one id per name, never reused)",
               f"{len(self.ids_seen)} ids seen on 3 nodes" + detail)
        self.record_answers_and_late_200s(record, refused, set(reference), "is committed",
                                          "no node answered 200 for an adapter after its unload was acknowledged")
        if any(a[0] == "lose-quorum" for a in self.actions):
            served = self.base_during_quorum_loss[200]
            failed = sum(c for s, c in self.base_during_quorum_loss.items() if s != 200)
            record(served > 0 and failed == 0,
                   "base-model requests served while etcd had no quorum",
                   f"{served} served, {failed} not ({dict(self.base_during_quorum_loss)})")
        acked = sum(1 for a in adapters if a.load_acked)
        record(acked > 0, "loads were acknowledged during the drill", f"{acked} loads, {len(gone)} unloads acknowledged")
        return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("fixture")
    parser.add_argument("seconds", type=int)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    fleet = FleetDrill(args.binary, args.fixture, args.seconds, seed)
    try:
        return fleet.run()
    except Exception:
        traceback.print_exc()
        for name, node in fleet.nodes.items():
            print(f"node {name} log: {node.log_path}")
            node.stop(keep_state=True)
        if getattr(fleet, "etcd", None):
            fleet.etcd.shutdown(keep=True)
            print(f"etcd data and logs kept in {fleet.etcd.directory}")
        print("0 passed, 1 failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
