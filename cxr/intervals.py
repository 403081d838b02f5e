"""Uncertainty by patient: bootstrap resamples of patients (all images of a patient move together), metric
intervals, the interval of the val-chosen threshold and a threshold whose recall holds with confidence.

A resample is a vector of image weights (how often each image's patient was drawn), so every metric of every
resample is a weighted count: 2,000 resamples of a 600-patient split take well under a second or two.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

RATES = ("recall", "specificity", "ppv", "npv", "accuracy")


def patient_bootstrap(patients, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """(n_boot, n_images) weights: row b counts how often each image's patient was drawn in resample b
    (patients drawn with replacement, as many as there are)."""
    codes, uniques = pd.factorize(pd.Series(patients), sort=True)
    n = len(uniques)
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    return counts[:, codes].astype(np.float64)


def rates(labels: np.ndarray, probs: np.ndarray, threshold: float, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Recall, specificity, PPV, NPV and accuracy at threshold; with weights (B, N) one value per resample."""
    y = np.asarray(labels).astype(bool)
    pred = np.asarray(probs) >= threshold
    w = np.ones((1, len(y))) if weights is None else weights
    tp, fn = w @ (y & pred), w @ (y & ~pred)
    tn, fp = w @ (~y & ~pred), w @ (~y & pred)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"recall": tp / (tp + fn), "specificity": tn / (tn + fp), "ppv": tp / (tp + fp),
               "npv": tn / (tn + fn), "accuracy": (tp + tn) / (tp + tn + fp + fn)}
    return out if weights is not None else {k: float(v[0]) for k, v in out.items()}


def ranking(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """AUROC and AUPRC (average precision, as sklearn computes them: ties count half for AUROC, step-wise AP); with
    weights (B, N) one value per resample, all at once (NaN where a resample lacks a class)."""
    y = np.asarray(labels).astype(bool)
    w = np.ones((1, len(y))) if weights is None else np.asarray(weights, dtype=np.float64)
    values, group = np.unique(np.asarray(probs, dtype=np.float64), return_inverse=True)  # ascending scores
    onehot = np.zeros((len(y), len(values)))
    onehot[np.arange(len(y)), group] = 1.0
    pos, neg = (w * y) @ onehot, (w * ~y) @ onehot  # (B, G): weight of positives / negatives at each score
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives scored strictly lower
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (pos * (below + 0.5 * neg)).sum(axis=1) / (total_pos * total_neg)
        tp, fp = np.cumsum(pos[:, ::-1], axis=1), np.cumsum(neg[:, ::-1], axis=1)  # predicting score >= each value
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        auprc = (pos[:, ::-1] * precision).sum(axis=1) / total_pos
    missing = (total_pos == 0) | (total_neg == 0)
    auroc[missing], auprc[missing] = np.nan, np.nan
    if weights is None:
        return {"auroc": float(auroc[0]), "auprc": float(auprc[0])}
    return {"auroc": auroc, "auprc": auprc}


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> list[float]:
    tail = (1 - confidence) / 2 * 100
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[~np.isnan(finite)]
    if not len(finite):
        return [math.nan, math.nan]
    return [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]


def metrics_with_intervals(labels, probs, threshold: float, weights: np.ndarray, confidence: float = 0.95) -> dict:
    """Point estimates of AUROC, AUPRC and the rates at threshold, each with a patient-bootstrap interval
    (`<name>_ci95`); also the confusion counts."""
    point = {**ranking(labels, probs), **rates(labels, probs, threshold)}
    spread = {**ranking(labels, probs, weights), **rates(labels, probs, threshold, weights)}
    tag = f"ci{round(confidence * 100)}"
    out = {"threshold": float(threshold)}
    for name, value in point.items():
        out[name] = value
        out[f"{name}_{tag}"] = percentile_interval(spread[name], confidence)
    y, pred = np.asarray(labels).astype(bool), np.asarray(probs) >= threshold
    out.update(tp=int((y & pred).sum()), fn=int((y & ~pred).sum()), tn=int((~y & ~pred).sum()), fp=int((~y & pred).sum()))
    return out


def recall_curves(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate thresholds (the positives' distinct probabilities, highest first) and the recall each reaches
    in every resample: (thresholds (T,), recall (B, T))."""
    y = np.asarray(labels).astype(bool)
    p_pos, w_pos = np.asarray(probs, dtype=np.float64)[y], weights[:, y]
    order = np.argsort(-p_pos, kind="stable")
    p_sorted, cumulative = p_pos[order], np.cumsum(w_pos[:, order], axis=1)
    last_of_tie = np.r_[p_sorted[1:] != p_sorted[:-1], True]  # predicting p >= t keeps every tie
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = cumulative[:, last_of_tie] / cumulative[:, -1:]
    return p_sorted[last_of_tie], recall


def bootstrap_thresholds(labels, probs, weights: np.ndarray, target: float) -> np.ndarray:
    """The threshold the point rule (highest threshold with recall >= target) picks in each resample."""
    thresholds, recall = recall_curves(labels, probs, weights)
    reached = recall >= target - 1e-12
    first = np.argmax(reached, axis=1)
    return np.where(reached.any(axis=1), thresholds[first], np.nan)


def confident_threshold(labels, probs, weights: np.ndarray, target: float, confidence: float) -> float:
    """The highest threshold whose one-sided lower confidence bound of recall (the (1 - confidence) quantile over
    patient resamples) still reaches target; the lowest positive probability if none does."""
    thresholds, recall = recall_curves(labels, probs, weights)
    lower = np.nanquantile(recall, 1 - confidence, axis=0)
    ok = np.flatnonzero(lower >= target - 1e-12)
    return float(thresholds[ok[0]] if len(ok) else thresholds[-1])
