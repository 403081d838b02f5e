"""Code that runs inside Ray workers: the Tune trainable (one process or a Ray Train worker group) and the
final-stage member task. A thin adapter: config dict -> cxr.TrainConfig -> cxr.engine.fit, one report per epoch."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import numpy as np
import ray
from ray import train as ray_train
from ray import tune as ray_tune
from ray.train import ScalingConfig
from ray.train import torch as ray_train_torch
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from cxr.config import TrainConfig
from cxr.dataset import CxrData
from cxr.engine import fit
from cxr.ensemble import Member, train_member
from cxr.shift import Perturbation


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs besides its config (small: the data travels as an object reference)."""

    data_ref: ray.ObjectRef
    weight_refs: dict[str, ray.ObjectRef]  # backbone -> pretrained state fetched by the driver
    workers: int
    cpus: float
    gpus: float
    storage_path: str


def train_trial(config: dict, context: TrialContext) -> None:
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


def _fit_and_report(config: dict, context: TrialContext, report_fn, checkpoint_cls, checkpoint, rank: int, device=None) -> None:
    """config dict -> TrainConfig -> cxr fit, one report per epoch (rank 0 adds the resumable checkpoint)."""
    train_config = TrainConfig.from_dict(config)
    data = ray.get(context.data_ref)
    weights = backbone_state(train_config, context.weight_refs)
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


def backbone_state(config: TrainConfig, weight_refs: dict[str, ray.ObjectRef]) -> dict | None:
    if not config.pretrained:
        return None
    if config.backbone not in weight_refs:
        raise RuntimeError(f"no pretrained weights were fetched for {config.backbone}: the space drew an unexpected backbone")
    return ray.get(weight_refs[config.backbone])


# Ray retries a task whose process or node died, never one that raised (retry_exceptions is off): a final member
# on a lost node is trained again elsewhere instead of failing the final stage
LOST_MEMBER_RETRIES = 3


@ray.remote(max_retries=LOST_MEMBER_RETRIES)
def member_task(config: TrainConfig, data: CxrData, weight_refs: dict[str, ray.ObjectRef], fold: int | None = None,
                roles: np.ndarray | None = None, bank: tuple[Perturbation, ...] = ()) -> Member:
    """One final-stage member: the best config with its own seed, trained in this task's process; a fold member
    sees data with the split column cxr.splits.fold_roles gave it (val is then its inner hold-out). bank: the
    robustness bank its films are also scored under, here on the member's device (cxr.ensemble.train_member)."""
    name = f"member seed {config.seed}" + ("" if fold is None else f" (fold {fold})")

    def log(epoch: int, metrics: dict, _save) -> None:
        print(f"{name} epoch {epoch}/{config.epochs}: val_loss {metrics['val_loss']:.4f} "
              f"val_auroc {metrics['val_auroc']:.4f} val_spec_at_recall {metrics['val_spec_at_recall']:.4f}", flush=True)

    if roles is not None:
        data = CxrData(data.images, data.manifest.assign(split=roles))
    return train_member(config, data, backbone_state=backbone_state(config, weight_refs), on_epoch_end=log, fold=fold,
                        bank=bank)
