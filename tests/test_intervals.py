"""cxr.intervals: the patient bootstrap keeps patients whole, intervals hold their estimates and narrow with data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr.intervals import (bootstrap_thresholds, confident_threshold, interval_text, metrics_with_intervals,
                           recall_curves, wilson_intervals)
from cxr.metrics import rates, threshold_for_recall
from cxr.resamples import patient_bootstrap


def _split(patients: int, seed: int = 0) -> pd.DataFrame:
    """1-3 films per patient, a patient's films share the label; scores separate the classes imperfectly."""
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(patients):
        label = int(rng.random() < 0.65)
        for _ in range(int(rng.integers(1, 4))):
            rows.append((f"p{patient}", label, float(np.clip(0.35 * label + rng.normal(0.4, 0.18), 0, 1))))
    return pd.DataFrame(rows, columns=["patient", "label", "probability"])


def test_bootstrap_never_splits_a_patient():
    frame = _split(60)
    weights = patient_bootstrap(frame["patient"], n_boot=300, seed=1).dense()
    assert weights.shape == (300, len(frame))
    for _, rows in frame.groupby("patient"):
        block = weights[:, rows.index]
        assert (block == block[:, :1]).all()  # every film of a patient is drawn as often as the others
    per_patient = pd.DataFrame(weights.T).groupby(frame["patient"].to_numpy()).first()
    assert (per_patient.sum(axis=0) == frame["patient"].nunique()).all()  # as many patients drawn as there are


def test_intervals_contain_their_estimates_and_narrow_with_more_patients():
    widths = []
    for patients in (60, 600):
        frame = _split(patients)
        weights = patient_bootstrap(frame["patient"], n_boot=2000, seed=0)
        out = metrics_with_intervals(frame["label"], frame["probability"], 0.6, weights)
        for name in ("auroc", "auprc", "recall", "specificity", "ppv", "npv", "accuracy"):
            low, high = out[f"{name}_ci95"]
            assert low <= out[name] <= high, (patients, name)
        widths.append({name: np.diff(out[f"{name}_ci95"])[0] for name in ("auroc", "recall", "specificity", "ppv")})
    assert all(widths[1][name] < widths[0][name] for name in widths[0]), widths


def test_unweighted_rates_match_the_counts():
    frame = _split(80)
    y, p = frame["label"].to_numpy(), frame["probability"].to_numpy()
    out = rates(y, p, 0.55)
    assert out["recall"] == pytest.approx(((p >= 0.55) & (y == 1)).sum() / (y == 1).sum())
    assert out["specificity"] == pytest.approx(((p < 0.55) & (y == 0)).sum() / (y == 0).sum())


def test_bootstrap_threshold_of_an_unweighted_resample_is_the_point_rule():
    frame = _split(100)
    ones = np.ones((1, len(frame)))
    assert bootstrap_thresholds(frame["label"], frame["probability"], ones, 0.9)[0] == pytest.approx(
        threshold_for_recall(frame["label"], frame["probability"], 0.9))
    (thresholds, recall), = recall_curves(frame["label"], frame["probability"], ones)
    assert (np.diff(thresholds) < 0).all() and (np.diff(recall[0]) >= 0).all()


def test_confidence_rule_gives_a_lower_threshold_that_keeps_recall():
    frame = _split(150)
    weights = patient_bootstrap(frame["patient"], n_boot=2000, seed=3)
    point = threshold_for_recall(frame["label"], frame["probability"], 0.9)
    confident = confident_threshold(frame["label"], frame["probability"], weights, 0.9, 0.95)
    assert confident <= point
    recall = rates(frame["label"], frame["probability"], confident, weights)["recall"]
    assert np.quantile(recall, 0.05) >= 0.9 - 1e-9


def test_wilson_intervals_match_the_textbook_case():
    out = wilson_intervals({"tp": 8, "fn": 2, "tn": 0, "fp": 0})
    assert out["recall"] == pytest.approx([0.4902, 0.9433], abs=1e-4)  # Wilson score interval of 8/10
    assert out["specificity"] is None  # no negatives: no interval


def test_interval_text():
    assert interval_text([0.91234, 0.98]) == "0.912-0.980"
    assert interval_text([np.nan, 0.5]) == interval_text(None) == "n/a"


def test_the_shipped_site_rule_keeps_its_recall_on_further_films_and_the_point_rule_does_not():
    """300 seeded calibration sets of 200 pneumonia films from one smooth score distribution (logit ~ N(2, 1)): the
    share whose threshold reaches recall 0.98 on the distribution itself (every further film) is at least 90 % for
    cxr.recalibrate's default rule and below 70 % for the point rule (about half: the empirical quantile)."""
    from scipy.stats import norm

    from cxr.evaluation import operating_point
    from cxr.cli import DEFAULT_THRESHOLD_RULE as DEFAULT_RULE

    rng = np.random.default_rng(0)
    reached = {DEFAULT_RULE: [], "point": []}
    for _ in range(300):
        logits = np.r_[rng.normal(2, 1, 200), rng.normal(-2, 1, 100)]
        labels = np.r_[np.ones(200, int), np.zeros(100, int)]
        for rule in reached:
            point = operating_point(labels, 1 / (1 + np.exp(-logits)), np.arange(300), target_recall=0.98, rule=rule,
                                    recall_confidence=0.95, n_boot=2000 if rule == "bootstrap" else 20)  # else unused
            raw_cut = np.log(point["threshold"] / (1 - point["threshold"])) * point["temperature"]  # logit scale
            reached[rule].append(norm.sf(raw_cut, 2, 1) >= 0.98)
    assert np.mean(reached[DEFAULT_RULE]) >= 0.9 and np.mean(reached["point"]) < 0.7, {k: np.mean(v) for k, v in reached.items()}
