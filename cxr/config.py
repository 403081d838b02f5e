"""The training config: one frozen dataclass whose field names are exactly the search-space keys."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

from cxr.errors import InputError
from cxr.monitors import MONITORS

OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("step", "plateau", "cosine", "onecycle")


@dataclass(frozen=True)
class TrainConfig:
    backbone: str = "resnet18"
    pretrained: bool = True
    lr: float = 1e-4
    weight_decay: float = 0.0
    optimizer: str = "adam"
    scheduler: str = "step"
    step_size: int = 5  # step: epochs between decays
    gamma: float = 0.1  # step: decay factor; plateau: reduction factor
    plateau_patience: int = 2  # plateau: epochs without val_loss improvement before reducing
    warmup_epochs: int = 0  # cosine: linear warm-up epochs
    pct_start: float = 0.3  # onecycle: fraction of steps spent increasing the LR
    dropout: float = 0.0
    ema_decay: float = 0.0  # exponential moving average of the weights (timm ModelEmaV3, with warm-up); 0: off
    unfrozen_blocks: int | None = None  # None: everything trains
    batch_size: int = 32
    image_size: int = 224
    epochs: int = 10
    augment: float = 0.5  # strength in [0, 1] of rotation, crop, brightness/contrast
    hflip: bool = True
    pos_weight: float | None = None  # None: balanced (negatives / positives in train)
    seed: int = 0
    early_stopping_patience: int = 5  # 0: off
    monitor: str = "val_loss"  # early stopping and best-epoch selection
    target_recall: float = 0.98

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            expected = invalid_value(field.name, value)
            if expected:
                raise InputError(f"config key '{field.name}' = {value!r} is invalid: expected {expected}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a plain dict, rejecting unknown keys by name."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise InputError(f"unknown config key '{key}'{hint}: valid keys are {', '.join(names)}")
        return cls(**{k: _coerce(v, _RULES[k][0]) for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def invalid_value(key: str, value: Any) -> str | None:
    """What key's rule expects, if value breaks it (None if value is fine): the one judge of config values, also for
    the tune.run flags that set a key."""
    if value is None and key in _OPTIONAL:
        return None
    kind, check, expected = _RULES[key]
    return None if _is_kind(value, kind) and check(value) else expected


def _between(lo: float, hi: float) -> Callable[[float], bool]:
    return lambda v: lo <= v <= hi


_OPTIONAL = {"unfrozen_blocks", "pos_weight"}
_RULES: dict[str, tuple[type, Callable[[Any], bool], str]] = {
    "backbone": (str, bool, "a timm model name"),
    "pretrained": (bool, lambda v: True, "true or false"),
    "lr": (float, lambda v: 0 < v <= 1, "a learning rate in (0, 1]"),
    "weight_decay": (float, _between(0, 1), "a value in [0, 1]"),
    "optimizer": (str, lambda v: v in OPTIMIZERS, f"one of {OPTIMIZERS}"),
    "scheduler": (str, lambda v: v in SCHEDULERS, f"one of {SCHEDULERS}"),
    "step_size": (int, lambda v: v >= 1, "an integer >= 1"),
    "gamma": (float, lambda v: 0 < v < 1, "a factor in (0, 1)"),
    "plateau_patience": (int, lambda v: v >= 0, "an integer >= 0"),
    "warmup_epochs": (int, lambda v: v >= 0, "an integer >= 0"),
    "pct_start": (float, lambda v: 0 < v < 1, "a fraction in (0, 1)"),
    "dropout": (float, lambda v: 0 <= v < 1, "a probability in [0, 1)"),
    "ema_decay": (float, lambda v: 0 <= v < 1, "a decay in [0, 1) (0 turns the weight average off)"),
    "unfrozen_blocks": (int, lambda v: v >= 0, "an integer >= 0, or null for all blocks"),
    "batch_size": (int, _between(2, 65536), "an integer in [2, 65536] (training drops batches of 1)"),
    "image_size": (int, _between(16, 2048), "an integer in [16, 2048]"),
    "epochs": (int, _between(1, 10000), "an integer in [1, 10000]"),
    "augment": (float, _between(0, 1), "a strength in [0, 1]"),
    "hflip": (bool, lambda v: True, "true or false"),
    "pos_weight": (float, lambda v: v > 0, "a positive weight, or null for balanced"),
    "seed": (int, lambda v: v >= 0, "an integer >= 0"),
    "early_stopping_patience": (int, lambda v: v >= 0, "an integer >= 0 (0 turns it off)"),
    "monitor": (str, lambda v: v in MONITORS, f"one of {MONITORS}"),
    "target_recall": (float, lambda v: 0 < v < 1, "a recall in (0, 1), e.g. 0.98 (1 can never be shown on finite films)"),
}


def _is_kind(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _coerce(value: Any, kind: type) -> Any:
    """Search libraries hand back numpy scalars and whole floats; bring them to the declared type."""
    if hasattr(value, "item"):
        value = value.item()
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
