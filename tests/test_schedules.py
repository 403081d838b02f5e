"""cxr.schedules: optimizer and LR schedule factories."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

from cxr.config import TrainConfig
from cxr.schedules import create_lr_scheduler, create_optimizer


def _model() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    model[0].weight.requires_grad_(False)
    return model


def _lrs(config: TrainConfig, epochs: int, steps_per_epoch: int = 1, losses=None) -> list[float]:
    optimizer = create_optimizer(_model(), config)
    scheduler = create_lr_scheduler(optimizer, config, steps_per_epoch)
    seen = []
    for epoch in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        for _ in range(steps_per_epoch):
            optimizer.step()
            if config.scheduler == "onecycle":
                scheduler.step()
        if config.scheduler == "plateau":
            scheduler.step(losses[epoch])
        elif config.scheduler != "onecycle":
            scheduler.step()
    return seen


def test_optimizer_kind_and_only_trainable_parameters() -> None:
    model = _model()
    adam = create_optimizer(model, TrainConfig(optimizer="adam", lr=0.01, weight_decay=0.1))
    adamw = create_optimizer(model, TrainConfig(optimizer="adamw", lr=0.01))
    assert type(adam) is torch.optim.Adam and type(adamw) is torch.optim.AdamW
    params = adam.param_groups[0]["params"]
    assert len(params) == 3 and all(p.requires_grad for p in params)
    assert adam.param_groups[0]["weight_decay"] == 0.1 and adam.param_groups[0]["lr"] == 0.01


def test_step() -> None:
    lrs = _lrs(TrainConfig(scheduler="step", lr=0.1, step_size=2, gamma=0.5, epochs=6), 6)
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_plateau_reduces_after_patience() -> None:
    config = TrainConfig(scheduler="plateau", lr=0.1, gamma=0.5, plateau_patience=1, epochs=6)
    lrs = _lrs(config, 6, losses=[1.0, 0.9, 0.95, 0.97, 0.8, 0.85])
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05, 0.05])


def test_cosine_with_and_without_warmup() -> None:
    assert _lrs(TrainConfig(scheduler="cosine", lr=0.1, epochs=3), 3) == pytest.approx([0.1, 0.075, 0.025])
    warm = _lrs(TrainConfig(scheduler="cosine", lr=0.1, warmup_epochs=2, epochs=4), 4)
    assert warm == pytest.approx([0.1 / 3, 0.2 / 3, 0.1, 0.05])
    capped = _lrs(TrainConfig(scheduler="cosine", lr=0.1, warmup_epochs=5, epochs=2), 2)
    assert capped == pytest.approx([0.05, 0.1])  # warm-up is capped at epochs - 1


def test_onecycle_peaks_then_anneals_over_all_steps() -> None:
    config = TrainConfig(scheduler="onecycle", lr=0.1, pct_start=0.3, epochs=2)
    optimizer = create_optimizer(_model(), config)
    scheduler = create_lr_scheduler(optimizer, config, steps_per_epoch=10)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert max(lrs) == pytest.approx(0.1, rel=0.02) and 4 <= lrs.index(max(lrs)) <= 6
    assert lrs[-1] == pytest.approx(0.1 / 25 / 1e4, rel=1e-3)  # the last step ends at the floor
    assert isinstance(scheduler, lr_scheduler.OneCycleLR) and scheduler.total_steps == 20


def test_layer_wise_decay_gives_each_unfrozen_block_its_rate_head_first() -> None:
    from cxr.models import block_parameters, create_model

    torch.manual_seed(0)
    model = create_model("test_efficientnet", pretrained=False, unfrozen_blocks=2)
    config = TrainConfig(optimizer="adam", lr=0.1, lr_decay=0.5)
    optimizer = create_optimizer(model, config)
    blocks = block_parameters(model)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.05, 0.025])
    assert [{id(p) for p in g["params"]} for g in optimizer.param_groups] == [{id(p) for p in b} for b in blocks[:-4:-1]]
    assert len(create_optimizer(model, config.replace(lr_decay=1.0)).param_groups) == 1  # off: as before

    before = [[p.detach().clone() for p in g["params"]] for g in optimizer.param_groups]
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    optimizer.step()  # Adam's first step moves every parameter by about its group's LR
    moved = [max((p - b).abs().max().item() for p, b in zip(g["params"], old))
             for g, old in zip(optimizer.param_groups, before)]
    assert moved == pytest.approx([0.1, 0.05, 0.025], rel=0.01)

    onecycle = create_optimizer(model, config.replace(scheduler="onecycle", epochs=1))
    create_lr_scheduler(onecycle, config.replace(scheduler="onecycle", epochs=1), steps_per_epoch=10)
    assert [g["max_lr"] for g in onecycle.param_groups] == pytest.approx([0.1, 0.05, 0.025])  # each peaks at its own
