"""How close to its --time-budget does a whole `python -m tune.run` command end, and where did the budget go?

    python benchmarks/bench_time_budget.py --repeats 3     # the demo, as many trials as fit in 300 s: quiet, then one core busy
    python benchmarks/bench_time_budget.py --repeats 3 --conditions quiet   # quiet only
    python benchmarks/bench_time_budget.py --real ../shared/data/kermany224 --budget 30m -- --final-members 2 --final-epochs 2

The real run: `--space cpu --backbones tf_efficientnet_lite0 --weights-dir ../shared/weights` on the given folder.
Arguments after `--` go to tune.run as they are. Prints, per run, the wall time of the command and its ratio to the
budget, the trials run and their states, budget.json's spending (search, final stage, start-up, the final
stage's estimate as it started, for the epochs its members ran) and the cores other processes took meanwhile. Condition "busy" keeps one core busy with a spinning
process for the whole command (another user of a shared machine); the rounds of the conditions interleave.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_WEIGHTS, REPO, machine, print_markdown
from cpuload import ForeignLoad

SPIN = "while True: pass"


@contextlib.contextmanager
def one_core_busy():
    """A process spinning on one core while the block runs: yields its pid."""
    spinner = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        yield spinner.pid
    finally:
        spinner.kill()
        spinner.wait()


def run_once(args: list[str], work: Path, budget: str, foreign: tuple[int, ...] = ()) -> dict:
    import pandas as pd

    from tune.budget import parse_duration

    command = [sys.executable, "-m", "tune.run", *args, "--time-budget", budget, "--results-dir", str(work), "--name", "b"]
    started = time.monotonic()
    with open(work / "run.log", "w") as log, ForeignLoad(foreign) as others:
        code = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - started
    if code != 0:
        raise SystemExit(f"tune.run exited {code}; the end of its log:\n{(work / 'run.log').read_text()[-3000:]}")
    saved = json.loads((work / "b" / "budget.json").read_text())
    spent, plan = saved["spending"], saved.get("final_plan") or {}
    trials = pd.read_parquet(work / "b" / "trials.parquet")
    metrics = work / "b" / "final" / "metrics.json"  # members_s: the final stage until the last member returned
    members_s = json.loads(metrics.read_text()).get("members_s") if metrics.is_file() else None
    return {"budget s": parse_duration(budget), "wall s": round(wall, 1), "x budget": round(wall / parse_duration(budget), 3),
            "trials": len(trials), "states": ", ".join(f"{k} {v}" for k, v in trials["status"].value_counts().items()),
            "search s": spent["search_s"], "final stage s": spent["final_stage_s"],
            "members s": None if members_s is None else round(members_s, 1),
            "member epochs": plan.get("epochs"), "final estimate s": spent.get("final_estimate_s"),
            "start-up s": spent["other_s"],
            "final model": (work / "b" / "final" / "model.json").is_file(), "other processes' cores": round(others.cores, 2)}


def _kept(root: Path, condition: str, repeat: int) -> str:
    work = root / f"{condition}-{repeat}"
    work.mkdir(parents=True)  # never over an earlier run's
    return str(work)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--budget", default="300s", help="the demo's smallest final stage (3 one-epoch members) takes ~40 s "
                   "quiet, ~70 s busy; below 300 s a trial's first epoch with its start (10-20 s busy) is a coarse grain")
    p.add_argument("--real", metavar="DATA_DIR", help="the real-data run on this folder instead of the demo")
    p.add_argument("--keep", type=Path, metavar="DIR", help="keep each run's folder under DIR (run.log, the experiment)")
    p.add_argument("--conditions", nargs="+", choices=("quiet", "busy"),
                   help="busy: one core kept busy by a spinning process during each run (default: both; --real: quiet)")
    args = p.parse_args(argv)
    args.conditions = args.conditions or (["quiet"] if args.real else ["quiet", "busy"])
    if args.real:
        base = ["--space", "cpu", "--backbones", "tf_efficientnet_lite0", "--weights-dir", str(DEFAULT_WEIGHTS),
                "--data-dir", args.real]
    else:
        base = ["--space", "smoke", "--dataset", "synthetic"]  # no --num-samples: as many trials as fit
    rows = []
    for repeat in range(args.repeats):
        for condition in args.conditions:
            folder = contextlib.nullcontext(_kept(args.keep, condition, repeat)) if args.keep else \
                tempfile.TemporaryDirectory(prefix="bench-budget-")
            with folder as work, one_core_busy() if condition == "busy" else contextlib.nullcontext() as spinner:
                cache = [] if args.real else ["--cache-dir", str(Path(work) / "cache")]  # real films: the usual cache
                foreign = (spinner,) if spinner else ()
                rows.append({"condition": condition, **run_once([*base, *extra, *cache], Path(work), args.budget, foreign)})
            print(rows[-1], flush=True)
    print_markdown(rows)
    print(f"\nmachine: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
