"""Final evaluation: threshold fixed on val for the target recall, test scored once at it, intervals."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.config import TrainConfig
from cxr.evaluate import retrain_and_evaluate
from cxr.metrics import compute_metrics, with_intervals


def test_wilson_interval_matches_the_closed_form():
    m = with_intervals({"tp": 390, "fn": 0, "tn": 189, "fp": 45})
    z2 = 1.959964**2
    assert m["recall_ci95"][0] == pytest.approx(390 / (390 + z2), abs=1e-6) and m["recall_ci95"][1] == 1.0
    low, high = m["specificity_ci95"]
    assert low < 189 / 234 < high and high - low == pytest.approx(0.1007, abs=2e-3)


def test_threshold_is_chosen_on_val_and_applied_to_test(synthetic_data):
    config = TrainConfig(backbone="test_efficientnet", pretrained=False, lr=3e-3, scheduler="cosine", epochs=3,
                         image_size=64, augment=0.3, monitor="val_auroc", target_recall=0.95)
    report = retrain_and_evaluate(config, synthetic_data)
    preds = report.predictions
    val, test = preds[preds["split"] == "val"], preds[preds["split"] == "test"]
    assert len(val) == len(synthetic_data.indices("val")) and len(test) == len(synthetic_data.indices("test"))
    assert report.val["recall"] >= 0.95 and report.val["threshold"] == report.threshold
    expected = compute_metrics(test["label"].to_numpy(), test["probability"].to_numpy(), report.threshold)
    assert {k: report.test[k] for k in expected} == expected
    assert (test["prediction"] == (test["probability"] >= report.threshold)).all()
    assert report.test_at_half["threshold"] == 0.5
    low, high = report.test["recall_ci95"]
    assert low <= report.test["recall"] <= high
    assert np.isfinite(report.summary()["threshold"])
