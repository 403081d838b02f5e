"""One experiment end to end: validate, load data once, search, tabulate, retrain the best, test once."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxr.dataset import CxrData, load_dataset
from cxr.errors import InputError
from cxr.images import default_cache_dir
from cxr.manifest import is_manifest
from cxr.models import pretrained_state
from cxr.synthetic import make_synthetic
from tune import cluster, search
from tune.final import FinalSettings, run_final_stage
from tune.report import write_report
from tune.results import ExperimentPaths, build_tables, read_json, write_json, write_table
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
    final_seeds: int = 3
    final_epochs: int | None = None
    recall_confidence: float | None = None


def run_experiment(experiment: Experiment, *, resume: bool = False, extend: int = 0) -> int:
    experiment = _resolve(experiment, resume, extend)
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
        settings = dataclasses.replace(_settings(experiment, checked.max_epochs, paths), config_keys=checked.common_keys)
        cluster.check_storage(settings.storage_path)
        if not (resume or extend):
            _create(paths, experiment, data)
        data_ref, weight_refs = cluster.share(data), cluster.share_weights(weights)
        records = _search(settings, paths, space, checked, data_ref, weight_refs, resume=resume, extend=extend)
        trials, epochs = build_tables(records, experiment.metric, checked.max_epochs)
        write_table(paths.trials, trials)
        write_table(paths.epochs, epochs)
        previous = read_json(paths.best) if paths.best.exists() else None
        best = _best(trials, records, experiment.metric)
        write_json(paths.best, best)
        _print_leaderboard(trials, experiment.metric)
        unchanged = extend and paths.metrics.exists() and previous and previous["trial_id"] == best["trial_id"]
        if extend:
            _archive(paths, ["report"] if unchanged else ["final", "report"])
        if unchanged:
            print(f"\nthe best trial is still {best['trial_id']}: final/ is kept as it is")
        else:
            _final_stage(experiment, best, trials, data, data_ref, weight_refs, settings, paths)
        print(f"report: {write_report(paths.root)}")
        print(f"results: {paths.root} ({_folder_size(paths.root)})")
        return 0
    finally:
        cluster.shutdown()


def _search(settings: search.SearchSettings, paths: ExperimentPaths, space, checked, data_ref, weight_refs, *,
            resume: bool, extend: int) -> list:
    """Run the one unfinished search (a new one, a resumed one or an --extend round) and read the finished ones
    back: records of every trial of the study. searches.json lists the rounds (Tune experiments) in order."""
    rounds = read_json(paths.searches) if paths.searches.exists() else []
    if extend:
        if rounds and not rounds[-1]["finished"]:
            raise InputError(f"experiment '{paths.root.name}' has an unfinished search: finish it with --resume before --extend")
        done = sum(r["num_samples"] for r in rounds)
        rounds.append({"tune_dir": f"{search.TUNE_DIR_NAME}-extend-{len(rounds)}", "num_samples": extend,
                       "first_index": done + 1, "finished": False})
    elif not rounds:
        rounds.append({"tune_dir": search.TUNE_DIR_NAME, "num_samples": settings.num_samples, "first_index": 1,
                       "finished": False})
    write_json(paths.searches, rounds)
    records = []
    for i, r in enumerate(rounds):
        round_settings = dataclasses.replace(settings, tune_dir_name=r["tune_dir"], num_samples=r["num_samples"],
                                             first_index=r["first_index"], enqueue_baselines=i == 0)
        if r["finished"]:
            records += search.finished_records(round_settings)
            continue
        restart = resume and search.can_restore(round_settings)
        found = search.run_search(round_settings, space, checked, data_ref, weight_refs, resume=restart)
        search.drop_finished_checkpoints(round_settings, found)
        records += found
        r["finished"] = True
        write_json(paths.searches, rounds)
    return records


def _final_stage(experiment: Experiment, best: dict, trials: pd.DataFrame, data: CxrData, data_ref, weight_refs,
                 settings: search.SearchSettings, paths: ExperimentPaths) -> None:
    final = FinalSettings(experiment.final_seeds, experiment.final_epochs, experiment.recall_confidence, experiment.seed)
    metrics = run_final_stage(best, trials, data, data_ref, weight_refs, settings, final, paths)
    _print_final(metrics)


def _archive(paths: ExperimentPaths, names: list[str]) -> None:
    """--extend: the previous final/ and report/ move to final-<k>/ and report-<k>/, never overwritten."""
    k = 1
    while any((paths.root / f"{name}-{k}").exists() for name in ("final", "report")):
        k += 1
    for name in names:
        if (paths.root / name).exists():
            (paths.root / name).rename(paths.root / f"{name}-{k}")
            print(f"the previous {name}/ is kept as {name}-{k}/")


def _folder_size(folder: Path) -> str:
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return f"{size / 2**20:.1f} MiB on disk"


def _resolve(experiment: Experiment, resume: bool, extend: int) -> Experiment:
    """Fill the default name; on --resume/--extend take the saved settings; refuse to overwrite an experiment."""
    if resume and extend:
        raise InputError("--resume and --extend together: finish the run with --resume first, then --extend")
    if resume or extend:
        flag = "--resume" if resume else "--extend"
        if not experiment.name:
            raise InputError(f"{flag} needs --name: the experiment to continue")
        paths = ExperimentPaths(Path(experiment.results_dir) / experiment.name)
        if not paths.run.exists():
            raise InputError(f"no experiment '{experiment.name}' in {experiment.results_dir}: check --name and --results-dir")
        if resume and paths.metrics.exists():
            raise InputError(f"experiment '{experiment.name}' is already complete ({paths.metrics}): add trials with --extend N or start a new --name")
        if extend and not paths.metrics.exists():
            raise InputError(f"experiment '{experiment.name}' is not finished: complete it with --resume before --extend")
        return Experiment(**read_json(paths.run))
    name = experiment.name or f"{Path(experiment.space).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (Path(experiment.results_dir) / name).exists():
        raise InputError(f"experiment '{name}' already exists in {experiment.results_dir}: add --resume to continue it or pick another --name")
    if experiment.data_dir is None and experiment.dataset is None:
        raise InputError("no data: pass --data-dir <Kaggle chest_xray folder> or --dataset synthetic")
    check_flags(experiment)
    return dataclasses.replace(experiment, name=name)


def check_flags(experiment: Experiment) -> None:
    """Every flag value and path that can be judged before data is read or Ray starts."""
    rules = [
        ("--num-samples", experiment.num_samples, experiment.num_samples >= 1, "use 1 or more"),
        ("--max-epochs", experiment.max_epochs, experiment.max_epochs is None or experiment.max_epochs >= 1, "use 1 or more"),
        ("--image-size", experiment.image_size, experiment.image_size is None or 16 <= experiment.image_size <= 2048, "use 16 to 2048"),
        ("--workers-per-trial", experiment.workers_per_trial, experiment.workers_per_trial >= 1, "use 1 or more"),
        ("--cpus-per-trial", experiment.cpus_per_trial, experiment.cpus_per_trial > 0, "use a positive number"),
        ("--gpus-per-trial", experiment.gpus_per_trial, experiment.gpus_per_trial >= 0, "use 0 or more"),
        ("--max-concurrent", experiment.max_concurrent, experiment.max_concurrent >= 0, "use 0 (no limit) or more"),
        ("--target-recall", experiment.target_recall, 0 < experiment.target_recall <= 1, "use a recall in (0, 1]"),
        ("--val-fraction", experiment.val_fraction, 0 < experiment.val_fraction < 0.5, "use a fraction in (0, 0.5)"),
        ("--seed", experiment.seed, experiment.seed >= 0, "use 0 or more"),
        ("--final-seeds", experiment.final_seeds, experiment.final_seeds >= 1, "use 1 or more ensemble members"),
        ("--final-epochs", experiment.final_epochs, experiment.final_epochs is None or experiment.final_epochs >= 1, "use 1 or more"),
        ("--recall-confidence", experiment.recall_confidence,
         experiment.recall_confidence is None or 0.5 <= experiment.recall_confidence < 1, "use a confidence in [0.5, 1), e.g. 0.95"),
    ]
    for flag, value, ok, fix in rules:
        if not ok:
            raise InputError(f"{flag} {value} is out of range: {fix}")
    folders = [("--results-dir", experiment.results_dir), ("--cache-dir", experiment.cache_dir)]
    if experiment.storage_path and "://" not in experiment.storage_path:
        folders.append(("--storage-path", experiment.storage_path))
    for flag, folder in folders:
        if folder is not None:
            _check_writable_folder(flag, Path(folder))
    if experiment.weights_dir is not None and not Path(experiment.weights_dir).is_dir():
        raise InputError(f"--weights-dir {experiment.weights_dir} does not exist or is not a folder: pass an existing folder")
    if experiment.data_dir is not None and not (Path(experiment.data_dir).is_dir() or is_manifest(experiment.data_dir)):
        raise InputError(f"--data-dir {experiment.data_dir} does not exist as a folder or a .csv/.parquet manifest: pass the "
                         "Kaggle chest_xray folder or a manifest with path and label columns")


def _check_writable_folder(flag: str, folder: Path) -> None:
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{flag} {folder}: {existing} is a file, not a folder: pass a folder path")
    if not os.access(existing, os.W_OK):
        raise InputError(f"{flag} {folder}: {existing} is not writable: pass a folder you can write to")


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
    data = load_dataset(root, image_size=image_size, val_fraction=experiment.val_fraction, seed=experiment.seed, cache_dir=cache)
    for note in data.manifest.attrs.get("notes", []):
        print(f"note: {note}")
    return data


def _settings(experiment: Experiment, max_epochs: int, paths: ExperimentPaths) -> search.SearchSettings:
    storage = f"{experiment.storage_path.rstrip('/')}/{experiment.name}" if experiment.storage_path else str(paths.root.resolve())
    return search.SearchSettings(
        metric=experiment.metric, num_samples=experiment.num_samples, max_epochs=max_epochs,
        scheduler=experiment.scheduler, cpus_per_trial=experiment.cpus_per_trial,
        gpus_per_trial=experiment.gpus_per_trial, workers_per_trial=experiment.workers_per_trial, max_concurrent=experiment.max_concurrent, seed=experiment.seed,
        storage_path=storage, journal_path=str(paths.journal), study_name=experiment.name,
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


def _print_final(metrics: dict) -> None:
    print(f"\ndecision threshold {metrics['threshold']:.4f} (calibrated probability, temperature "
          f"{metrics['temperature']:.2f}): {metrics['threshold_rule']}")
    ensemble = metrics["ensemble"]["val"]["auroc"]
    members = ", ".join(f"{m['val']['auroc']:.4f}" for m in metrics["members"])
    print(f"val AUROC: members {members}; ensemble {ensemble:.4f}; mirroring {'on' if metrics['tta']['used'] else 'off'}")
    for split in ("val", "test"):
        m = metrics[split]
        if m is None:
            print(f"{split}: no {split} split in the data")
            continue
        print(f"{split}: recall {m['recall']:.4f} {_ci(m['recall_ci95'])}  specificity {m['specificity']:.4f} "
              f"{_ci(m['specificity_ci95'])}  ppv {m['ppv']:.4f}  npv {_fmt(m['npv'])}  auroc {_fmt(m['auroc'])}  "
              f"(tp {m['tp']} fn {m['fn']} tn {m['tn']} fp {m['fp']}; 95% CI by patient bootstrap)")
    for warning in metrics["warnings"]:
        print(f"note: {warning}")


def _ci(bounds) -> str:
    return "[95% CI n/a]" if None in bounds or any(math.isnan(b) for b in bounds) else f"[95% CI {bounds[0]:.3f}-{bounds[1]:.3f}]"


def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"
