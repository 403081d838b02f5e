"""Does a search on a cluster that loses worker nodes lose trials, and what do the losses cost against no faults?

In the manner of Ray's `tune_worker_fault_tolerance` release test, small: a head (no CPUs by default: the driver's
node, never killed) and --workers worker nodes of one CPU each on 127.0.0.1 with token auth (tune/loopback_cluster.py);
`python -m tune.run --address` runs the smoke space on synthetic data (--trials trials, ASHA, one final member);
a node killer wakes every --period seconds and, with probability --probability, SIGKILLs every process of a random
live worker node (raylet, object store, trials), then starts a new worker node --restart-delay seconds later. It
keeps killing through the final stage. Then the same search on a fresh cluster with the killer off.

The retry budget: a trial survives TRIAL_RETRIES failures in a row without a new epoch between
(tune.search.RetriesSinceProgress), so losses spread over a search never use it up; a final member on a lost node
is trained again (tune.trainable.LOST_MEMBER_RETRIES).

Prints faults injected, trials finished, trials lost (status error), epochs repeated (an epoch a trial reported twice),
trial restarts (failures recorded in the trials' error files), search and whole-run time and their ratio to no faults.

    python benchmarks/bench_chaos.py                 # 3 workers, 40 trials, the table in BENCHMARKS.md
    python benchmarks/bench_chaos.py --smoke         # a 1-CPU head and 1 worker, 2 trials, the worker killed once
                                                     # (tests/test_cluster.py runs it with a worker that cannot see
                                                     # the head's storage first)
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import REPO, print_markdown
from tune.loopback_cluster import LoopbackCluster

# --smoke: one trial on the head, one on the worker node, which is lost once a trial reported an epoch; its trial
# continues from its checkpoint on the replacement node or the head (FIFO: every trial runs all its epochs)
SMOKE = {"workers": 1, "head_cpus": 1, "trials": 2, "epochs": 3, "trial_scheduler": "fifo", "period": 2.0,
         "probability": 1.0, "restart_delay": 1.0, "max_faults": 1}


class NodeKiller(threading.Thread):
    """Every `period` s, with probability p, kill a random live worker node; start a new one `delay` s later."""

    def __init__(self, cluster: LoopbackCluster, period: float, probability: float, delay: float, seed: int,
                 ready=lambda: True, max_faults: int | None = None):
        super().__init__(daemon=True)
        self.cluster, self.period, self.probability, self.delay = cluster, period, probability, delay
        self.rng, self.ready, self.max_faults = random.Random(seed), ready, max_faults
        self.faults, self.stopped = [], threading.Event()

    def run(self) -> None:
        restarts, next_draw = [], time.monotonic() + self.period
        while not self.stopped.wait(0.5):
            now = time.monotonic()
            for failed in [w for w in self.cluster.workers if w.poll() is not None]:  # a node that did not start
                self.cluster.workers.remove(failed)
                restarts.append(now + self.delay)
            for due in [d for d in restarts if d <= now]:
                restarts.remove(due)
                self.cluster.add_worker()
            if now >= next_draw:
                next_draw = now + self.period
                if self._draw():
                    self.cluster.kill_worker(self.rng.choice(self.cluster.workers))
                    self.faults.append(now)
                    restarts.append(now + self.delay)

    def _draw(self) -> bool:
        if self.max_faults is not None and len(self.faults) >= self.max_faults:
            return False
        return bool(self.cluster.workers) and self.ready() and self.rng.random() < self.probability


def run(args, faults: bool, work: Path) -> dict:
    """The search on a fresh loopback cluster of args.workers worker nodes (and args.head_cpus on the head)."""
    with LoopbackCluster(work / "cluster", workers=args.workers, head_cpus=args.head_cpus) as cluster:
        return search_on(cluster, args, faults, work)[0]


def search_on(cluster: LoopbackCluster, args, faults: bool, work: Path, ready=None) -> tuple[dict, Path]:
    """(the row, the experiment folder) of the search on `cluster`, with the node killer on if `faults`; the killer
    waits for ready(experiment folder), by default for any trial's first epoch."""
    from tune.results import load

    results, root = work / "results", work / "results" / "chaos"
    command = [sys.executable, "-m", "tune.run", "--address", cluster.address, "--space", "smoke", "--dataset",
               "synthetic", "--image-size", "32", "--max-epochs", str(args.epochs), "--num-samples", str(args.trials),
               "--trial-scheduler", args.trial_scheduler, "--final-members", "1", "--no-robustness", "--final-epochs", "1",
               "--results-dir", str(results), "--name", "chaos", "--cache-dir", str(work / "cache")]
    print(f"cluster {cluster.address} ({'with' if faults else 'without'} faults)", flush=True)
    ready = ready or (lambda folder: any((folder / "tune").glob("trial_*/result.json")))
    killer = NodeKiller(cluster, args.period, args.probability, args.restart_delay, args.seed,
                        ready=lambda: ready(root), max_faults=args.max_faults)
    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "driver.log", "w") as log:
        driver = subprocess.Popen(command, cwd=REPO, env=cluster.env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        if faults:
            killer.start()
        search_s = None
        while driver.poll() is None:
            if search_s is None and (root / "best.json").exists():
                search_s = time.monotonic() - started
            time.sleep(0.5)
        killer.stopped.set()
        if faults:
            killer.join()
    wall = time.monotonic() - started
    if driver.returncode != 0:
        tail = (work / "driver.log").read_text()[-3000:]
        raise SystemExit(f"the run {'with' if faults else 'without'} faults failed (exit {driver.returncode}):\n{tail}")
    experiment = load(root)
    trials, epochs = experiment.trials, experiment.epochs
    # what the trials reported (the tables keep one row per epoch): an epoch reported twice was trained twice
    reported = [[json.loads(line)["epoch"] for line in f.read_text().splitlines() if line.strip()]
                for f in (root / "tune").glob("trial_*/result.json")]
    repeated = sum(len(e) - len(set(e)) for e in reported)
    assert len(epochs) == sum(len(set(e)) for e in reported), "the epochs table lost or doubled an epoch"
    restarts = sum(f.read_text().count("Failure #") for f in (root / "tune").glob("trial_*/error.txt"))
    row = {"faults injected": len(killer.faults), "trials": len(trials),
           "trials finished": int((trials["status"] != "error").sum()), "trials lost": int((trials["status"] == "error").sum()),
           "epochs repeated": repeated, "trial restarts": restarts, "search s": round(search_s or wall),
           "whole run s": round(wall), "final model": (root / "final").is_dir()}
    return row, root


def print_rows(rows: dict[str, dict], args) -> None:
    print(f"\n{args.workers} worker nodes x 1 CPU, {args.head_cpus} CPU(s) on the head, {args.trials} trials x "
          f"{args.epochs} epochs ({args.trial_scheduler}), T={args.period:g} s, p={args.probability:g}, restart after "
          f"{args.restart_delay:g} s")
    print_markdown([{"run": name, **row} for name, row in rows.items()])
    if "no faults" in rows:
        for key in ("search s", "whole run s"):
            print(f"{key}: {rows['node killer'][key] / rows['no faults'][key]:.2f}x the run without faults")
    chaos = rows["node killer"]
    print(f"faults injected: {chaos['faults injected']}, trials lost: {chaos['trials lost']}, "
          f"epochs repeated: {chaos['epochs repeated']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--head-cpus", type=int, default=0, help="CPUs of the head node (0: it runs no trial)")
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--trial-scheduler", choices=["asha", "fifo"], default="asha")
    p.add_argument("--period", type=float, default=20.0, help="T: seconds between the killer's draws")
    p.add_argument("--probability", type=float, default=0.5, help="p: chance that a draw kills a node")
    p.add_argument("--restart-delay", type=float, default=10.0, help="seconds before a killed node is replaced")
    p.add_argument("--max-faults", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="1 worker and a 1-CPU head, 2 trials, the worker killed "
                   "once and replaced, no baseline")
    args = p.parse_args(argv)
    if args.smoke:
        vars(args).update(SMOKE)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as work:
        rows["node killer"] = run(args, True, Path(work) / "faults")
        if not args.smoke:
            rows["no faults"] = run(args, False, Path(work) / "baseline")
    print_rows(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
