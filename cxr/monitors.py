"""What an epoch and a trial are scored on, and which way is better: the one table (metric -> direction) read by
early stopping and the best epoch (cxr.engine), the searcher, Ray Tune's mode and ASHA, the budget's leading trial,
the leaderboard, the best trial and the report (tune)."""

from __future__ import annotations

import math

DIRECTIONS = {
    "val_loss": "min",  # the training loss on val: log-loss, pneumonia weighted as in training (pos_weight)
    "val_auroc": "max",
    "val_auprc": "max",
    "val_spec_at_recall": "max",  # specificity at the threshold reaching the target recall
    "val_f2": "max",
    "val_accuracy": "max",
    "val_shift_auroc": "max",  # the val films under cxr.shift's selection bank
    "val_shift_spec_at_recall": "max",
}
MONITORS = tuple(DIRECTIONS)
DEFAULT_METRIC = "val_spec_at_recall"


def direction(metric: str) -> str:
    """"min" or "max" (Ray Tune's words for a mode)."""
    return DIRECTIONS[metric]


def minimised(column: str) -> bool:
    """Whether lower is better; scores outside the table (rates, counts) are better higher."""
    return DIRECTIONS.get(column) == "min"


def improves(metric: str, value: float, best: float) -> bool:
    """value beats best (NaN: nothing yet) in metric's direction; a NaN value never does."""
    if math.isnan(value):
        return False
    return math.isnan(best) or (value < best if minimised(metric) else value > best)
