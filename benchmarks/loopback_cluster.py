"""A Ray cluster of real nodes on 127.0.0.1 for the fault benchmarks: a head and worker nodes, each a `ray start
--block` in a session of its own, token auth with a token of its own (never ~/.ray), workers killed and added one by
one, and every process it started ended by process id (never `ray stop`, which would end every Ray on the machine).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_token(folder: Path) -> dict[str, str]:
    """A token generated the way the README says, in a home of its own (never ~/.ray): the environment every process
    of the cluster (head, workers, driver) needs. tests/test_cluster.py uses it too."""
    home = folder / "token-home"
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run([RAY, "get-auth-token", "--generate"], env={**os.environ, "HOME": str(home)},
                   capture_output=True, check=True, timeout=60)
    token = home / ".ray" / "auth_token"
    token.chmod(0o600)  # Ray writes it readable by everyone
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


class LoopbackCluster:
    """with LoopbackCluster(folder, workers=3) as cluster: ... cluster.address, cluster.env (for the driver)."""

    def __init__(self, folder: Path, workers: int, head_cpus: int = 0, worker_cpus: int = 1):
        self.folder, self.worker_cpus = folder, worker_cpus
        folder.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **make_token(folder)}
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.started: list[subprocess.Popen] = []  # every `ray start` process, each a session leader
        self.workers: list[subprocess.Popen] = []  # the live worker nodes
        self.names: dict[int, str] = {}  # pid -> node name (its log file)
        try:
            self._start(["--head", "--port", str(self.port), "--include-dashboard=false"], head_cpus, "head")
            self._wait_for_nodes(1)
            for k in range(workers):  # one at a time: raylets starting together on 2 cores miss Ray's 30 s wait
                self.add_worker()
                self._wait_for_nodes(2 + k)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "LoopbackCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_worker(self) -> subprocess.Popen:
        proc = self._start(["--address", self.address], self.worker_cpus, f"worker-{len(self.started)}")
        self.workers.append(proc)
        return proc

    def kill_worker(self, proc: subprocess.Popen) -> None:
        """SIGKILL every process of the node (its raylet, object store, workers, trials): a machine lost."""
        self.workers.remove(proc)
        _kill_session(proc)

    def close(self) -> None:
        for proc in reversed(self.started):
            _kill_session(proc)

    def alive_nodes(self) -> int:
        code = (f"import ray; ray.init(address='{self.address}', logging_level='ERROR'); "
                "print(sum(n['Alive'] for n in ray.nodes()))")
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=60)
        return int(out.stdout.split()[-1]) if out.returncode == 0 and out.stdout.strip() else 0

    def _start(self, args: list[str], cpus: int, name: str) -> subprocess.Popen:
        # two raylets on one IP: each node needs agent and metrics ports of its own
        node = ["--num-cpus", str(cpus), "--node-ip-address", "127.0.0.1", "--block",
                "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port())]
        with open(self.folder / f"{name}.log", "w") as log:
            proc = subprocess.Popen([RAY, "start", *args, *node], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.names[proc.pid] = name
        self.started.append(proc)
        return proc

    def _wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.alive_nodes() < count:
            exited = [self.names[p.pid] for p in [self.started[0], *self.workers] if p.poll() is not None]
            if exited or time.monotonic() > deadline:
                logs = "".join((self.folder / f"{name}.log").read_text()[-1500:] for name in exited)
                raise RuntimeError(f"the loopback cluster did not come up ({len(exited)} node(s) exited):\n{logs}")
            time.sleep(1)


def _kill_session(proc: subprocess.Popen) -> None:
    """Every process of the session `proc` leads, by process id (the raylet's children stay in its session)."""
    pids = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    for pid in {int(p) for p in pids} | {proc.pid}:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
