"""Optimizer and learning-rate schedule factories from a TrainConfig (torch's own classes). The config key
`scheduler` names the LR schedule; the trial scheduler (ASHA/FIFO) lives in tune.search."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import lr_scheduler

from cxr.config import TrainConfig
from cxr.models import block_parameters


def create_optimizer(model: nn.Module, config: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """One parameter group of every trainable parameter; with lr_decay < 1 (layer-wise decay) one group per trainable
    block of a CxrNet, the head's first at lr and each block before it at lr_decay times the next one's. fused (for a
    model on a GPU): one kernel for all parameters, which also takes the fp16 scaler's overflow flag on the device,
    where an unfused step makes the host read it every step."""
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    kwargs = {"lr": config.lr, "weight_decay": config.weight_decay, "fused": fused or None}  # None: torch's default
    if config.lr_decay == 1:
        return cls([p for p in model.parameters() if p.requires_grad], **kwargs)
    groups = [[p for p in block if p.requires_grad] for block in reversed(block_parameters(model))]
    groups = [{"params": g, "lr": config.lr * config.lr_decay**depth} for depth, g in enumerate(filter(None, groups))]
    return cls(groups, **kwargs)


def create_lr_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """step, plateau and cosine step once per epoch; onecycle steps once per batch."""
    if config.scheduler == "step":
        return lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if config.scheduler == "plateau":
        return lr_scheduler.ReduceLROnPlateau(optimizer, factor=config.gamma, patience=config.plateau_patience)
    if config.scheduler == "onecycle":
        return lr_scheduler.OneCycleLR(  # each group peaks at its own LR (layer-wise decay)
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=config.epochs * steps_per_epoch,
            pct_start=config.pct_start,
        )
    warmup = min(config.warmup_epochs, config.epochs - 1)
    cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs - warmup))
    if warmup == 0:
        return cosine
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=1 / (warmup + 1), total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])
