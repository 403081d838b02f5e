"""A real two-node Ray cluster on loopback, started and torn down by the test (only its own processes)."""

from __future__ import annotations

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

from test_run import assert_input_error, run_cli
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
def two_node_cluster(tmp_path: Path, worker_prefix: list[str] = ()):
    """Head and worker started as their own process groups; the address is yielded, both groups killed after.
    The caller's environment must carry the token (the token_env fixture)."""
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
        yield f"127.0.0.1:{port}"
    finally:
        for proc in reversed(procs):
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


def test_trials_run_on_both_nodes(tmp_path, token_env):
    with two_node_cluster(tmp_path) as address:
        proc = run_cli("--address", address, "--space", "smoke", "--dataset", "synthetic", "--num-samples", "4",
                       "--scheduler", "fifo", "--max-epochs", "1", "--results-dir", str(tmp_path / "results"), "--name", "c")
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = load(tmp_path / "results" / "c")
    assert len(results.trials) == 4 and (results.trials["status"] == "completed").all()
    assert results.trials["node_id"].nunique() == 2, results.trials[["trial_id", "node_id", "node_ip"]]
    assert results.test is not None


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

