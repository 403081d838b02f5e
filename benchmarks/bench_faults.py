"""Does a run lose trials or train epochs twice when a trial's process, its driver or a node is killed?

Faults injected with real processes into real runs; prints faults injected, trials lost, epochs repeated.

One search (smoke space, synthetic data, FIFO, `--trials` trials of `--epochs` epochs, 2 CPUs) takes all four kinds:
  worker  SIGKILL of a running trial's process, N times (each at a new epoch of some trial);
  failing a trial whose model exists only on the driver, so it fails on every attempt (N such trials, by BASELINES);
  driver  SIGKILL of the driver N times during the final stage, each followed by --resume;
  node    (--node) the same search on a two-node loopback cluster whose worker node is killed mid-search.
Trials lost = trials neither completed nor the injected failing ones; epochs repeated = an epoch number reported
twice by one trial; members retrained = final members trained again after a driver kill.

    python benchmarks/bench_faults.py [--faults 1] [--node]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, print_markdown
from tune.loopback_cluster import LoopbackCluster

SPACE = '''
import timm
from timm.models import register_model

@register_model
def cxr_fault_net(pretrained=False, **kwargs):
    return timm.create_model("test_efficientnet", **kwargs)

BASELINES = [{"backbone": "cxr_fault_net", "lr": 0.003}] * FAILING

def space(trial):
    trial.suggest_categorical("backbone", ["cxr_fault_net", "test_efficientnet"])
    trial.suggest_float("lr", 1e-3, 1e-2, log=True)
    return {"pretrained": False, "batch_size": 32}
'''


def _epochs(trial_dir: Path) -> list[dict]:
    result = trial_dir / "result.json"
    return [json.loads(line) for line in result.read_text().splitlines()] if result.exists() else []


def _start(args: list[str], env: dict, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "tune.run", *args], cwd=REPO, env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _kill_workers(driver: subprocess.Popen, tune_dir: Path, faults: int) -> int:
    """Kill a trial process each time some trial reports a new epoch, until `faults` kills or the search ends."""
    killed, seen = 0, 0
    while killed < faults and driver.poll() is None and not (tune_dir.parent / "final-members").exists():
        reported = sum(len(_epochs(d)) for d in tune_dir.glob("trial_*"))
        if reported > seen:
            seen = reported
            pids = subprocess.run(["pgrep", "-s", str(driver.pid), "-f", "ray::ImplicitFunc"], capture_output=True, text=True).stdout.split()
            if pids:
                os.kill(int(pids[0]), signal.SIGKILL)
                killed += 1
        time.sleep(0.2)
    return killed


def _kill_driver_in_final(args: list[str], env: dict, driver: subprocess.Popen, root: Path, faults: int) -> tuple[int, int]:
    """Kill the driver once a final member is saved, resume; repeat. Returns (kills, members retrained)."""
    kills, retrained, trained = 0, 0, set()
    while kills < faults:
        while driver.poll() is None and len(set(p.name for p in (root / "final-members").glob("seed-*"))) <= len(trained):
            time.sleep(0.2)
        if driver.poll() is not None:
            break
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        kills += 1
        trained = {p.name for p in (root / "final-members").glob("seed-*")}
        log = root.parent / f"resume-{kills}.log"
        driver = _start([*args, "--resume"], env, log)
        driver.wait()
        kept = re.search(r"\((\d+) already trained\)", log.read_text())
        retrained += len(trained) - (int(kept.group(1)) if kept else 0)
    driver.wait()
    return kills, retrained if driver.returncode == 0 else -1


def run(faults: int, trials: int, epochs: int, address: str | None, node_kill=None) -> dict:
    from tune.results import load

    work = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    (work / "space.py").write_text(SPACE.replace("FAILING", str(faults)))
    members = faults + 1
    args = ["--space", str(work / "space.py"), "--dataset", "synthetic", "--image-size", "32", "--trial-scheduler", "fifo",
            "--num-samples", str(trials), "--max-epochs", str(epochs), "--final-members", str(members), "--no-robustness",
            "--cpus-per-trial", "2" if address is None else "1", "--results-dir", str(work), "--name", "f"]
    if address:
        args += ["--address", address]
    env = {**os.environ, "CXR_CACHE_DIR": str(work / "cache")}
    start = time.monotonic()
    driver = _start(args, env)
    worker_kills = node_kill(driver, work / "f" / "tune") if node_kill else _kill_workers(driver, work / "f" / "tune", faults)
    driver_kills, retrained = _kill_driver_in_final(args, env, driver, work / "f", faults if not node_kill else 0)
    results = load(work / "f")
    failing = results.trials["backbone"] == "cxr_fault_net"
    lost = int(((results.trials["status"] != "completed") & ~failing).sum())
    repeated = int(results.epochs.groupby("trial_id")["epoch"].apply(lambda e: e.duplicated().sum()).sum())
    return {"trial kills" if not node_kill else "node kills": worker_kills, "always-failing trials": int(failing.sum()),
            "failing trials reported as error": int((results.trials.loc[failing, "status"] == "error").sum()),
            "driver kills in the final stage": driver_kills, "trials lost": lost, "epochs repeated": repeated,
            "members retrained": retrained, "final members": results.metrics["n_members"] if results.metrics else 0,
            "wall s": round(time.monotonic() - start)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=1, help="faults of each kind")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--node", action="store_true", help="also the two-node loopback cluster with its worker node killed")
    args = parser.parse_args()
    rows = {"one machine": run(args.faults, args.trials, args.epochs, None)}
    if args.node:
        rows["two nodes, worker node killed"] = _node_run(args)
    print_markdown([{"run": name, **row} for name, row in rows.items()])
    print(f"trials lost: {sum(r['trials lost'] for r in rows.values())}, epochs repeated: "
          f"{sum(r['epochs repeated'] for r in rows.values())}")


def _node_run(args) -> dict:
    with LoopbackCluster(Path(tempfile.mkdtemp(prefix="bench-faults-cluster-")), workers=1, head_cpus=1) as cluster:
        os.environ.update({k: cluster.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")})

        def kill_node(driver, tune_dir: Path) -> int:
            while driver.poll() is None and sum(len(_epochs(d)) for d in tune_dir.glob("trial_*")) < 2:
                time.sleep(0.2)
            cluster.kill_worker(cluster.workers[0])
            return 1

        return run(args.faults, args.trials, args.epochs, cluster.address, node_kill=kill_node)


if __name__ == "__main__":
    main()
