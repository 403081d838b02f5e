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
PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # what each means on which device: cxr.precision
CONTRAST_NORMS = ("none", "equalize", "clahe")


@dataclass(frozen=True)
class TrainConfig:
    backbone: str = "resnet18"  # any timm model name; grayscale films are fed as 3 identical channels
    pretrained: bool = True  # start from ImageNet weights (timm hub or --weights-dir); false: random init
    lr: float = 1e-4  # peak learning rate of the head and the unfrozen blocks
    weight_decay: float = 0.0  # L2 penalty (decoupled with adamw)
    optimizer: str = "adam"  # adam or adamw
    scheduler: str = "step"  # the LR schedule (not the trial scheduler, --trial-scheduler)
    step_size: int = 5  # step: epochs between decays
    gamma: float = 0.1  # step: decay factor; plateau: reduction factor
    plateau_patience: int = 2  # plateau: epochs without val_loss improvement before reducing
    warmup_epochs: int = 0  # cosine: linear warm-up epochs
    pct_start: float = 0.3  # onecycle: fraction of steps spent increasing the LR
    dropout: float = 0.0  # dropout before the classifier head
    ema_decay: float = 0.0  # exponential moving average of the weights (timm ModelEmaV3, with warm-up); 0: off
    unfrozen_blocks: int | None = None  # None: everything trains
    head_epochs: int = 0  # linear probe, then fine-tune (LP-FT): the first head_epochs epochs train the head alone
    lr_decay: float = 1.0  # layer-wise: each unfrozen block's LR is lr_decay times the next block's (head: lr); 1: off
    batch_size: int = 32  # films per optimizer step (split across the workers of a data-parallel trial)
    image_size: int = 224  # films are squashed to image_size x image_size (aspect ratio not kept)
    precision: str = "auto"  # autocast of training and inference; auto: bf16 or fp16 by the GPU, fp32 on CPU
    epochs: int = 10  # epoch budget of a trial (ASHA's max_t) and of a final member unless --final-epochs
    augment: float = 0.5  # strength in [0, 1] of rotation, crop, brightness/contrast together
    # acquisition-like augmentation (cxr.augment): each 0 is off
    aug_gamma: float = 0.0  # gamma drawn from [1 / (1 + v), 1 + v]
    aug_contrast: float = 0.0  # contrast around the film's mean, factor drawn from [1 - v, 1 + v]
    aug_sharpness: float = 0.0  # blur (below 1) or sharpen (above 1): factor drawn from [1 - v, 1 + v]
    aug_noise: float = 0.0  # Gaussian noise of standard deviation v (film range 0..1) on half the films
    aug_lowres: float = 0.0  # resolution loss on half the films: down to a side of [1 - v, 1] of the film and back up
    # geometric augmentation
    aug_rotation: float = 0.0  # degrees: rotation drawn from [-v, v]
    aug_crop: float = 0.0  # square crops of [1 - v, 1] of the film's area, resized back
    hflip: bool = True  # mirror half the training films when any augmentation is on
    contrast_norm: str = "none"  # contrast normalisation of every film the model sees (training and prediction)
    pos_weight: float | None = None  # None: balanced (negatives / positives in train)
    seed: int = 0  # seed of initialisation, batch order and augmentation
    early_stopping_patience: int = 5  # 0: off
    monitor: str = "val_loss"  # early stopping and best-epoch selection
    target_recall: float = 0.98  # the recall val_spec_at_recall and the decision threshold aim at

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


def key_rule(key: str) -> str:
    """What key's rule expects, in words (the guide's config reference prints it)."""
    return _RULES[key][2]


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
    "precision": (str, lambda v: v in PRECISIONS, f"one of {PRECISIONS} (auto: bf16 on GPUs with native bfloat16, "
                  "fp16 with loss scaling on older GPUs, fp32 on CPU)"),
    "epochs": (int, _between(1, 10000), "an integer in [1, 10000]"),
    "head_epochs": (int, _between(0, 10000), "an integer in [0, 10000] (0 turns the head-only warm-up off)"),
    "lr_decay": (float, lambda v: 0 < v <= 1, "a factor in (0, 1] (1 turns layer-wise decay off)"),
    "augment": (float, _between(0, 1), "a strength in [0, 1]"),
    "aug_gamma": (float, _between(0, 1), "a strength in [0, 1] (0 turns it off)"),
    "aug_contrast": (float, lambda v: 0 <= v < 1, "a strength in [0, 1) (0 turns it off)"),
    "aug_sharpness": (float, _between(0, 1), "a strength in [0, 1] (0 turns it off)"),
    "aug_noise": (float, _between(0, 0.2), "a standard deviation in [0, 0.2] (0 turns it off)"),
    "aug_lowres": (float, _between(0, 0.75), "a strength in [0, 0.75] (0 turns it off)"),
    "aug_rotation": (float, _between(0, 45), "degrees in [0, 45] (0 turns it off)"),
    "aug_crop": (float, _between(0, 0.75), "a share of the area in [0, 0.75] (0 turns it off)"),
    "hflip": (bool, lambda v: True, "true or false"),
    "contrast_norm": (str, lambda v: v in CONTRAST_NORMS, f"one of {CONTRAST_NORMS}"),
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
