"""Driver-side search: the Ray Tune experiment (Optuna searcher, ASHA/FIFO scheduler, checkpoints) and the
retrain task's launch. The code that runs inside trials is tune/trainable.py; cluster setup is tune/cluster.py."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
import ray
from ray import tune as ray_tune
from ray.tune import CLIReporter
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from cxr.config import TrainConfig
from cxr.evaluate import FinalReport
from tune.cluster import COORDINATOR_CPU
from tune.results import TrialRecord
from tune.spaces import CheckedSpace, Space
from tune.trainable import TrialContext, retrain_task, train_trial

TUNE_DIR_NAME = "tune"


@dataclass(frozen=True)
class SearchSettings:
    metric: str
    num_samples: int
    max_epochs: int
    scheduler: str  # asha | fifo
    cpus_per_trial: float  # per worker with workers_per_trial > 1
    gpus_per_trial: float
    workers_per_trial: int
    max_concurrent: int
    seed: int
    storage_path: str  # folder or URI holding the Ray Tune experiment


def run_search(settings: SearchSettings, space: Space, checked: CheckedSpace, data_ref: ray.ObjectRef,
               weight_refs: dict[str, ray.ObjectRef], resume: bool) -> list[TrialRecord]:
    """Run (or resume) the Tune experiment; every trial's config, per-epoch metrics and error."""
    context = TrialContext(data_ref, weight_refs, settings.workers_per_trial,
                            settings.cpus_per_trial, settings.gpus_per_trial, settings.storage_path)
    # with several workers the Train worker group holds the resources; the Tune trial only coordinates
    resources = {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial} if settings.workers_per_trial == 1 else {"cpu": COORDINATOR_CPU}
    trainable = ray_tune.with_resources(ray_tune.with_parameters(train_trial, context=context), resources)
    if resume:
        tuner = ray_tune.Tuner.restore(_tune_dir(settings.storage_path), trainable=trainable,
                                       resume_unfinished=True, resume_errored=True)
    else:
        tuner = ray_tune.Tuner(trainable, tune_config=_tune_config(settings, space, checked), run_config=_run_config(settings))
    grid = tuner.fit()
    return [_record(result) for result in grid]


def _tune_config(settings: SearchSettings, space: Space, checked: CheckedSpace) -> ray_tune.TuneConfig:
    return ray_tune.TuneConfig(metric=settings.metric, mode="max", search_alg=make_searcher(settings, space, checked),
                               scheduler=make_scheduler(settings), num_samples=settings.num_samples,
                               max_concurrent_trials=settings.max_concurrent,
                               trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                               reuse_actors=False)  # a fresh process per trial frees its CUDA memory at the end


def make_sampler(settings: SearchSettings) -> optuna.samplers.TPESampler:
    """TPE as benchmarks/bench_search_efficiency.py measured it (BENCHMARKS.md, issue 10): a few random start-up
    trials so that a small search is not all random; multivariate + group because spaces are conditional
    (a scheduler's own parameters); constant_liar so parallel trials do not all propose the same point."""
    return optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=startup_trials(settings.num_samples),
                                      multivariate=True, group=True, constant_liar=True)


def startup_trials(num_samples: int) -> int:
    """A quarter of the trials, at least 3 and at most Optuna's default 10."""
    return min(10, max(3, num_samples // 4))


def make_searcher(settings: SearchSettings, space: Space, checked: CheckedSpace,
                  sampler: optuna.samplers.BaseSampler | None = None) -> OptunaSearch:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return OptunaSearch(space=space.fn, metric=settings.metric, mode="max",
                        points_to_evaluate=checked.points_to_evaluate or None,
                        sampler=sampler or make_sampler(settings))


def make_scheduler(settings: SearchSettings) -> ASHAScheduler | FIFOScheduler:
    if settings.scheduler == "fifo":
        return FIFOScheduler()
    # every trial gets one epoch (the cheapest signal that separates lr/unfrozen settings), a third go on at each rung
    return ASHAScheduler(time_attr="training_iteration", max_t=settings.max_epochs, grace_period=1, reduction_factor=3)


def _trial_name(trial) -> str:
    """trial_<index>_<id>: the index (1 = first created) is the tag Ray numbers trials with."""
    index = int(trial.experiment_tag.split("_", 1)[0])
    return f"trial_{index:04d}_{trial.trial_id}"


def _run_config(settings: SearchSettings) -> ray_tune.RunConfig:
    return ray_tune.RunConfig(
        name=TUNE_DIR_NAME,
        storage_path=settings.storage_path,
        checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=1),
        failure_config=ray_tune.FailureConfig(max_failures=2),
        progress_reporter=make_reporter(settings.metric),
        verbose=1,
    )


def make_reporter(metric: str) -> CLIReporter:
    """The live table: per trial its epoch, the search metric and val AUROC, so the leading trial is visible.
    Ray 2.x's default console output ignores progress_reporter; RAY_AIR_NEW_OUTPUT=0 (unless the user set it)
    selects the reporter that honours these columns."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return CLIReporter(
        metric_columns={"training_iteration": "epoch", metric: metric, "val_auroc": "val_auroc", "val_loss": "val_loss"},
        parameter_columns=["backbone", "lr", "scheduler", "unfrozen_blocks"],
        sort_by_metric=True, max_report_frequency=30, max_column_length=24,  # metric and mode come from TuneConfig
    )


def _tune_dir(storage_path: str) -> str:
    return f"{storage_path.rstrip('/')}/{TUNE_DIR_NAME}"


def _record(result) -> TrialRecord:
    epochs = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
    epochs = epochs.drop(columns=[c for c in epochs.columns if c.startswith("config/")])
    error = None if result.error is None else f"{type(result.error).__name__}: {result.error}"[:2000]
    _, index, trial_id = Path(result.path).name.split("_", 2)
    return TrialRecord(trial_id, int(index), dict(result.config), epochs.reset_index(drop=True), error)


def retrain(config: TrainConfig, data_ref: ray.ObjectRef, weight_refs: dict[str, ray.ObjectRef], settings: SearchSettings) -> FinalReport:
    """Retrain the best config from scratch in one process on a cluster node (one worker's resources)."""
    task = retrain_task.options(num_cpus=settings.cpus_per_trial, num_gpus=settings.gpus_per_trial)
    return ray.get(task.remote(config, data_ref, weight_refs))

