"""Does the product's search find better models than what a user would pick instead, at the same trial-epoch budget?

Methods, same space (search_spaces/cpu.py narrowed to one backbone, no baselines so that no method starts from the
hand-picked reference) and the same budget of trial-epochs, three seeds each:
  product   Ray Tune with tune.search's own create_searcher (Optuna TPE) and create_trial_scheduler (ASHA)
  ray       Ray Tune defaults: random search (Optuna's RandomSampler over the same define-by-run space) and FIFO
  optuna    Optuna alone: TPESampler() + HyperbandPruner(), the study driven by Optuna, cxr.engine.fit in this process
Ray runs 2 trials at once with 1 CPU each; Optuna alone runs 1 trial with 2 torch threads (the same 2 cores).
Output: per method the best validation metric reached against cumulative trial-epochs and wall time (a table, a
plot with the min-max spread over seeds, a CSV of every epoch), then the headline ratio LAST: trial-epochs the
product needs to reach the best value that `ray` reaches with its whole budget.

    CXR_CACHE_DIR=benchmarks/out/cache python benchmarks/bench_search_efficiency.py            # real subset
    python benchmarks/bench_search_efficiency.py --smoke                                        # synthetic, < 2 min
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import ray
import torch
from ray import tune as ray_tune

from common import DEFAULT_DATA, DEFAULT_WEIGHTS, OUT, subset_folder
from cpuload import ForeignLoad
from cxr.config import TrainConfig
from cxr.dataset import load_dataset
from cxr.engine import fit
from cxr.models import pretrained_state
from cxr.synthetic import create_synthetic
from tune import cluster, search
from tune.spaces import Space, load_space, sample, validate
from tune.trainable import TrialContext, train_trial

METHODS = ["product", "ray", "optuna"]
BEFORE = "before"  # the product's ASHA with Optuna's default TPESampler: the searcher settings before issue 10
METRIC = "val_spec_at_recall"


class BudgetStopper(ray_tune.Stopper):
    """Stops the whole experiment once the trials together have reported `budget` epochs."""

    def __init__(self, budget: int):
        self.budget, self.seen = budget, set()

    def __call__(self, trial_id, result) -> bool:
        # distinct epochs: a FIFO trial's final "done" result repeats its last epoch (counted twice, ray got 9 of 12)
        self.seen.add((trial_id, result.get("training_iteration")))
        return False

    def stop_all(self) -> bool:
        return len(self.seen) >= self.budget


def run_ray(method: str, space: Space, data_ref, weight_refs, seed: int, args, storage: Path) -> list[dict]:
    settings = search.SearchSettings(
        metric=METRIC, num_samples=args.budget, max_epochs=args.max_epochs, trial_scheduler="fifo" if method == "ray" else "asha",
        cpus_per_trial=1, gpus_per_trial=0, workers_per_trial=1, max_concurrent=0, seed=seed, storage_path=str(storage),
        journal_path=str(storage / f"{method}-{seed}.journal"), study_name=f"{method}-{seed}")
    checked = validate(space, seed=seed)
    sampler = {"product": None, "ray": optuna.samplers.RandomSampler(seed=seed), BEFORE: optuna.samplers.TPESampler(seed=seed)}[method]
    context = TrialContext(data_ref, weight_refs, 1, 1, 0, str(storage))
    trainable = ray_tune.with_resources(ray_tune.with_parameters(train_trial, context=context), {"cpu": 1})
    tuner = ray_tune.Tuner(
        trainable,
        tune_config=ray_tune.TuneConfig(metric=METRIC, mode="max", search_alg=search.create_searcher(settings, space, checked, sampler),
                                        scheduler=search.create_trial_scheduler(settings), num_samples=args.budget,
                                        reuse_actors=search.reuse_processes(settings)),  # as the product runs trials
        run_config=ray_tune.RunConfig(name=f"{method}-{seed}", storage_path=str(storage), stop=BudgetStopper(args.budget),
                                      checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=1), verbose=0),
    )
    start = time.time()
    grid = tuner.fit()
    rows = []
    for i, result in enumerate(grid):
        frame = result.metrics_dataframe
        for r in ([] if frame is None else frame.to_dict("records")):
            # timestamp is whole seconds; time_total_s orders epochs within a trial
            rows.append({"trial": i, "epoch": r["training_iteration"], "t": r["timestamp"] - start, "value": r.get(METRIC),
                         "val_auroc": r.get("val_auroc"), "order": r["timestamp"] + r["time_total_s"] * 1e-6})
    return rows


def run_optuna(space: Space, data, weights: dict, seed: int, args) -> list[dict]:
    torch.set_num_threads(args.cpus)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=args.max_epochs))
    rows, start = [], time.time()

    def objective(trial: optuna.Trial) -> float:
        config = TrainConfig.from_dict(sample(space, trial))
        values = []

        def on_epoch(epoch: int, metrics: dict, _save) -> None:
            now = time.time()
            rows.append({"trial": trial.number, "epoch": epoch, "t": now - start, "value": metrics.get(METRIC),
                         "val_auroc": metrics.get("val_auroc"), "order": now})
            values.append(_number(metrics.get(METRIC)))
            trial.report(values[-1], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        fit(config, data, on_epoch, backbone_state=weights.get(config.backbone) if config.pretrained else None)
        return max(values)

    while len(rows) < args.budget:
        study.optimize(objective, n_trials=1)
    return rows


def _number(value) -> float:
    return 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def anytime(rows: list[dict], budget: int) -> pd.DataFrame:
    """Epochs in the order they finished, the first `budget` of them, with the best value so far."""
    frame = pd.DataFrame(rows).sort_values("order").head(budget).reset_index(drop=True)
    frame["value"] = frame["value"].map(_number)
    frame["trial_epochs"] = np.arange(1, len(frame) + 1)
    frame["best"] = frame["value"].cummax()
    return frame


def epochs_to_reach(curve: pd.DataFrame, target: float) -> float:
    reached = curve[curve["best"] >= target - 1e-12]
    return float(reached["trial_epochs"].iloc[0]) if len(reached) else math.inf


def summarise(curves: pd.DataFrame, budget: int) -> pd.DataFrame:
    marks = sorted({max(1, budget // 4), max(1, budget // 2), max(1, 3 * budget // 4), budget})
    rows = []
    for (method, seed), c in curves.groupby(["method", "seed"]):
        row = {"method": method, "seed": seed, "trials": c["trial"].nunique(), "wall_s": round(c["t"].max(), 1)}
        for m in marks:
            row[f"best@{m}"] = c.loc[c["trial_epochs"] <= m, "best"].max()
        rows.append(row)
    return pd.DataFrame(rows)


def plot(curves: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for method, colour in zip([*METHODS, BEFORE], ["tab:blue", "tab:orange", "tab:green", "tab:grey"]):
        group = curves[curves["method"] == method]
        if group.empty:
            continue
        for ax, x in zip(axes, ["trial_epochs", "t"]):
            grid = np.linspace(0, group[x].max(), 200)
            # a step function: the best so far holds until the next epoch finishes
            per_seed = [pd.Series(s).ffill().to_numpy() for s in
                        [_step(grid, c[x].to_numpy(), c["best"].to_numpy()) for _, c in group.groupby("seed")]]
            stack = np.vstack(per_seed)  # NaN until a seed's first epoch: drawn only where every seed has a value
            ax.plot(grid, np.median(stack, axis=0), color=colour, label=f"{method} (median of {len(per_seed)} seeds)")
            ax.fill_between(grid, np.min(stack, axis=0), np.max(stack, axis=0), color=colour, alpha=0.2)
    axes[0].set_xlabel("cumulative trial-epochs")
    axes[1].set_xlabel("wall time (s)")
    axes[0].set_ylabel(f"best {METRIC} so far")
    axes[0].legend(loc="lower right")
    fig.suptitle("Best validation metric vs budget (band: min-max over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def _step(grid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(x, grid, side="right") - 1
    return np.where(idx >= 0, y[np.clip(idx, 0, None)], np.nan)


def load_data(args):
    cache = Path(tempfile.mkdtemp()) if args.smoke else None
    if args.smoke:
        root = create_synthetic(cache / "synthetic", n_patients=120, size=48, seed=0)
    else:
        root = subset_folder(Path(args.data_dir), args.subset)
    return load_dataset(root, image_size=args.image_size, val_fraction=0.25, seed=0, cache_dir=cache)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="synthetic data, resnet18 random init, 32 px, the first seed only: the same code in < 2 min")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA))
    p.add_argument("--weights-dir", default=str(DEFAULT_WEIGHTS))
    p.add_argument("--subset", type=float, default=0.08, help="share of the train split's patients (fixed by seed 0)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--max-epochs", type=int, default=3, help="epochs per trial (ASHA max_t, Hyperband max_resource)")
    p.add_argument("--budget", type=int, default=12, help="trial-epochs per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=METHODS, choices=[*METHODS, BEFORE],
                   help=f"{BEFORE}: the product with the searcher defaults it had before this benchmark (a before/after run)")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--out", default=str(OUT / "efficiency"))
    args = p.parse_args(argv)
    if args.smoke:
        args.image_size, args.max_epochs, args.budget, args.seeds = 32, 2, 4, args.seeds[:1]
        args.out = str(Path(args.out) / "smoke")
    return args


def make_space(args) -> tuple[Space, str]:
    backbone = "resnet18" if args.smoke else "tf_efficientnet_lite0"
    base = load_space("cpu").with_backbones([backbone])
    base = Space(base.name, base.fn, [])  # no method starts from the hand-picked reference config
    pinned = {"epochs": args.max_epochs, "image_size": args.image_size, "monitor": METRIC, "target_recall": 0.98}
    if args.smoke:
        pinned["pretrained"] = False
    return base.with_overrides(pinned), backbone


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args)
    space, backbone = make_space(args)
    weights = {} if args.smoke else {backbone: pretrained_state(backbone, args.weights_dir)}
    print(f"data: {len(data.indices('train'))} train / {len(data.indices('val'))} val images at {args.image_size} px; "
          f"budget {args.budget} trial-epochs, <= {args.max_epochs} epochs per trial; seeds {args.seeds}", flush=True)
    rows = []
    with ForeignLoad() as load, tempfile.TemporaryDirectory() as storage:
        if {"product", "ray", BEFORE} & set(args.methods):
            ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
            data_ref, weight_refs = cluster.share(data), cluster.share_weights(weights)
        try:
            for seed in args.seeds:
                for method in args.methods:
                    t0 = time.time()
                    if method == "optuna":
                        got = run_optuna(space.with_overrides({"seed": seed}), data, weights, seed, args)
                    else:
                        got = run_ray(method, space.with_overrides({"seed": seed}), data_ref, weight_refs, seed, args, Path(storage))
                    rows += [{"method": method, "seed": seed, **r} for r in anytime(got, args.budget).to_dict("records")]
                    print(f"{method} seed {seed}: {time.time() - t0:.0f} s, best {rows[-1]['best']:.4f}", flush=True)
                    pd.DataFrame(rows).to_csv(out / "curves.csv", index=False)  # an interrupted run keeps what finished
        finally:
            cluster.shutdown()
    curves = pd.DataFrame(rows)
    curves.to_csv(out / "curves.csv", index=False)
    table = summarise(curves, args.budget)
    table.to_csv(out / "summary.csv", index=False)
    plot(curves, out / "efficiency.png")
    with pd.option_context("display.width", 200, "display.precision", 3):
        print(f"\nbest {METRIC} reached within N trial-epochs (per seed):\n{table.to_string(index=False)}")
        means = table.drop(columns="seed").groupby("method").agg(["mean", "min", "max"])
        print(f"\nmean [min, max] over seeds:\n{means.to_string()}")
    print(f"\nother processes took {load.cores:.2f} of {args.cpus} cores on average; files in {out}")
    print(headline(curves))
    return 0


def headline(curves: pd.DataFrame) -> str:
    """Per seed: trial-epochs the product needs to reach the best value `ray` reached with its whole budget."""
    needs, used = [], []
    for _, c in curves.groupby("seed"):
        product, rnd = c[c["method"] == "product"], c[c["method"] == "ray"]
        if len(product) and len(rnd):
            needs.append(epochs_to_reach(product, rnd["best"].max()))
            used.append(len(rnd))  # the trial-epochs ray actually spent
    if not needs:
        return "headline ratio: n/a (needs the product and ray methods)"
    shown = ", ".join("not reached" if math.isinf(n) else f"{n:.0f}" for n in needs)
    ratio = float(np.median(np.array(needs) / np.array(used)))
    return (f"headline: the product needs {shown} trial-epochs (per seed) to reach the best value Ray Tune defaults reach "
            f"with their whole budget ({', '.join(map(str, used))}); median ratio product/defaults = "
            f"{'inf (not reached)' if math.isinf(ratio) else f'{ratio:.2f}'}")


if __name__ == "__main__":
    sys.exit(main())
