"""A real two-node Ray cluster on loopback, started and torn down by the test (only its own processes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from test_run import REPO, assert_input_error, run_cli
from tune.results import load

RAY = str(Path(sys.executable).with_name("ray"))
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_args() -> list[str]:
    return ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--block",
            "--dashboard-agent-listen-port", str(_free_port()), "--metrics-export-port", str(_free_port())]


def make_token(tmp_path: Path) -> dict[str, str]:
    """A token of our own, generated the way Ray's docs say, in a temporary home (never ~/.ray): the environment
    every process of the cluster (head, worker, driver) needs."""
    home = tmp_path / "token-home"
    home.mkdir(exist_ok=True)
    subprocess.run([RAY, "get-auth-token", "--generate"], env={**os.environ, "HOME": str(home)},
                   capture_output=True, check=True, timeout=60)
    token = home / ".ray" / "auth_token"
    assert token.is_file()
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


@pytest.fixture
def token_env(tmp_path, monkeypatch) -> dict[str, str]:
    env = make_token(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the driver (run_cli) inherits it
    return env


@contextmanager
def two_node_cluster(tmp_path: Path, worker_prefix: list[str] = (), handles: list | None = None):
    """Head and worker started as their own process groups; the address is yielded, both groups killed after
    (handles, if given, receives [head, worker] processes). The caller's environment must carry the token
    (the token_env fixture)."""
    port = _free_port()
    env = dict(os.environ)
    logs = [open(tmp_path / "head.log", "w"), open(tmp_path / "worker.log", "w")]
    head = subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--include-dashboard=false", *_node_args()],
                            env=env, stdout=logs[0], stderr=subprocess.STDOUT, start_new_session=True)
    procs = [head]
    try:
        _wait_for(lambda: _nodes_up(port, env, procs) >= 1)
        worker = subprocess.Popen([*worker_prefix, RAY, "start", "--address", f"127.0.0.1:{port}", *_node_args()],
                                  env=env, stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(worker)
        _wait_for(lambda: _nodes_up(port, env, procs) >= 2)
        if handles is not None:
            handles += procs
        yield f"127.0.0.1:{port}"
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for log in logs:
            log.close()


def _nodes_up(port: int, env: dict, procs: list[subprocess.Popen]) -> int:
    if any(p.poll() is not None for p in procs):
        raise RuntimeError(f"a ray start process exited early (code {[p.poll() for p in procs]}): see head.log/worker.log")
    code = (f"import ray; ray.init(address='127.0.0.1:{port}', logging_level='ERROR'); "
            "print(sum(n['Alive'] for n in ray.nodes()))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    return int(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 and proc.stdout.strip() else 0


def _wait_for(condition, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the Ray node did not come up")
        time.sleep(1)


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare to hide a path from one node")
def test_node_local_storage_fails_before_any_trial(tmp_path, token_env):
    results = tmp_path / "results"
    results.mkdir()
    # the worker node gets its own empty tmpfs at the results path: storage there is truly node-local
    hide = ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'mount -t tmpfs none "{results}" && exec "$0" "$@"']
    with two_node_cluster(tmp_path, worker_prefix=hide) as address:
        proc = run_cli("--address", address, "--space", "smoke", "--dataset", "synthetic",
                       "--results-dir", str(results), "--name", "local", timeout=180)
    assert_input_error(proc, "node-local", "--storage-path")
    assert not any(results.iterdir())


def _head_node_id(address: str) -> str:
    code = (f"import ray; ray.init(address='{address}', logging_level='ERROR'); "
            "print([n['NodeID'] for n in ray.nodes() if n['Alive'] and 'node:__internal_head__' in n['Resources']][0])")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout.split()[-1]


def _node_ids(trial_dir: Path) -> list[str]:
    result = trial_dir / "result.json"
    return [json.loads(line)["node_id"] for line in result.read_text().splitlines()] if result.exists() else []


def test_trials_run_on_both_nodes_and_those_of_a_lost_node_finish_on_the_head(tmp_path, token_env):
    # one 1-CPU trial per node; the worker node is killed once its trial reported an epoch
    handles: list[subprocess.Popen] = []
    args = ["--space", "smoke", "--dataset", "synthetic", "--num-samples", "2", "--scheduler", "fifo", "--max-epochs", "3",
            "--image-size", "32", "--final-seeds", "1", "--results-dir", str(tmp_path / "results"), "--name", "lost"]
    with two_node_cluster(tmp_path, handles=handles) as address:
        head = _head_node_id(address)
        driver = subprocess.Popen([sys.executable, "-m", "tune.run", "--address", address, *args], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        tune_dir = tmp_path / "results" / "lost" / "tune"
        deadline = time.monotonic() + 300
        while not any(n != head for d in tune_dir.glob("trial_*") for n in _node_ids(d)[:1]):
            assert driver.poll() is None and time.monotonic() < deadline, "no trial reported from the worker node"
            time.sleep(0.3)
        os.killpg(handles[1].pid, signal.SIGKILL)  # the worker node, its raylet and its trial processes
        out, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, out[-4000:]
    results = load(tmp_path / "results" / "lost")
    assert len(results.trials) == 2 and (results.trials["status"] == "completed").all()
    first_nodes = results.epochs.sort_values("epoch").groupby("trial_id")["node_id"].first()
    assert first_nodes.nunique() == 2, "the two trials did not start on both nodes"
    assert results.test is not None
    moved = [g for _, g in results.epochs.groupby("trial_id") if g["node_id"].iloc[0] != head]
    assert len(moved) == 1 and list(moved[0]["epoch"]) == [1, 2, 3], "the lost trial repeated or skipped an epoch"
    assert moved[0]["node_id"].iloc[-1] == head

