"""The experiment a command line asks for, resolved and checked before data is read or Ray starts.

Only light imports here: tune.run judges every flag with this module before it imports torch, Ray or Optuna.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cxr.errors import InputError
from cxr.manifest import is_manifest
from tune.results import ExperimentPaths, read_json


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


def resolve(experiment: Experiment, resume: bool, extend: int) -> Experiment:
    """Fill the default name; on --resume/--extend take the saved settings; refuse to overwrite an experiment."""
    if extend < 0:
        raise InputError(f"--extend {extend} is out of range: use the number of trials to add (1 or more)")
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


