"""Training engine: fit with per-epoch validation, early stopping, exact resume; predict probabilities.

The training step never waits for the GPU: its loss is summed on the device and read once per epoch, and batches come
through cxr.feed (pinned memory, loaded one ahead on a GPU). Arithmetic follows the config key `precision`
(cxr.precision)."""

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
from cxr.feed import pinned, prefetched
from cxr.metrics import compute_metrics
from cxr.models import CxrNet, create_model, data_config
from cxr.monitors import improves
from cxr.precision import autocast, create_scaler, resolve_precision
from cxr.run_share import run_share, sched_times
from cxr.schedules import create_lr_scheduler, create_optimizer
from cxr.shift import Shift, selection_scores, selection_shift

CHECKPOINT_FILE = "checkpoint.pt"
AUGMENT_ON = ("device", "cpu")
# on_epoch_end(epoch, metrics, save_checkpoint): save_checkpoint(folder) writes the resumable state there
EpochCallback = Callable[[int, dict, Callable[[str | Path], Path]], None]


@dataclass
class FitResult:
    model: CxrNet  # holds the best epoch's weights
    history: list[dict]
    best_epoch: int
    best_metrics: dict
    best_state: dict = field(repr=False)


@dataclass(frozen=True)
class EngineOptions:
    """How batches reach the model: speed, not what is learned, so not TrainConfig keys (which a search draws and a
    checkpoint must match). The defaults suit the device; benchmarks/bench_gpu.py measures the alternatives."""

    # "device": kornia on the training device; "cpu": on the host as the batch loads (on a GPU in cxr.feed's thread,
    # which then is the only user of the host's random numbers: the step draws its own on the GPU)
    augment_on: str = "device"
    channels_last: bool | None = None  # the NHWC layout tensor cores prefer; None: on a GPU

    def __post_init__(self) -> None:
        if self.augment_on not in AUGMENT_ON:
            raise InputError(f"augment_on={self.augment_on!r} is invalid: expected one of {AUGMENT_ON}")


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
    options: EngineOptions | None = None,
) -> FitResult:
    """Train on data's train split, validate each epoch, stop early on config.monitor. Pretrained weights
    come from backbone_state, else from the hub (see cxr.models.create_model); options: how batches reach the model
    (the defaults suit the device). A loss that turns non-finite stops the fit with FloatingPointError (the weights
    diverged: there is no model to keep)."""
    device = device or default_device()
    torch.manual_seed(config.seed)
    run = _Run(config, data, device, backbone_state, options or EngineOptions())
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

    def __init__(self, config: TrainConfig, data: CxrData, device: torch.device, backbone_state,
                 options: EngineOptions):
        self.config, self.data, self.device = config, data, device
        self.precision = resolve_precision(config.precision, device)
        on_gpu = device.type == "cuda"
        self.channels_last = on_gpu if options.channels_last is None else options.channels_last
        self.model = create_model(
            config.backbone, pretrained=config.pretrained, dropout=config.dropout,
            unfrozen_blocks=config.unfrozen_blocks, backbone_state=backbone_state,
        ).to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.rank, self.world = _process_group()
        self.train_model, self.blocks = self.model, config.unfrozen_blocks  # DDP wraps it in _set_phase
        self.parallel_blocks = -1  # the blocks that trained when DDP was built (-1: not built yet)
        if self.world > 1:  # data parallel: each process trains on its share of every global batch
            torch.manual_seed(config.seed + self.rank)  # same initial weights (DDP broadcasts), different augmentation
        dc = data_config(self.model)
        self.pipeline = BatchPipeline.for_training(config, dc["mean"], dc["std"]).to(device)
        # EngineOptions.augment_on="cpu": training batches are augmented as they load, before the copy
        self.host_pipeline = (BatchPipeline.for_training(config, dc["mean"], dc["std"])
                              if options.augment_on == "cpu" else None)
        self.train_idx, self.val_idx = data.indices("train"), data.indices("val")
        if len(self.train_idx) == 0 or len(self.val_idx) == 0:
            raise InputError("the data set needs both train and val rows: check the manifest's split column")
        self.shift = selection_shift(len(data.images), self.val_idx)
        self.labels = data.labels
        labels = self.labels[self.train_idx]
        pos_weight = config.pos_weight or (labels == 0).sum() / max(1, (labels == 1).sum())
        self.loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(pos_weight), device=device))
        self.optimizer = create_optimizer(self.model, config, fused=on_gpu)
        self.scaler = create_scaler(self.precision, device)
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
        sched = sched_times() if self.device.type == "cpu" else None  # on a GPU the cores are not what it waits for
        train_loss = self._train_pass()
        train_time = time.perf_counter() - start
        val_probs, val_loss = _predict(
            self.eval_model, self.pipeline, self.data.images, self.val_idx, self.config.batch_size, self.precision,
            (self.labels, self.loss_fn),
        )
        val = compute_metrics(self.labels[self.val_idx], val_probs, 0.5, self.config.target_recall)
        shift_start = time.perf_counter()
        shift_probs, _ = _predict(self.eval_model, self.pipeline, self.data.images, self.val_idx, self.config.batch_size,
                                  self.precision, shift=self.shift)
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
            "cpu_run_share": run_share(sched, sched and sched_times()),
            "training_precision": self.precision,
        }
        if self.device.type == "cuda":
            metrics["gpu_peak_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        self._step_epoch_scheduler(val_loss)
        self._track_best(metrics)
        self.history.append(metrics)
        return metrics

    def _set_phase(self) -> None:
        """LP-FT: the head alone trains for the first head_epochs epochs, then the config's unfrozen blocks too. Set
        from the epoch before each one, so a run resumed from a checkpoint is in the phase its epoch says."""
        blocks = 0 if self.epoch < self.config.head_epochs else self.config.unfrozen_blocks
        if blocks != self.blocks:
            self.model.train_blocks(blocks)
            self.blocks = blocks
        if self.world > 1 and blocks != self.parallel_blocks:
            # DDP reduces the gradients of the parameters that trained when it was built: one wrapper per phase
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model, self.parallel_blocks = DistributedDataParallel(self.model, device_ids=ids), blocks

    def _train_pass(self) -> float:
        self._set_phase()
        self.train_model.train()
        total, seen = torch.zeros((), dtype=torch.float64, device=self.device), 0
        shares = (b[self.rank :: self.world] for b in _batches(self.train_idx, self.config.batch_size, self.sampler))
        for batch, (films, labels) in prefetched(shares, self._load, ahead=self.device.type == "cuda"):
            x = films.to(self.device, non_blocking=True)
            if self.host_pipeline is None:
                x = self.pipeline(x, train=True)
            total += self._step(x, labels.to(self.device, non_blocking=True)).detach().double() * len(batch)
            seen += len(batch)
        return self._epoch_loss(total, seen)

    def _load(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's host side: its films (augmented here when augmentation runs on the host) and labels, pinned for
        a GPU. On a GPU it runs in cxr.feed's thread: it touches the films and the host's random numbers, never the
        model or the optimizer."""
        films = torch.from_numpy(self.data.images[batch])
        if self.host_pipeline is not None:
            films = self.host_pipeline(films, train=True)
        return pinned(films, self.device), pinned(torch.from_numpy(self.labels[batch]).float(), self.device)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step on a batch on the device; returns its loss unread (reading it would wait for the GPU)."""
        with autocast(self.precision, self.device):
            loss = self.loss_fn(self.train_model(_layout(x, self.channels_last)).float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)  # fp16: skipped where the scaled gradients overflowed, then the scale drops
        self.scaler.update()
        self.steps += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.steps)
        if self.config.scheduler == "onecycle":
            self.scheduler.step()
        return loss

    def _epoch_loss(self, total: torch.Tensor, seen: int) -> float:
        """The epoch's mean training loss, the one read of the device per epoch. Non-finite means the weights or the
        activations left the precision's range (a step the fp16 scaler skips leaves the loss finite): an error, since
        a model of NaNs would otherwise score every film alike."""
        loss = total.item() / max(1, seen)
        if not math.isfinite(loss):
            other = "" if self.precision == "fp32" else ", or set the config key precision to fp32"
            raise FloatingPointError(f"training diverged: the mean loss of epoch {self.epoch + 1} is {loss} "
                                     f"({self.precision}, lr {self.config.lr:g}): lower lr{other}")
        return loss

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
                "scaler": self.scaler.state_dict(),
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
        # empty from a bf16 or fp32 run: "auto" resolves by the GPU, and a trial may resume on another kind
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.history, self.stopped = state["epoch"], state["history"], state["stopped"]
        self.best_state, self.best_value = state["best_state"], state["best_value"]
        self.best_epoch, self.bad_epochs = state["best_epoch"], state["bad_epochs"]
        torch.set_rng_state(state["rng_torch"])
        self.sampler.set_state(state["rng_sampler"])
        if state["rng_cuda"]:
            torch.cuda.set_rng_state_all(state["rng_cuda"])


def predict(model: CxrNet, images: np.ndarray, *, contrast_norm: str, batch_size: int = 64,
            image_size: int | None = None, tta: bool = False, precision: str = "auto",
            shift: Shift | None = None) -> np.ndarray:
    """Pneumonia probabilities for (N, H, W) uint8 grayscale images, contrast-normalised as the model trained
    (its config's contrast_norm: no default, so no caller forgets it) and normalised as the backbone expects;
    with tta the mean of the film's and its horizontal mirror's probabilities; with shift of the perturbed films
    (cxr.shift; films are positions in images). precision: the config key's value, resolved for the model's device
    as training resolves it (cxr.precision)."""
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    dc = data_config(model)
    pipeline = BatchPipeline(image_size or images.shape[-1], dc["mean"], dc["std"], contrast_norm=contrast_norm).to(device)
    probs, _ = _predict(model, pipeline, images, np.arange(len(images)), batch_size, precision, shift=shift)
    if tta:
        mirrored, _ = _predict(model, pipeline, mirror(images), np.arange(len(images)), batch_size, precision,
                               shift=shift)
        probs = mirror_mean(probs, mirrored)
    return probs


def _predict(model, pipeline, images, idx, batch_size, precision, scoring=None, shift=None) -> tuple[np.ndarray, float]:
    """Probabilities for images[idx]; with scoring = (labels, loss_fn) also the mean loss; with shift (cxr.shift) of
    the films perturbed. Logits and loss stay on the device until the end: one read, not one per batch."""
    model.eval()
    device = next(model.parameters()).device
    out, loss_sum = [], torch.zeros((), dtype=torch.float64, device=device)
    with torch.inference_mode():
        for batch in _batches(idx, batch_size):
            perturb = None if shift is None else functools.partial(shift, films=batch)
            x = pipeline(pinned(torch.from_numpy(images[batch]), device), train=False, shift=perturb)
            with autocast(precision, device):
                logits = model(_layout(x, device.type == "cuda")).float()
            if scoring is not None:
                labels, loss_fn = scoring
                y = pinned(torch.from_numpy(labels[batch]).float(), device).to(device, non_blocking=True)
                loss_sum += loss_fn(logits, y).double() * len(batch)
            out.append(logits)
    if not out:
        return np.zeros(0, np.float64), 0.0
    # float64: a float32 sigmoid rounds every logit above ~17 to 1.0 and ties the films AUROC must rank
    probs = torch.sigmoid(torch.cat(out).double()).cpu().numpy()
    return probs, loss_sum.item() / len(idx)


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
