"""Training engine: fit with per-epoch validation, early stopping, exact resume; predict probabilities."""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel

from cxr.augment import BatchPipeline, mirror, mirror_mean
from cxr.config import TrainConfig
from cxr.dataset import CxrData
from cxr.errors import InputError
from cxr.metrics import compute_metrics
from cxr.models import CxrNet, create_model, data_config
from cxr.monitors import improves
from cxr.schedules import create_lr_scheduler, create_optimizer
from cxr.shift import Shift, selection_scores, selection_shift

CHECKPOINT_FILE = "checkpoint.pt"
# on_epoch_end(epoch, metrics, save_checkpoint): save_checkpoint(folder) writes the resumable state there
EpochCallback = Callable[[int, dict, Callable[[str | Path], Path]], None]


@dataclass
class FitResult:
    model: CxrNet  # holds the best epoch's weights
    history: list[dict]
    best_epoch: int
    best_metrics: dict
    best_state: dict = field(repr=False)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fit(
    config: TrainConfig,
    data: CxrData,
    on_epoch_end: EpochCallback | None = None,
    *,
    resume_from: str | Path | None = None,
    backbone_state: dict | None = None,
    device: torch.device | None = None,
) -> FitResult:
    """Train on data's train split, validate each epoch, stop early on config.monitor. Pretrained weights
    come from backbone_state, else from the hub (see cxr.models.create_model)."""
    device = device or default_device()
    torch.manual_seed(config.seed)
    run = _Run(config, data, device, backbone_state)
    if resume_from is not None:
        run.load(Path(resume_from))
    while run.epoch < config.epochs and not run.stopped:
        metrics = run.train_one_epoch()
        if on_epoch_end is not None:
            on_epoch_end(run.epoch, metrics, run.save)
    run.model.load_state_dict(run.best_state)
    best = run.history[run.best_epoch - 1] if run.best_epoch else {}
    return FitResult(run.model, run.history, run.best_epoch, best, run.best_state)


class _Run:
    """The mutable state of one fit: everything a checkpoint must hold to continue exactly."""

    def __init__(self, config: TrainConfig, data: CxrData, device: torch.device, backbone_state):
        self.config, self.data, self.device = config, data, device
        self.model = create_model(
            config.backbone, pretrained=config.pretrained, dropout=config.dropout,
            unfrozen_blocks=config.unfrozen_blocks, backbone_state=backbone_state,
        ).to(device)
        self.amp = device.type == "cuda"
        if self.amp:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.rank, self.world = _process_group()
        self.train_model = self.model
        if self.world > 1:  # data parallel: each process trains on its share of every global batch
            self.train_model = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
            torch.manual_seed(config.seed + self.rank)  # same initial weights (DDP broadcasts), different augmentation
        dc = data_config(self.model)
        self.pipeline = BatchPipeline(config.image_size, dc["mean"], dc["std"], config.augment, config.hflip).to(device)
        self.train_idx, self.val_idx = data.indices("train"), data.indices("val")
        if len(self.train_idx) == 0 or len(self.val_idx) == 0:
            raise InputError("the data set needs both train and val rows: check the manifest's split column")
        self.shift = selection_shift(len(data.images), self.val_idx)
        self.labels = data.labels
        labels = self.labels[self.train_idx]
        pos_weight = config.pos_weight or (labels == 0).sum() / max(1, (labels == 1).sum())
        self.loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(pos_weight), device=device))
        self.optimizer = create_optimizer(self.model, config)
        # validation, the best state and prediction use the weight average when it is on
        self.ema = ModelEmaV3(self.model, decay=config.ema_decay, use_warmup=True) if config.ema_decay > 0 else None
        self.eval_model = self.ema.module if self.ema is not None else self.model
        self.steps = 0
        self.steps_per_epoch = len(self.train_idx) // config.batch_size + (len(self.train_idx) % config.batch_size > 1)
        self.scheduler = create_lr_scheduler(self.optimizer, config, max(1, self.steps_per_epoch))
        self.sampler = torch.Generator().manual_seed(config.seed)
        self.epoch, self.history, self.stopped = 0, [], False
        self.best_value, self.best_epoch, self.bad_epochs = math.nan, 0, 0
        self.best_state = _cpu_copy(self.eval_model.state_dict())

    def train_one_epoch(self) -> dict:
        start = time.perf_counter()
        train_loss = self._train_pass()
        train_time = time.perf_counter() - start
        val_probs, val_loss = _predict(
            self.eval_model, self.pipeline, self.data.images, self.val_idx, self.config.batch_size, self.amp,
            (self.labels, self.loss_fn),
        )
        val = compute_metrics(self.labels[self.val_idx], val_probs, 0.5, self.config.target_recall)
        shift_start = time.perf_counter()
        shift_probs, _ = _predict(self.eval_model, self.pipeline, self.data.images, self.val_idx, self.config.batch_size,
                                  self.amp, shift=self.shift)
        shift_time = time.perf_counter() - shift_start
        self.epoch += 1
        metrics = {
            "epoch": self.epoch,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": train_loss,
            "val_loss": val_loss,
            **{f"val_{k}": v for k, v in val.items()},
            **selection_scores(self.labels[self.val_idx], shift_probs, self.config.target_recall),
            "train_images_per_s": len(self.train_idx) / train_time,
            "shift_time_s": shift_time,  # the shifted val pass (cxr.shift), part of epoch_time_s
            "epoch_time_s": time.perf_counter() - start,
        }
        if self.device.type == "cuda":
            metrics["gpu_peak_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        self._step_epoch_scheduler(val_loss)
        self._track_best(metrics)
        self.history.append(metrics)
        return metrics

    def _train_pass(self) -> float:
        self.train_model.train()
        total, seen = 0.0, 0
        for global_batch in _batches(self.train_idx, self.config.batch_size, self.sampler):
            batch = global_batch[self.rank :: self.world]
            x = self.pipeline(torch.from_numpy(self.data.images[batch]), train=True)
            y = torch.from_numpy(self.labels[batch]).float().to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss = self.loss_fn(self.train_model(_layout(x, self.amp)).float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.steps += 1
            if self.ema is not None:
                self.ema.update(self.model, step=self.steps)
            if self.config.scheduler == "onecycle":
                self.scheduler.step()
            total += loss.item() * len(batch)
            seen += len(batch)
        return total / max(1, seen)

    def _step_epoch_scheduler(self, val_loss: float) -> None:
        if self.config.scheduler == "plateau":
            self.scheduler.step(val_loss)
        elif self.config.scheduler != "onecycle":
            self.scheduler.step()

    def _track_best(self, metrics: dict) -> None:
        value = metrics[self.config.monitor]
        if improves(self.config.monitor, value, self.best_value):
            self.best_value, self.best_epoch, self.bad_epochs = value, self.epoch, 0
            self.best_state = _cpu_copy(self.eval_model.state_dict())
        else:
            self.bad_epochs += 1
        patience = self.config.early_stopping_patience
        self.stopped = patience > 0 and self.bad_epochs >= patience
        metrics["stopped_early"] = self.stopped and self.epoch < self.config.epochs
        metrics["best_epoch"] = self.best_epoch

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CHECKPOINT_FILE
        torch.save(
            {
                "config": self.config.to_dict(), "epoch": self.epoch, "history": self.history,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "best_state": self.best_state,
                "best_value": self.best_value, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "stopped": self.stopped, "rng_torch": torch.get_rng_state(), "rng_sampler": self.sampler.get_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "ema": self.ema.module.state_dict() if self.ema is not None else {}, "steps": self.steps,
            },
            path,
        )
        return path

    def load(self, path: Path) -> None:
        path = path / CHECKPOINT_FILE if path.is_dir() else path
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["config"] != self.config.to_dict():
            raise InputError(f"checkpoint {path} was written with another config: resume with the same config")
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.steps = state["steps"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.history, self.stopped = state["epoch"], state["history"], state["stopped"]
        self.best_state, self.best_value = state["best_state"], state["best_value"]
        self.best_epoch, self.bad_epochs = state["best_epoch"], state["bad_epochs"]
        torch.set_rng_state(state["rng_torch"])
        self.sampler.set_state(state["rng_sampler"])
        if state["rng_cuda"]:
            torch.cuda.set_rng_state_all(state["rng_cuda"])


def predict(model: CxrNet, images: np.ndarray, *, batch_size: int = 64, image_size: int | None = None,
            tta: bool = False, shift: Shift | None = None) -> np.ndarray:
    """Pneumonia probabilities for (N, H, W) uint8 grayscale images, normalised as the backbone expects;
    with tta the mean of the film's and its horizontal mirror's probabilities; with shift of the perturbed films
    (cxr.shift; films are positions in images)."""
    device = next(model.parameters()).device
    dc = data_config(model)
    pipeline = BatchPipeline(image_size or images.shape[-1], dc["mean"], dc["std"]).to(device)
    amp = device.type == "cuda"
    probs, _ = _predict(model, pipeline, images, np.arange(len(images)), batch_size, amp, shift=shift)
    if tta:
        mirrored, _ = _predict(model, pipeline, mirror(images), np.arange(len(images)), batch_size, amp, shift=shift)
        probs = mirror_mean(probs, mirrored)
    return probs


def _predict(model, pipeline, images, idx, batch_size, amp, scoring=None, shift=None) -> tuple[np.ndarray, float]:
    """Probabilities for images[idx]; with scoring = (labels, loss_fn) also the mean loss; with shift (cxr.shift) of
    the films perturbed."""
    model.eval()
    out, loss_sum = [], 0.0
    with torch.inference_mode():
        for batch in _batches(idx, batch_size):
            perturb = None if shift is None else functools.partial(shift, films=batch)
            x = pipeline(torch.from_numpy(images[batch]), train=False, shift=perturb)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(_layout(x, amp)).float()
            if scoring is not None:
                labels, loss_fn = scoring
                y = torch.from_numpy(labels[batch]).float().to(logits.device)
                loss_sum += loss_fn(logits, y).item() * len(batch)
            # float64: a float32 sigmoid rounds every logit above ~17 to 1.0 and ties the films AUROC must rank
            out.append(torch.sigmoid(logits.double()).cpu().numpy())
    probs = np.concatenate(out) if out else np.zeros(0, np.float64)
    return probs, loss_sum / max(1, len(idx))


def _batches(idx: np.ndarray, batch_size: int, generator: torch.Generator | None = None) -> Iterator[np.ndarray]:
    """Index batches; shuffled with generator (training), where a last batch of 1 is dropped for BatchNorm."""
    if generator is not None:
        idx = idx[torch.randperm(len(idx), generator=generator).numpy()]
    for start in range(0, len(idx), batch_size):
        batch = idx[start : start + batch_size]
        if generator is not None and len(batch) < 2:
            return
        yield np.sort(batch)  # sorted reads are sequential in the memory-mapped cache


def _process_group() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group (e.g. set up by Ray Train), else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _cpu_copy(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
