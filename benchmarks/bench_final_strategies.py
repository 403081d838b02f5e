"""Which final model ships better, `--final seeds` or `--final folds`, and whose operating point holds at a new site?

The final model built both ways (the same K) from one search on real data, scored on a pseudo-test that nothing else
sees; then a pseudo-site sets its own operating point.

1. ../shared/data/kermany224/train is scanned (patients from file names) and 20 % of its patients are held out as a
   pseudo-test (split=test in a manifest: the search, val and the folds never see them); the pseudo-test is split
   again by patient into a site calibration half and a site evaluation half.
2. One search (`python -m tune.run`, Lite0 at 128 px, ImageNet weights, --final seeds), then the same experiment
   copied with --final folds and resumed: the search is read back, only the final stage runs again.
3. `python -m cxr.recalibrate` fits each final model's temperature and threshold on the calibration half.
4. Two tables: per strategy, pseudo-test AUROC, recall and specificity at the chosen threshold (against the
   target), the threshold's interval width and the final stage's wall time; per operating point, recall and
   specificity on the site evaluation half (threshold from val, from the out-of-fold predictions, from the site).

Every stage is skipped when its output exists (benchmarks/out/final-strategies/), so a stopped run continues.

    CXR_CACHE_DIR=benchmarks/out/cache python benchmarks/bench_final_strategies.py [--members 3] [--num-samples 2] [--max-epochs 2]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common import DEFAULT_DATA, DEFAULT_WEIGHTS, LITE0_SPACE, OUT, REPO, cache_env, patient_subset

FOLDER = OUT / "final-strategies"  # every stage's output: a stopped run continues from it
STRATEGIES = ("seeds", "folds")


def make_manifests(data_dir: Path, seed: int) -> dict[str, Path]:
    """experiment.csv (pool: split=train; pseudo-test: split=test), site-calibration.csv, site-evaluation.csv."""
    from cxr.kaggle import scan

    files = {name: FOLDER / f"{name}.csv" for name in ("experiment", "site-calibration", "site-evaluation")}
    if all(f.exists() for f in files.values()):
        return files
    frame = scan(data_dir, val_fraction=0.2, seed=seed)[["path", "label", "patient"]]
    test = frame.index.isin(patient_subset(frame, 0.2, seed + 100).index)
    frame["split"] = np.where(test, "test", "train")
    pseudo_test = frame[test]
    calibration = pseudo_test.index.isin(patient_subset(pseudo_test, 0.5, seed + 200).index)
    FOLDER.mkdir(parents=True, exist_ok=True)
    frame.to_csv(files["experiment"], index=False)
    pseudo_test[calibration].drop(columns="split").to_csv(files["site-calibration"], index=False)
    pseudo_test[~calibration].drop(columns="split").to_csv(files["site-evaluation"], index=False)
    return files


def run(cmd: list[str]) -> float:
    started = time.monotonic()
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, env=cache_env(), check=True)
    return time.monotonic() - started


def build_experiments(args, manifest: Path) -> dict[str, Path]:
    results = FOLDER / "results"
    folders = {s: results / f"{args.name}-{s}" for s in STRATEGIES}
    if not (folders["seeds"] / "final" / "metrics.json").exists():
        run([sys.executable, "-m", "tune.run", "--space", str(LITE0_SPACE), "--data-dir", str(manifest),
             "--weights-dir", args.weights_dir, "--num-samples", str(args.num_samples), "--max-epochs", str(args.max_epochs),
             "--cpus-per-trial", "1", "--final", "seeds", "--final-members", str(args.members),
             "--results-dir", str(results), "--name", folders["seeds"].name, "--seed", str(args.seed)]
            + (["--resume"] if folders["seeds"].exists() else []))
    if not (folders["folds"] / "final" / "metrics.json").exists():
        if not folders["folds"].exists():  # the same search, its final stage built the other way
            shutil.copytree(folders["seeds"], folders["folds"], ignore=shutil.ignore_patterns("final", "report"))
            from cxr.jsonio import read_json, write_json

            write_json(folders["folds"] / "run.json", read_json(folders["folds"] / "run.json") | {"final_kind": "folds"})
        run([sys.executable, "-m", "tune.run", "--results-dir", str(results), "--name", folders["folds"].name, "--resume"])
    return folders


def recalibrate(folders: dict[str, Path], calibration: Path, target: float) -> dict[str, Path]:
    sites = {s: FOLDER / f"site-model-{folders[s].name}" for s in STRATEGIES}
    for s in STRATEGIES:
        if not (sites[s] / "model.json").exists():
            run([sys.executable, "-m", "cxr.recalibrate", "--model", str(folders[s] / "final"), "--data", str(calibration),
                 "--target-recall", str(target), "--out", str(sites[s])])
    return sites


def strategy_table(folders: dict[str, Path]) -> None:
    from cxr.final_metrics import read_metrics

    print("\n| final | pseudo-test AUROC | recall (target) | specificity | threshold | threshold 95 % interval (width) "
          "| final stage s |\n|---|---|---|---|---|---|---|")
    for s in STRATEGIES:
        m = read_metrics(folders[s] / "final" / "metrics.json")
        t, (lo, hi) = m["test"], m["threshold_ci95"]
        print(f"| {s} | {t['auroc']:.4f} [{t['auroc_ci95'][0]:.3f}-{t['auroc_ci95'][1]:.3f}] | {t['recall']:.4f} "
              f"({m['target_recall']}) [{t['recall_ci95'][0]:.3f}-{t['recall_ci95'][1]:.3f}] | {t['specificity']:.4f} "
              f"[{t['specificity_ci95'][0]:.3f}-{t['specificity_ci95'][1]:.3f}] | {m['threshold']:.4f} | "
              f"{lo:.3f}-{hi:.3f} ({hi - lo:.3f}) | {m['final_stage_s']:.0f} |")
        if m.get("folds"):
            single = m["folds"]["test_single_members"]
            spread = m["folds"]["spread"]
            recalls, specificities = (", ".join(f"{x[k]:.4f}" for x in single) for k in ("recall", "specificity"))
            print(f"|  folds detail | per-fold out-of-fold AUROC {spread['auroc']['mean']:.4f} ± {spread['auroc']['sd']:.4f}; "
                  f"single members on pseudo-test at this threshold: recall {recalls} (ensemble {t['recall']:.4f}), "
                  f"specificity {specificities} (ensemble {t['specificity']:.4f}) | | | | | |")


def site_table(folders: dict[str, Path], sites: dict[str, Path], evaluation: Path) -> None:
    from cxr.calibration import apply_temperature
    from cxr.intervals import metrics_with_intervals
    from cxr.jsonio import read_json
    from cxr.resamples import patient_bootstrap

    paths = set(pd.read_csv(evaluation)["path"].map(lambda p: str((evaluation.parent / p).resolve())))
    print("\n| model | operating point from | threshold | site-evaluation recall | specificity |\n|---|---|---|---|---|")
    for s in STRATEGIES:
        predictions = pd.read_parquet(folders[s] / "final" / "predictions.parquet")
        rows = predictions[(predictions["split"] == "test") & predictions["path"].map(lambda p: str(Path(p).resolve())).isin(paths)]
        weights = patient_bootstrap(rows["patient"], 2000, 0)
        shipped = read_json(folders[s] / "final" / "model.json")
        for origin, spec in ((f"{'val' if s == 'seeds' else 'out-of-fold predictions'}", shipped),
                             ("the site's calibration half", read_json(sites[s] / "model.json"))):
            q = apply_temperature(rows["probability_raw"], spec["temperature"])
            m = metrics_with_intervals(rows["label"], q, spec["threshold"], weights)
            print(f"| {s} | {origin} | {spec['threshold']:.4f} | {m['recall']:.4f} [{m['recall_ci95'][0]:.3f}-"
                  f"{m['recall_ci95'][1]:.3f}] | {m['specificity']:.4f} [{m['specificity_ci95'][0]:.3f}-"
                  f"{m['specificity_ci95'][1]:.3f}] |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(DEFAULT_DATA))
    p.add_argument("--weights-dir", default=str(DEFAULT_WEIGHTS))
    p.add_argument("--members", type=int, default=3, help="K for both strategies")
    p.add_argument("--num-samples", type=int, default=2)
    p.add_argument("--max-epochs", type=int, default=2)
    p.add_argument("--target-recall", type=float, default=0.98)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="strategies")
    p.add_argument("--skip-site", action="store_true", help="stop after the two final models")
    args = p.parse_args(argv)
    files = make_manifests(Path(args.data_dir), args.seed)
    folders = build_experiments(args, files["experiment"])
    strategy_table(folders)
    if not args.skip_site:
        sites = recalibrate(folders, files["site-calibration"], args.target_recall)
        site_table(folders, sites, files["site-evaluation"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
