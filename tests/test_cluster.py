"""A real two-node Ray cluster on loopback, started and torn down by the test (only its own processes); the driver-side
checks that need no cluster (address, resources) with Ray's answers patched."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from cxr.errors import InputError
from tune import cluster
from tune.loopback_cluster import RAY, make_token, node_args
from tune.loopback_cluster import free_port as _free_port
from tune.results import load

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def token_env(tmp_path, monkeypatch) -> dict[str, str]:
    env = make_token(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # this process and the driver it starts inherit it
    return env


@contextmanager
def two_node_cluster(tmp_path: Path, worker_prefix: list[str] = (), handles: list | None = None):
    """Head and worker started as their own process groups; the address is yielded, both groups killed after
    (handles, if given, receives [head, worker] processes). The caller's environment must carry the token
    (the token_env fixture)."""
    port = _free_port()
    env = dict(os.environ)
    logs = [open(tmp_path / "head.log", "w"), open(tmp_path / "worker.log", "w")]
    head = subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--include-dashboard=false", *node_args(1)],
                            env=env, stdout=logs[0], stderr=subprocess.STDOUT, start_new_session=True)
    procs = [head]
    try:
        _wait_for(lambda: _nodes_up(port, env, procs) >= 1)
        worker = subprocess.Popen([*worker_prefix, RAY, "start", "--address", f"127.0.0.1:{port}", *node_args(1)],
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


def _head_node_id(address: str) -> str:
    code = (f"import ray; ray.init(address='{address}', logging_level='ERROR'); "
            "print([n['NodeID'] for n in ray.nodes() if n['Alive'] and 'node:__internal_head__' in n['Resources']][0])")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout.split()[-1]


def _node_ids(trial_dir: Path) -> list[str]:
    result = trial_dir / "result.json"
    return [json.loads(line)["node_id"] for line in result.read_text().splitlines()] if result.exists() else []


HIDING = shutil.which("unshare") is not None and os.geteuid() == 0


@pytest.mark.slow
def test_node_local_storage_is_refused_then_a_lost_node_s_trial_finishes_on_the_head(tmp_path, token_env):
    """One cluster, two runs. The worker node gets its own empty tmpfs at one results folder (needs root and
    unshare): storage there is truly node-local and the run must stop before any trial. Then a run on storage both
    nodes see: one 1-CPU trial per node, the worker node killed once its trial reported an epoch."""
    hidden, shared = tmp_path / "hidden", tmp_path / "shared"
    hidden.mkdir()
    hide = ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'mount -t tmpfs none "{hidden}" && exec "$0" "$@"']
    handles: list[subprocess.Popen] = []
    with two_node_cluster(tmp_path, worker_prefix=hide if HIDING else (), handles=handles) as address:
        if HIDING:  # the driver's check alone (no training stack: the CLI turns its InputError into one line, exit 2)
            code = (f"import ray\nfrom tune import cluster\nray.init(address='{address}', logging_level='ERROR')\n"
                    f"cluster.check_storage({str(hidden / 'local')!r})")
            proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
            assert proc.returncode != 0 and "InputError" in proc.stderr, proc.stderr[-2000:]
            assert "node-local" in proc.stderr and "--storage-path" in proc.stderr
            assert not any(hidden.iterdir())
        head = _head_node_id(address)
        args = ["--space", "smoke", "--dataset", "synthetic", "--num-samples", "2", "--trial-scheduler", "fifo",
                "--max-epochs", "3", "--image-size", "32", "--final-members", "1", "--results-dir", str(shared), "--name", "lost"]
        driver = subprocess.Popen([sys.executable, "-m", "tune.run", "--address", address, *args], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        tune_dir = shared / "lost" / "tune"
        deadline = time.monotonic() + 300
        while not any(n != head for d in tune_dir.glob("trial_*") for n in _node_ids(d)[:1]):
            assert driver.poll() is None and time.monotonic() < deadline, "no trial reported from the worker node"
            time.sleep(0.3)
        os.killpg(handles[1].pid, signal.SIGKILL)  # the worker node, its raylet and its trial processes
        out, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, out[-4000:]
    results = load(shared / "lost")
    assert len(results.trials) == 2 and (results.trials["status"] == "completed").all()
    first_nodes = results.epochs.sort_values("epoch").groupby("trial_id")["node_id"].first()
    assert first_nodes.nunique() == 2, "the two trials did not start on both nodes"
    assert results.metrics is not None
    moved = [g for _, g in results.epochs.groupby("trial_id") if g["node_id"].iloc[0] != head]
    assert len(moved) == 1 and list(moved[0]["epoch"]) == [1, 2, 3], "the lost trial repeated or skipped an epoch"
    assert moved[0]["node_id"].iloc[-1] == head


NODES = [{"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}}, {"Alive": True, "Resources": {"CPU": 4.0}},
         {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]  # a dead node holds nothing


@pytest.mark.parametrize("cpus, gpus, workers, fits", [
    (1, 0, 1, True), (4, 0, 1, True), (5, 0, 1, False),  # the largest node has 4 CPUs
    (2, 0, 3, True), (3, 0, 3, False),  # 3 workers of 2 CPUs fit in 8 CPUs (and the coordinator's share), of 3 do not
    (1, 0.25, 1, True), (1, 1, 1, True), (1, 2, 1, False),  # one GPU on the largest GPU node
])
def test_a_trial_no_node_can_hold_fails_fast_naming_the_flag(monkeypatch, cpus, gpus, workers, fits):
    monkeypatch.setattr(cluster.ray, "nodes", lambda: NODES)
    if fits:
        cluster.check_resources(cpus, gpus, workers)
        return
    with pytest.raises(InputError, match="--gpus-per-trial" if gpus > 1 else "--cpus-per-trial"):
        cluster.check_resources(cpus, gpus, workers)


@pytest.fixture
def no_ray_init(monkeypatch):
    """ray.init waits minutes where nothing answers: these answers must come before it is called."""
    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(cluster.ray, "init", refuse)


def test_an_address_where_nothing_listens_fails_before_connecting_naming_it(no_ray_init):
    port = _free_port()  # free a moment ago: nothing listens there
    with pytest.raises(InputError, match=f"127.0.0.1:{port}"):
        cluster.connect(f"127.0.0.1:{port}")


def test_address_auto_without_a_started_cluster_says_how_to_start_one(monkeypatch, tmp_path, no_ray_init):
    monkeypatch.setattr(cluster, "get_ray_address_file", lambda temp_dir: str(tmp_path / "ray_current_cluster"))
    with pytest.raises(InputError, match="ray start --head"):
        cluster.connect("auto")
    (tmp_path / "ray_current_cluster").write_text("127.0.0.1:1\n")  # a cluster that was started here and is gone
    with pytest.raises(InputError, match=r"auto \(127.0.0.1:1\)"):
        cluster.connect("auto")


def test_cluster_yaml_installs_exactly_the_runtime_dependencies_of_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    import shlex

    wanted = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    line = next(line for line in (REPO / "cluster.yaml").read_text().splitlines() if "pip install" in line)
    installed = shlex.split(line.split("pip install", 1)[1])
    assert installed == wanted, "cluster.yaml's setup_commands must list pyproject.toml's dependencies as they are"
