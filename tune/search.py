"""Every Ray call of the product: cluster connection, resource checks, the Tune search and the retrain task."""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
import ray
from ray import train as ray_train
from ray import tune as ray_tune
from ray.train import ScalingConfig
from ray.train import torch as ray_train_torch
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import cxr
import search_spaces
import tune
from cxr.config import TrainConfig
from cxr.dataset import CxrData
from cxr.engine import fit
from cxr.errors import InputError
from cxr.evaluate import FinalReport, retrain_and_evaluate
from tune.results import TrialRecord
from tune.spaces import CheckedSpace, Space

TUNE_DIR_NAME = "tune"
# with --workers-per-trial > 1 the Tune trial only coordinates its Ray Train worker group (Ray rejects 0)
COORDINATOR_CPU = 0.01


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


def connect(address: str | None) -> None:
    """Join the cluster at address or $RAY_ADDRESS (shipping our packages to its workers), or start a
    private local one."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env={"py_modules": [cxr, tune, search_spaces]},
                 logging_level="WARNING", log_to_driver=True)
    else:
        ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=True)


def check_resources(cpus_per_trial: float, gpus_per_trial: float, workers_per_trial: int = 1) -> None:
    """Fail fast when the cluster can never hold one trial: Ray would leave it PENDING forever."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    for kind, wanted, flag in (("GPU", gpus_per_trial, "--gpus-per-trial"), ("CPU", cpus_per_trial, "--cpus-per-trial")):
        largest = max((n.get(kind, 0.0) for n in nodes), default=0.0)
        total = sum(n.get(kind, 0.0) for n in nodes)
        coordinator = COORDINATOR_CPU if kind == "CPU" and workers_per_trial > 1 else 0.0
        if wanted > largest or wanted * workers_per_trial + coordinator > total:
            raise InputError(
                f"{flag} {wanted:g} x {workers_per_trial} worker(s) but the largest node has {largest:g} {kind}s "
                f"({total:g} in the whole cluster): lower {flag} or --workers-per-trial, or add nodes with more {kind}s"
            )


def check_storage(storage_path: str) -> None:
    """On several nodes Ray Tune (>= 2.7) needs storage they all share: check that each node sees a marker
    file the driver writes, before any trial starts. URIs (s3://, gs://, ...) are shared by nature."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2 or "://" in storage_path:
        return
    folder = Path(storage_path).resolve()
    while not folder.exists():  # the experiment folder itself is created only once every check passed
        folder = folder.parent
    marker = folder / f".cxr-shared-check-{uuid.uuid4().hex}"
    marker.touch()
    try:
        seen = ray.get([
            _exists.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(marker))
            for n in nodes
        ])
    finally:
        marker.unlink()
    blind = [n["NodeManagerAddress"] + f" ({n['NodeID'][:8]})" for n, ok in zip(nodes, seen) if not ok]
    if blind:
        raise InputError(
            f"storage {storage_path} is node-local: nodes {', '.join(blind)} cannot see it, and Ray Tune needs "
            "storage every node shares on a multi-node cluster: pass --storage-path on NFS or a URI (s3://, gs://)"
        )


@ray.remote(num_cpus=0)
def _exists(path: str) -> bool:
    return os.path.exists(path)


def share(data: CxrData) -> ray.ObjectRef:
    """Put the decoded data set in the object store once: every trial and the retrain read this one copy."""
    return ray.put(data.in_memory())


def share_weights(states: dict[str, dict]) -> dict[str, ray.ObjectRef]:
    """Pretrained backbone weights fetched once by the driver, one object per backbone."""
    return {backbone: ray.put(state) for backbone, state in states.items()}


@dataclass(frozen=True)
class _TrialContext:
    """What every trial needs besides its config (small: the data travels as an object reference)."""

    data_ref: ray.ObjectRef
    weight_refs: dict[str, ray.ObjectRef]  # backbone -> pretrained state fetched by the driver
    workers: int
    cpus: float
    gpus: float
    storage_path: str


def run_search(settings: SearchSettings, space: Space, checked: CheckedSpace, data_ref: ray.ObjectRef,
               weight_refs: dict[str, ray.ObjectRef], resume: bool) -> list[TrialRecord]:
    """Run (or resume) the Tune experiment; every trial's config, per-epoch metrics and error."""
    context = _TrialContext(data_ref, weight_refs, settings.workers_per_trial,
                            settings.cpus_per_trial, settings.gpus_per_trial, settings.storage_path)
    # with several workers the Train worker group holds the resources; the Tune trial only coordinates
    resources = {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial} if settings.workers_per_trial == 1 else {"cpu": COORDINATOR_CPU}
    trainable = ray_tune.with_resources(ray_tune.with_parameters(_train_trial, context=context), resources)
    if resume:
        tuner = ray_tune.Tuner.restore(_tune_dir(settings.storage_path), trainable=trainable,
                                       resume_unfinished=True, resume_errored=True)
    else:
        tuner = ray_tune.Tuner(trainable, tune_config=_tune_config(settings, space, checked), run_config=_run_config(settings))
    grid = tuner.fit()
    return [_record(result) for result in grid]


def _tune_config(settings: SearchSettings, space: Space, checked: CheckedSpace) -> ray_tune.TuneConfig:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = OptunaSearch(
        space=space.fn, metric=settings.metric, mode="max", points_to_evaluate=checked.points_to_evaluate or None,
        sampler=optuna.samplers.TPESampler(seed=settings.seed),
    )
    if settings.scheduler == "asha":
        # grace period: a trial gets at least an eighth of the budget before it can be stopped
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=settings.max_epochs,
                                  grace_period=max(1, settings.max_epochs // 8), reduction_factor=3)
    else:
        scheduler = FIFOScheduler()
    return ray_tune.TuneConfig(metric=settings.metric, mode="max", search_alg=searcher, scheduler=scheduler,
                               num_samples=settings.num_samples, max_concurrent_trials=settings.max_concurrent,
                               trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                               reuse_actors=False)  # a fresh process per trial frees its CUDA memory at the end


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
        verbose=1,
    )


def _tune_dir(storage_path: str) -> str:
    return f"{storage_path.rstrip('/')}/{TUNE_DIR_NAME}"


def _train_trial(config: dict, context: _TrialContext) -> None:
    """The trainable: one process, or a Ray Train data-parallel worker group launched from the Tune trial."""
    if context.workers == 1:
        _fit_and_report(config, context, ray_tune.report, ray_tune.Checkpoint, ray_tune.get_checkpoint(), rank=0)
        return
    use_gpu = context.gpus > 0
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"config": config, "context": context},
        scaling_config=ScalingConfig(num_workers=context.workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": context.cpus, **({"GPU": context.gpus} if use_gpu else {})}),
        run_config=ray_train.RunConfig(name=f"trial_{ray_tune.get_context().get_trial_id()}",
                                       storage_path=f"{context.storage_path}/train", callbacks=[TuneReportCallback()]),
    )
    trainer.fit()


def _train_worker(loop_config: dict) -> None:
    rank = ray_train.get_context().get_world_rank()
    _fit_and_report(loop_config["config"], loop_config["context"], ray_train.report, ray_train.Checkpoint,
                    ray_train.get_checkpoint(), rank=rank, device=ray_train_torch.get_device())


def _fit_and_report(config: dict, context: _TrialContext, report_fn, checkpoint_cls, checkpoint, rank: int, device=None) -> None:
    """config dict -> TrainConfig -> cxr fit, one report per epoch (rank 0 adds the resumable checkpoint)."""
    train_config = TrainConfig.from_dict(config)
    data = ray.get(context.data_ref)
    weights = _backbone_state(train_config, context.weight_refs)
    node = {"node_id": ray.get_runtime_context().get_node_id()}

    def report(epoch: int, metrics: dict, save_checkpoint) -> None:
        with tempfile.TemporaryDirectory() as folder:
            saved = None
            if rank == 0:
                save_checkpoint(folder)
                saved = checkpoint_cls.from_directory(folder)
            report_fn({**metrics, **node}, checkpoint=saved)

    if checkpoint is None:
        fit(train_config, data, report, backbone_state=weights, device=device)
        return
    with checkpoint.as_directory() as folder:
        fit(train_config, data, report, resume_from=folder, backbone_state=weights, device=device)


def _backbone_state(config: TrainConfig, weight_refs: dict[str, ray.ObjectRef]) -> dict | None:
    if not config.pretrained:
        return None
    if config.backbone not in weight_refs:
        raise RuntimeError(f"no pretrained weights were fetched for {config.backbone}: the space drew an unexpected backbone")
    return ray.get(weight_refs[config.backbone])


def _record(result) -> TrialRecord:
    epochs = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
    epochs = epochs.drop(columns=[c for c in epochs.columns if c.startswith("config/")])
    error = None if result.error is None else f"{type(result.error).__name__}: {result.error}"[:2000]
    _, index, trial_id = Path(result.path).name.split("_", 2)
    return TrialRecord(trial_id, int(index), dict(result.config), epochs.reset_index(drop=True), error)


def retrain(config: TrainConfig, data_ref: ray.ObjectRef, weight_refs: dict[str, ray.ObjectRef], settings: SearchSettings) -> FinalReport:
    """Retrain the best config from scratch in one process on a cluster node (one worker's resources)."""
    task = _retrain_task.options(num_cpus=settings.cpus_per_trial, num_gpus=settings.gpus_per_trial)
    return ray.get(task.remote(config, data_ref, weight_refs))


@ray.remote(max_retries=0)
def _retrain_task(config: TrainConfig, data: CxrData, weight_refs: dict[str, ray.ObjectRef]) -> FinalReport:
    def log(epoch: int, metrics: dict, _save) -> None:
        print(f"retrain epoch {epoch}/{config.epochs}: val_loss {metrics['val_loss']:.4f} "
              f"val_auroc {metrics['val_auroc']:.4f} val_spec_at_recall {metrics['val_spec_at_recall']:.4f}", flush=True)

    report = retrain_and_evaluate(config, data, backbone_state=_backbone_state(config, weight_refs), on_epoch_end=log)
    report.fit.model.cpu()
    return report


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()

