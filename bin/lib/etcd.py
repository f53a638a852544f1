"""A real etcd cluster for bin/drill --fleet: `members` etcd processes (Debian's
`etcd-server`, /usr/bin/etcd) on free loopback client and peer ports with temporary data
directories. Members can be killed (-9), stopped (SIGSTOP), resumed and restarted by index.

Each member runs under the same small shell watchdog as Tests/LorikeetTestSupport/
EtcdCluster.swift: the shell `exec`s etcd (so the pid held here is etcd's own), and a
background subshell kills etcd when this script's process is gone, so a drill that crashes
or is killed leaves no etcd behind. `shutdown()` kills every member and removes the data.
"""
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

import harness

BINARY = "/usr/bin/etcd"

# The member dies with this script (shared with the Swift tests' EtcdCluster).
WATCHDOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "etcd-watchdog.sh")


class Cluster:
    def __init__(self, members=3, timeout=60):
        if not os.access(BINARY, os.X_OK):
            raise RuntimeError(f"{BINARY} is missing: install Debian's etcd-server (bin/test does)")
        ports = set()
        while len(ports) < members * 2:
            ports.add(harness.free_port())
        ports = sorted(ports)
        self.client_ports, self.peer_ports = ports[:members], ports[members:]
        self.directory = tempfile.mkdtemp(prefix="lk-etcd-")
        self.processes = [None] * members
        for index in range(members):
            self.start(index)
        self.wait_healthy(timeout=timeout)

    @property
    def endpoints(self):
        return ",".join(f"http://127.0.0.1:{port}" for port in self.client_ports)

    def start(self, index):
        """Starts member `index` (again, with its data directory: a restart)."""
        cluster = ",".join(f"m{i}=http://127.0.0.1:{port}" for i, port in enumerate(self.peer_ports))
        client = f"http://127.0.0.1:{self.client_ports[index]}"
        peer = f"http://127.0.0.1:{self.peer_ports[index]}"
        arguments = [BINARY, "--name", f"m{index}", "--data-dir", os.path.join(self.directory, f"m{index}.data"),
                     "--listen-client-urls", client, "--advertise-client-urls", client,
                     "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                     "--initial-cluster", cluster, "--initial-cluster-state", "new",
                     "--initial-cluster-token", f"lorikeet-drill-{self.client_ports[0]}",
                     "--logger", "zap", "--log-level", "warn"]
        log = open(os.path.join(self.directory, f"m{index}.log"), "a")
        self.processes[index] = subprocess.Popen(["/bin/sh", WATCHDOG, str(os.getpid()), *arguments],
                                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()

    def running(self, index):
        process = self.processes[index]
        return process is not None and process.poll() is None

    def kill(self, index):
        """kill -9 member `index` and reap it."""
        process = self.processes[index]
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
            process.wait()
        self.processes[index] = None

    def healthy(self, index):
        """Whether member `index` answers /health with "health":"true" (it has a leader)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.client_ports[index]}/health", timeout=3) as response:
                return response.status == 200 and b'"true"' in response.read()
        except Exception:
            return False

    def wait_healthy(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if all(self.healthy(i) for i in range(len(self.processes)) if self.running(i)):
                return True
            time.sleep(0.2)
        raise RuntimeError(f"etcd not healthy within {timeout} s; logs in {self.directory}")

    def shutdown(self, keep=False):
        for index in range(len(self.processes)):
            self.kill(index)
        if not keep:
            shutil.rmtree(self.directory, ignore_errors=True)
