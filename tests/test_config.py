"""cxr.config: TrainConfig validation, coercion of search-library values, round trips."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cxr.config import CONTRAST_NORMS, MONITORS, OPTIMIZERS, PRECISIONS, SCHEDULERS, TrainConfig
from cxr.errors import InputError


def test_defaults_are_valid_and_round_trip() -> None:
    config = TrainConfig()
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert set(config.to_dict()) == {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize(
    "key, value",
    [
        ("lr", -1), ("lr", 0), ("lr", 2.0), ("weight_decay", -0.1), ("optimizer", "sgd"), ("scheduler", "cyclic"),
        ("step_size", 0), ("gamma", 1.0), ("plateau_patience", -1), ("warmup_epochs", -1), ("pct_start", 1.0),
        ("dropout", 1.0), ("unfrozen_blocks", -1), ("batch_size", 0), ("batch_size", 1), ("image_size", 8),
        ("epochs", 0), ("augment", 1.5), ("hflip", "yes"), ("pos_weight", 0.0), ("seed", -1),
        ("early_stopping_patience", -2), ("monitor", "val_recall"), ("target_recall", 0.0), ("backbone", ""),
        ("pretrained", 1), ("epochs", 2.5), ("lr", "0.1"), ("epochs", True), ("precision", "fp8"),
        ("precision", "float16"), ("precision", None),
        ("aug_gamma", -0.1), ("aug_gamma", 1.5), ("aug_contrast", 1.0), ("aug_sharpness", 1.2), ("aug_noise", 0.3),
        ("aug_lowres", 0.8), ("aug_rotation", 46), ("aug_rotation", -5), ("aug_crop", 0.9), ("aug_crop", "0.2"),
        ("contrast_norm", "histogram"), ("contrast_norm", None), ("head_epochs", -1), ("head_epochs", 1.5),
        ("lr_decay", 0.0), ("lr_decay", 1.5),
    ],
)
def test_out_of_range_or_wrong_type_names_the_key(key: str, value) -> None:
    with pytest.raises(InputError, match=f"'{key}'"):
        TrainConfig.from_dict({key: value})
    with pytest.raises(InputError, match=f"'{key}'"):
        TrainConfig(**{key: value})


def test_unknown_key_is_named_with_a_suggestion() -> None:
    with pytest.raises(InputError, match=r"unknown config key 'learning_rate'"):
        TrainConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(InputError, match=r"did you mean 'dropout'"):
        TrainConfig.from_dict({"dropuot": 0.1})


def test_search_library_values_are_coerced() -> None:
    config = TrainConfig.from_dict(
        {"lr": np.float32(0.5), "epochs": 3.0, "batch_size": np.int64(16), "dropout": 0, "hflip": np.bool_(False),
         "unfrozen_blocks": None, "pos_weight": np.float64(2)}
    )
    assert config.lr == pytest.approx(0.5) and type(config.lr) is float
    assert config.epochs == 3 and type(config.epochs) is int
    assert config.batch_size == 16 and type(config.batch_size) is int
    assert config.dropout == 0.0 and type(config.dropout) is float
    assert config.hflip is False
    assert config.pos_weight == 2.0 and config.unfrozen_blocks is None


def test_choices_are_all_accepted() -> None:
    for optimizer in OPTIMIZERS:
        assert TrainConfig(optimizer=optimizer).optimizer == optimizer
    for scheduler in SCHEDULERS:
        assert TrainConfig(scheduler=scheduler).scheduler == scheduler
    for monitor in MONITORS:
        assert TrainConfig(monitor=monitor).monitor == monitor
    for precision in PRECISIONS:
        assert TrainConfig(precision=precision).precision == precision
    assert TrainConfig().precision == "auto"
    for kind in CONTRAST_NORMS:
        assert TrainConfig(contrast_norm=kind).contrast_norm == kind


LEVERS = ("aug_gamma", "aug_contrast", "aug_sharpness", "aug_noise", "aug_lowres", "aug_rotation", "aug_crop",
          "contrast_norm", "head_epochs", "lr_decay")


def test_every_lever_against_acquisition_shift_is_off_by_default() -> None:
    """A user's own space that never names them trains as before they existed."""
    off = {k: v for k, v in TrainConfig().to_dict().items() if k in LEVERS}
    assert off == {**dict.fromkeys(LEVERS[:7], 0.0), "contrast_norm": "none", "head_epochs": 0, "lr_decay": 1.0}
    assert TrainConfig.from_dict({"aug_rotation": 15, "head_epochs": 2.0}).aug_rotation == 15.0  # search values coerced


def test_replace_validates_and_config_is_frozen() -> None:
    config = TrainConfig()
    assert config.replace(lr=0.01).lr == 0.01 and config.lr == 1e-4
    with pytest.raises(InputError, match="'gamma'"):
        config.replace(gamma=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 0.5  # type: ignore[misc]
