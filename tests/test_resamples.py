"""cxr.resamples and the block-wise metrics over it: the same resamples as one dense multinomial draw, and every
bootstrap metric, interval and threshold equal to the dense (resamples x films) implementation it replaced (kept
here as the oracle), with blocks small enough that every block boundary is crossed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import cxr.resamples
from cxr.intervals import bootstrap_thresholds, confident_threshold, metrics_with_intervals
from cxr.metrics import ranking, rates
from cxr.resamples import patient_bootstrap


def _dense_bootstrap(patients, n_boot: int, seed: int) -> np.ndarray:
    codes, uniques = pd.factorize(pd.Series(patients), sort=True)
    n = len(uniques)
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot)[:, codes].astype(np.float64)


def _dense_ranking(labels, probs, w: np.ndarray) -> dict:
    y = np.asarray(labels).astype(bool)
    values, group = np.unique(np.asarray(probs, dtype=np.float64), return_inverse=True)
    onehot = np.zeros((len(y), len(values)))
    onehot[np.arange(len(y)), group] = 1.0
    pos, neg = (w * y) @ onehot, (w * ~y) @ onehot
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (pos * (below + 0.5 * neg)).sum(axis=1) / (total_pos * total_neg)
        tp, fp = np.cumsum(pos[:, ::-1], axis=1), np.cumsum(neg[:, ::-1], axis=1)
        auprc = (pos[:, ::-1] * np.where(tp + fp > 0, tp / (tp + fp), 0.0)).sum(axis=1) / total_pos
    return {"auroc": auroc, "auprc": auprc}


def _dense_recall_curves(labels, probs, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(bool)
    p_pos, w_pos = np.asarray(probs, dtype=np.float64)[y], w[:, y]
    order = np.argsort(-p_pos, kind="stable")
    p_sorted, cumulative = p_pos[order], np.cumsum(w_pos[:, order], axis=1)
    last_of_tie = np.r_[p_sorted[1:] != p_sorted[:-1], True]
    with np.errstate(invalid="ignore", divide="ignore"):
        return p_sorted[last_of_tie], cumulative[:, last_of_tie] / cumulative[:, -1:]


def _dense_thresholds(labels, probs, w: np.ndarray, target: float, confidence: float) -> tuple[np.ndarray, float]:
    thresholds, recall = _dense_recall_curves(labels, probs, w)
    reached = recall >= target - 1e-12
    per_resample = np.where(reached.any(axis=1), thresholds[np.argmax(reached, axis=1)], np.nan)
    ok = np.flatnonzero(np.nanquantile(recall, 1 - confidence, axis=0) >= target - 1e-12)
    return per_resample, float(thresholds[ok[0]] if len(ok) else thresholds[-1])


def _table(seed: int, patients: int, decimals: int | None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    patient = np.repeat(np.arange(patients), rng.integers(1, 4, patients))
    label = (rng.random(patients) < 0.65).astype(int)[patient]
    probs = 1 / (1 + np.exp(-2 * rng.normal(np.where(label, 1.0, -1.0), 1.0)))
    return pd.DataFrame({"patient": patient, "label": label,
                         "probability": np.round(probs, decimals) if decimals else probs})


@pytest.mark.parametrize("seed, patients, decimals", [(0, 200, None), (1, 300, 2), (2, 120, 1)])
def test_block_wise_bootstrap_metrics_equal_the_dense_implementation(seed, patients, decimals, monkeypatch):
    monkeypatch.setattr(cxr.resamples, "BLOCK_VALUES", 997)  # a few films per block: every boundary is crossed
    frame = _table(seed, patients, decimals)
    y, p = frame["label"].to_numpy(), frame["probability"].to_numpy()
    resamples = patient_bootstrap(frame["patient"], n_boot=300, seed=seed)
    dense = _dense_bootstrap(frame["patient"], 300, seed)
    assert np.array_equal(resamples.dense(), dense)  # the same draws from the same seed
    for name, values in ranking(y, p, resamples).items():
        np.testing.assert_allclose(values, _dense_ranking(y, p, dense)[name], rtol=0, atol=1e-12)
    dense_rates = {"recall": dense @ (y & (p >= 0.6)) / (dense @ y), "specificity": dense @ (~y.astype(bool) & (p < 0.6)) / (dense @ (1 - y))}
    for name, values in dense_rates.items():
        np.testing.assert_allclose(rates(y, p, 0.6, resamples)[name], values, rtol=0, atol=1e-12)
    for confidence in (0.8, 0.95):
        per_resample, confident = _dense_thresholds(y, p, dense, 0.9, confidence)
        np.testing.assert_allclose(bootstrap_thresholds(y, p, resamples, 0.9), per_resample, rtol=0, atol=1e-12)
        assert confident_threshold(y, p, resamples, 0.9, confidence) == confident
    assert metrics_with_intervals(y, p, 0.6, resamples) == metrics_with_intervals(y, p, 0.6, dense)


def test_counts_are_stored_in_the_smallest_type():
    resamples = patient_bootstrap(_table(3, 100, None)["patient"], n_boot=50, seed=0)
    assert resamples.drawn.dtype == np.uint8 and resamples.shape == (50, len(resamples.codes))
