"""Final model: retrain a config, fix the decision threshold on val for the target recall, then score
the test split once at that threshold (and at 0.5 for reference)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.config import TrainConfig
from cxr.dataset import CxrData
from cxr.engine import EpochCallback, FitResult, fit, predict
from cxr.metrics import compute_metrics, threshold_for_recall, with_intervals


@dataclass
class FinalReport:
    fit: FitResult
    target_recall: float
    threshold: float
    val: dict
    test: dict | None  # at the val-chosen threshold; None when the data has no test split
    test_at_half: dict | None
    predictions: pd.DataFrame  # path, patient, split, label, probability, prediction (val and test rows)

    def summary(self) -> dict:
        return {
            "target_recall": self.target_recall,
            "threshold": self.threshold,
            "threshold_chosen_on": "val",
            "best_epoch": self.fit.best_epoch,
            "val": self.val,
            "test": self.test,
            "test_at_0.5": self.test_at_half,
        }


def retrain_and_evaluate(
    config: TrainConfig, data: CxrData, *, weights_dir: str | Path | None = None, backbone_state: dict | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> FinalReport:
    result = fit(config, data, on_epoch_end, weights_dir=weights_dir, backbone_state=backbone_state)
    labels = data.labels
    probs = {s: predict(result.model, data.images[data.indices(s)], image_size=config.image_size) for s in ("val", "test")}
    val_idx, test_idx = data.indices("val"), data.indices("test")
    threshold = threshold_for_recall(labels[val_idx], probs["val"], config.target_recall)
    val = with_intervals(compute_metrics(labels[val_idx], probs["val"], threshold, config.target_recall))
    test = test_half = None
    if len(test_idx):
        test = with_intervals(compute_metrics(labels[test_idx], probs["test"], threshold))
        test_half = compute_metrics(labels[test_idx], probs["test"], 0.5)
    rows = np.concatenate([val_idx, test_idx])
    predictions = data.manifest.iloc[rows][["path", "patient", "split", "label"]].reset_index(drop=True)
    predictions["probability"] = np.concatenate([probs["val"], probs["test"]])
    predictions["prediction"] = (predictions["probability"] >= threshold).astype(int)
    return FinalReport(result, config.target_recall, threshold, val, test, test_half, predictions)
