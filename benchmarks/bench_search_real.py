"""What does the product's search reach on real data, and how long does the whole run take?

The kermany224 train split, EfficientNet-Lite0 with ImageNet weights.

Runs `python -m tune.run --space benchmarks/spaces/lite0_128.py --data-dir <kermany> --weights-dir <weights>
--num-samples N --cpus-per-trial 2 --max-concurrent 1 --results-dir benchmarks/out/results --name real-<timestamp>`
as a subprocess, times its wall clock, then reads the experiment folder with tune.results.load() and prints the
best trial's val AUROC and val specificity at recall 0.98, the final retrain's val metrics, trials per status
and the wall time. The data has no test split, so the final test metrics are absent (expected).

--subset F runs on a patient-grouped fraction F of the images (a folder of symlinks under benchmarks/out/),
for machines too slow for the whole split; --max-epochs passes through to tune.run.

    CXR_CACHE_DIR=benchmarks/out/cache python benchmarks/bench_search_real.py [--num-samples 4] [--max-epochs 1] [--subset 0.25]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from common import DEFAULT_DATA, DEFAULT_WEIGHTS, LITE0_SPACE, OUT, REPO, cache_env, subset_folder
from cpuload import ForeignLoad


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(DEFAULT_DATA))
    p.add_argument("--weights-dir", default=str(DEFAULT_WEIGHTS))
    p.add_argument("--space", default=str(LITE0_SPACE))
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--max-epochs", type=int, help="passed to tune.run (default: the space's epochs)")
    p.add_argument("--subset", type=float, default=1.0, help="fraction of patients to use (1: the whole split)")
    p.add_argument("--trial-scheduler", default="asha", choices=["asha", "fifo"])
    p.add_argument("--cpus-per-trial", type=float, default=2)
    p.add_argument("--results-dir", default=str(OUT / "results"))
    p.add_argument("--name", default=f"real-{time.strftime('%Y%m%d-%H%M%S')}")
    args = p.parse_args(argv)

    data_dir = Path(args.data_dir)
    if args.subset < 1.0:
        data_dir = subset_folder(data_dir, args.subset)
    env = cache_env()
    cmd = [sys.executable, "-m", "tune.run", "--space", args.space, "--data-dir", str(data_dir),
           "--weights-dir", args.weights_dir, "--num-samples", str(args.num_samples),
           "--cpus-per-trial", f"{args.cpus_per_trial:g}", "--max-concurrent", "1", "--trial-scheduler", args.trial_scheduler,
           "--results-dir", args.results_dir, "--name", args.name]
    if args.max_epochs:
        cmd += ["--max-epochs", str(args.max_epochs)]
    print("$ CXR_CACHE_DIR=" + env["CXR_CACHE_DIR"] + " " + " ".join(["python"] + cmd[1:]), flush=True)
    with ForeignLoad() as load:
        t = time.perf_counter()
        rc = subprocess.run(cmd, cwd=REPO, env=env).returncode
        wall = time.perf_counter() - t
    print(f"\ntune.run exited with {rc} after {wall:.0f} s ({wall / 60:.1f} min); other processes used "
          f"{load.cores:.2f} of {os.cpu_count()} cores meanwhile", flush=True)

    from tune.results import load

    path = Path(args.results_dir) / args.name
    if not (path / "best.json").exists():
        print(f"no results in {path}: the run failed before writing best.json")
        return rc or 1
    r = load(path)
    trials = r.trials
    print(f"\nexperiment {path}")
    print(f"data: {len(r.splits)} images ({(r.splits['split'] == 'train').sum()} train / {(r.splits['split'] == 'val').sum()} val)"
          f"{'' if args.subset >= 1 else f', a {args.subset:g} patient subset of the train split'}")
    print("trials per status:", trials["status"].value_counts().to_dict())
    cols = [c for c in ["trial_id", "status", "epochs_run", "time_s", "best_val_spec_at_recall", "best_val_auroc",
                        "lr", "scheduler", "dropout", "unfrozen_blocks", "augment"] if c in trials]
    print(trials[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    best_id = r.best["trial_id"]
    row = trials[trials["trial_id"] == best_id].iloc[0]
    print(f"\nbest trial {best_id}: val AUROC {_fmt(row.get('best_val_auroc'))}  "
          f"val specificity at recall 0.98 {_fmt(row.get('best_val_spec_at_recall'))}  "
          f"(unfrozen_blocks {row.get('unfrozen_blocks')}, lr {row.get('lr'):.2e}, {row.get('scheduler')})")
    if r.metrics is not None:
        v = r.metrics["val"]
        print(f"final retrain (threshold {r.metrics['threshold']:.4f} chosen on val for recall >= {r.metrics['target_recall']}): "
              f"val recall {_fmt(v['recall'])} specificity {_fmt(v['specificity'])} ppv {_fmt(v['ppv'])} "
              f"AUROC {_fmt(v['auroc'])} accuracy {_fmt(v['accuracy'])}; test: {r.metrics['test']}")
    else:
        print("final retrain: no final/metrics.json")
    trial_s = trials["time_s"].sum()
    print(f"\nwall time {wall:.0f} s ({wall / 60:.1f} min); sum of trial times {trial_s:.0f} s; "
          f"the rest (Ray start, data, retrain, writing) {wall - trial_s:.0f} s")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
