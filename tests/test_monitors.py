"""cxr.monitors: one direction per metric, and the comparison every chooser makes with it."""

from __future__ import annotations

import math

from cxr.monitors import DIRECTIONS, MONITORS, improves, minimised
from tune.settings import RunSettings


def test_every_metric_a_run_may_be_scored_on_has_a_direction_and_only_the_loss_is_minimised():
    assert set(DIRECTIONS.values()) == {"min", "max"}
    assert [m for m in MONITORS if minimised(m)] == ["val_loss"]
    assert {"val_shift_auroc", "val_shift_spec_at_recall"} <= set(MONITORS)
    choices = next(f for f in RunSettings.__dataclass_fields__.values() if f.name == "metric").metadata["choices"]
    assert choices == list(MONITORS)  # --metric offers every one, val_loss included
    assert not minimised("val_recall")  # a rate outside the table is better higher


def test_improves_follows_the_direction_and_a_nan_never_improves():
    assert improves("val_loss", 0.3, 0.4) and not improves("val_loss", 0.5, 0.4)
    assert improves("val_auroc", 0.5, 0.4) and not improves("val_auroc", 0.3, 0.4)
    assert improves("val_loss", 0.3, math.nan) and not improves("val_loss", math.nan, 0.4)
    assert not improves("val_auroc", math.nan, math.nan) and not improves("val_auroc", 0.4, 0.4)
