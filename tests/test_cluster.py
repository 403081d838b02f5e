"""A real Ray cluster of two nodes on loopback (tune.loopback_cluster), started and torn down by the test (only its own
processes), that refuses node-local storage and then loses its worker node mid-search (benchmarks/bench_chaos.py's
smoke); the driver-side checks that need no cluster (address, resources) with Ray's answers patched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cxr.errors import InputError
from tune import cluster
from tune.loopback_cluster import LoopbackCluster
from tune.loopback_cluster import free_port as _free_port
from tune.results import load

REPO = Path(__file__).resolve().parents[1]


def _node_ids(trial_dir: Path) -> list[str]:
    result = trial_dir / "result.json"
    return [json.loads(line)["node_id"] for line in result.read_text().splitlines()] if result.exists() else []


HIDING = shutil.which("unshare") is not None and os.geteuid() == 0


@pytest.mark.slow
@pytest.mark.scale
def test_node_local_storage_is_refused_then_a_search_losing_its_worker_node_loses_nothing(tmp_path, capsys):
    """One loopback cluster (a 1-CPU head, one 1-CPU worker node), two runs. The worker nodes get their own empty tmpfs
    at one results folder (needs root and unshare): storage there is truly node-local and the run must stop before
    any trial. Then benchmarks/bench_chaos.py's smoke search on storage every node sees: one trial per node, the
    worker node killed once its trial reported an epoch and replaced a second later."""
    from benchmarks import bench_chaos

    hidden = tmp_path / "hidden"
    hidden.mkdir()
    hide = ("unshare", "--mount", "--propagation", "private", "sh", "-c", f'mount -t tmpfs none "{hidden}" && exec "$0" "$@"')
    args = bench_chaos.parse_args(["--smoke"])
    with LoopbackCluster(tmp_path / "cluster", workers=1, head_cpus=args.head_cpus,
                         worker_prefix=hide if HIDING else ()) as cluster:
        if HIDING:  # the driver's check alone (no training stack: the CLI turns its InputError into one line, exit 2)
            code = (f"import ray\nfrom tune import cluster\nray.init(address='{cluster.address}', logging_level='ERROR')\n"
                    f"cluster.check_storage({str(hidden / 'local')!r})")
            proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cluster.env, capture_output=True,
                                  text=True, timeout=120)
            assert proc.returncode != 0 and "InputError" in proc.stderr, proc.stderr[-2000:]
            assert "node-local" in proc.stderr and "--storage-path" in proc.stderr
            assert not any(hidden.iterdir())
        head = cluster.head_node_id()
        on_worker = lambda root: any(n != head for d in (root / "tune").glob("trial_*") for n in _node_ids(d)[:1])  # noqa: E731
        row, root = bench_chaos.search_on(cluster, args, True, tmp_path / "chaos", ready=on_worker)
        bench_chaos.print_rows({"node killer": row}, args)
    assert row["faults injected"] == 1 and row["trials lost"] == 0, row  # (an epoch may be trained twice: Ray had
    assert row["trials"] == row["trials finished"] == args.trials and row["final model"], row  # not committed it)
    assert "| node killer |" in capsys.readouterr().out
    results = load(root)
    assert len(results.trials) == 2 and (results.trials["status"] == "completed").all()
    first_nodes = results.epochs.sort_values("epoch").groupby("trial_id")["node_id"].first()
    assert first_nodes.nunique() == 2, "the two trials did not start on both nodes"
    assert results.metrics is not None
    moved = [g for _, g in results.epochs.groupby("trial_id") if g["node_id"].iloc[0] != head]
    assert len(moved) == 1 and list(moved[0]["epoch"]) == [1, 2, 3], "the lost trial repeated or skipped an epoch"
    assert moved[0]["node_id"].iloc[-1] != moved[0]["node_id"].iloc[0], "the lost trial did not move"
    # every process of the cluster is gone (ended by process id): none names its address
    assert not subprocess.run(["pgrep", "-f", cluster.address], capture_output=True, text=True).stdout.strip()


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
