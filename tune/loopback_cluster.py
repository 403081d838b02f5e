"""A Ray cluster of real nodes on 127.0.0.1, set up from the driver's side, for what must lose a machine (the chaos and
fault benchmarks, tests/test_cluster.py): a head and worker nodes, each a `ray start --block` in a session of its own,
token auth with a token of its own (never ~/.ray), workers killed and added one by one, and every process it started
ended by process id (never `ray stop`, which would end every Ray on the machine). tune.loopback keeps a run's own
local cluster on loopback; this starts clusters of several nodes there.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tune.loopback import LOCAL_ONLY_ENV, write_private_token

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_token(folder: Path) -> dict[str, str]:
    """A token of the cluster's own under folder (never ~/.ray): the environment every process of the cluster (head,
    workers, driver) needs."""
    token = write_private_token(folder / "token-home" / ".ray" / "auth_token")
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


def cluster_env(folder: Path) -> dict[str, str]:
    """This process's environment for the cluster's processes: its own token, and never the single-node switch a
    local run in this process may have set (tune.loopback.bind_to_loopback): worker nodes would refuse to join."""
    return {k: v for k, v in os.environ.items() if k != LOCAL_ONLY_ENV} | create_token(folder)


def node_args(cpus: int) -> list[str]:
    """`ray start` flags of one node on 127.0.0.1; two raylets on one IP need agent and metrics ports of their own."""
    return ["--num-cpus", str(cpus), "--node-ip-address", "127.0.0.1", "--block",
            "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port())]


class LoopbackCluster:
    """with LoopbackCluster(folder, workers=3) as cluster: ... cluster.address, cluster.env (for the driver)."""

    def __init__(self, folder: Path, workers: int, head_cpus: int = 0, worker_cpus: int = 1,
                 worker_prefix: tuple[str, ...] = ()):
        """worker_prefix: a command each worker node's `ray start` runs under (e.g. unshare, for a file system view of
        its own)."""
        self.folder, self.worker_cpus, self.worker_prefix = folder, worker_cpus, tuple(worker_prefix)
        folder.mkdir(parents=True, exist_ok=True)
        self.env = cluster_env(folder)
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

    def __enter__(self) -> LoopbackCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_worker(self) -> subprocess.Popen:
        proc = self._start(["--address", self.address], self.worker_cpus, f"worker-{len(self.started)}",
                           self.worker_prefix)
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

    def head_node_id(self) -> str:
        code = (f"import ray; ray.init(address='{self.address}', logging_level='ERROR'); print([n['NodeID'] for n in "
                "ray.nodes() if n['Alive'] and 'node:__internal_head__' in n['Resources']][0])")
        return subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=60,
                              check=True).stdout.split()[-1]

    def _start(self, args: list[str], cpus: int, name: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
        with open(self.folder / f"{name}.log", "w") as log:
            proc = subprocess.Popen([*prefix, RAY, "start", *args, *node_args(cpus)], env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
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
