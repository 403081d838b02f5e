"""One experiment end to end: validate, load data once, search, tabulate, retrain the best, test once."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxr.config import TrainConfig
from cxr.dataset import CxrData, load_dataset
from cxr.errors import InputError
from cxr.images import default_cache_dir
from cxr.models import pretrained_state
from cxr.synthetic import make_synthetic
from tune import cluster, search
from tune.results import ExperimentPaths, build_tables, read_json, write_final, write_json, write_table
from tune.spaces import load_space, validate

LEADERBOARD_COLUMNS = ["backbone", "lr", "scheduler", "dropout", "unfrozen_blocks", "batch_size"]


@dataclass(frozen=True)
class Experiment:
    """Everything a run was asked for; saved as run.json so --resume repeats it exactly."""

    space: str = "smoke"
    backbones: str | None = None  # comma-separated narrowing of the space's backbone choice
    data_dir: str | None = None
    dataset: str | None = None
    num_samples: int = 8
    max_epochs: int | None = None
    image_size: int | None = None
    metric: str = "val_spec_at_recall"
    target_recall: float = 0.98
    scheduler: str = "asha"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    workers_per_trial: int = 1
    max_concurrent: int = 0
    results_dir: str = "results"
    name: str | None = None
    seed: int = 0
    val_fraction: float = 0.2
    weights_dir: str | None = None
    pretrained: bool = True
    cache_dir: str | None = None
    address: str | None = None
    storage_path: str | None = None


def run_experiment(experiment: Experiment, *, resume: bool = False) -> int:
    experiment = _resolve(experiment, resume)
    paths = ExperimentPaths(Path(experiment.results_dir) / experiment.name)
    space = load_space(experiment.space)
    if experiment.backbones is not None:
        space = space.with_backbones([b.strip() for b in experiment.backbones.split(",") if b.strip()])
    space = space.with_overrides(_overrides(experiment))
    checked = validate(space, seed=experiment.seed)
    data = _load_data(experiment, checked.image_size)
    weights = {b: pretrained_state(b, experiment.weights_dir) for b in sorted(checked.pretrained_backbones)}
    cluster.connect(experiment.address)
    try:
        cluster.check_resources(experiment.cpus_per_trial, experiment.gpus_per_trial, experiment.workers_per_trial)
        settings = _settings(experiment, checked.max_epochs, paths)
        cluster.check_storage(settings.storage_path)
        if not resume:
            _create(paths, experiment, data)
        data_ref, weight_refs = cluster.share(data), cluster.share_weights(weights)
        records = search.run_search(settings, space, checked, data_ref, weight_refs, resume=resume)
        trials, epochs = build_tables(records, experiment.metric, checked.max_epochs)
        write_table(paths.trials, trials)
        write_table(paths.epochs, epochs)
        best = _best(trials, records, experiment.metric)
        write_json(paths.best, best)
        _print_leaderboard(trials, experiment.metric)
        config = TrainConfig.from_dict(best["config"])
        print(f"\nretraining the best trial {best['trial_id']} for up to {config.epochs} epochs ...", flush=True)
        report = search.retrain(config, data_ref, weight_refs, settings)
        write_final(paths, report, config.to_dict())
        _print_final(report.summary(), paths)
        return 0
    finally:
        cluster.shutdown()


def _resolve(experiment: Experiment, resume: bool) -> Experiment:
    """Fill the default name; on --resume take the saved settings; refuse to overwrite an experiment."""
    if resume:
        if not experiment.name:
            raise InputError("--resume needs --name: the experiment to continue")
        paths = ExperimentPaths(Path(experiment.results_dir) / experiment.name)
        if not paths.run.exists():
            raise InputError(f"no experiment '{experiment.name}' in {experiment.results_dir}: check --name and --results-dir")
        if paths.metrics.exists():
            raise InputError(f"experiment '{experiment.name}' is already complete ({paths.metrics}): start a new --name")
        return Experiment(**read_json(paths.run))
    name = experiment.name or f"{Path(experiment.space).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (Path(experiment.results_dir) / name).exists():
        raise InputError(f"experiment '{name}' already exists in {experiment.results_dir}: add --resume to continue it or pick another --name")
    if experiment.data_dir is None and experiment.dataset is None:
        raise InputError("no data: pass --data-dir <Kaggle chest_xray folder> or --dataset synthetic")
    for flag, value in (("--num-samples", experiment.num_samples), ("--workers-per-trial", experiment.workers_per_trial), ("--max-epochs", experiment.max_epochs or 1),
                        ("--image-size", experiment.image_size or 16)):
        if value < 1 or (flag == "--image-size" and value < 16):
            raise InputError(f"{flag} {value} is out of range: use a positive value (image size at least 16)")
    return dataclasses.replace(experiment, name=name)


def _overrides(experiment: Experiment) -> dict:
    """CLI flags that pin config keys in every trial, whatever the space says."""
    pinned = {"monitor": experiment.metric, "target_recall": experiment.target_recall, "seed": experiment.seed}
    if experiment.max_epochs:
        pinned["epochs"] = experiment.max_epochs
    if experiment.image_size:
        pinned["image_size"] = experiment.image_size
    if not experiment.pretrained:
        pinned["pretrained"] = False
    return pinned


def _load_data(experiment: Experiment, image_size: int) -> CxrData:
    cache = Path(experiment.cache_dir) if experiment.cache_dir else default_cache_dir()
    if experiment.dataset == "synthetic":
        root = cache / f"synthetic-{experiment.seed}"
        if not root.exists():
            make_synthetic(root.with_suffix(".tmp"), seed=experiment.seed).rename(root)
    else:
        root = Path(experiment.data_dir)
    return load_dataset(root, image_size=image_size, val_fraction=experiment.val_fraction, seed=experiment.seed, cache_dir=cache)


def _settings(experiment: Experiment, max_epochs: int, paths: ExperimentPaths) -> search.SearchSettings:
    storage = f"{experiment.storage_path.rstrip('/')}/{experiment.name}" if experiment.storage_path else str(paths.root.resolve())
    return search.SearchSettings(
        metric=experiment.metric, num_samples=experiment.num_samples, max_epochs=max_epochs,
        scheduler=experiment.scheduler, cpus_per_trial=experiment.cpus_per_trial,
        gpus_per_trial=experiment.gpus_per_trial, workers_per_trial=experiment.workers_per_trial, max_concurrent=experiment.max_concurrent, seed=experiment.seed,
        storage_path=storage,
    )


def _create(paths: ExperimentPaths, experiment: Experiment, data: CxrData) -> None:
    paths.root.mkdir(parents=True, exist_ok=False)
    write_json(paths.run, dataclasses.asdict(experiment))
    write_table(paths.splits, data.manifest)


def _best(trials: pd.DataFrame, records: list, metric: str) -> dict:
    column = f"best_{metric}"
    if column not in trials or trials[column].isna().all():
        raise RuntimeError(f"no trial reported {metric}: see the error column of trials.parquet")
    row = trials.iloc[0]
    record = next(r for r in records if r.trial_id == row["trial_id"])
    val = {c[len("at_best_"):]: row[c] for c in trials.columns if c.startswith("at_best_val_")}  # one consistent epoch
    return {"trial_id": row["trial_id"], "metric": metric, "value": float(row[column]), "best_epoch": int(row["best_epoch"]),
            "config": record.config, "val": val}


def _print_leaderboard(trials: pd.DataFrame, metric: str) -> None:
    columns = ["trial_id", "status", "epochs_run", f"best_{metric}", "best_val_auroc"]
    columns += [c for c in LEADERBOARD_COLUMNS if c in trials]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 4):
        print(f"\nleaderboard (top 10 of {len(trials)} trials by best {metric}):")
        print(trials[[c for c in columns if c in trials]].head(10).to_string(index=False))


def _print_final(summary: dict, paths: ExperimentPaths) -> None:
    t = summary["threshold"]
    print(f"\ndecision threshold {t:.4f}: chosen on val for recall >= {summary['target_recall']}")
    for split in ("val", "test"):
        m = summary[split]
        if m is None:
            print(f"{split}: no {split} split in the data")
            continue
        print(f"{split}: recall {m['recall']:.4f} {_ci(m, 'recall')}  specificity {m['specificity']:.4f} "
              f"{_ci(m, 'specificity')}  precision {m['precision']:.4f}  accuracy {m['accuracy']:.4f}  "
              f"auroc {_fmt(m['auroc'])}  (tp {m['tp']} fn {m['fn']} tn {m['tn']} fp {m['fp']})")
    print(f"results: {paths.root}")


def _ci(metrics: dict, name: str) -> str:
    low, high = metrics.get(f"{name}_ci95", (math.nan, math.nan))
    return f"[95% CI {low:.3f}-{high:.3f}]"


def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"
