"""Recall-focused binary metrics from pneumonia probabilities (PNEUMONIA = 1 is the positive class).

One implementation serves point estimates and the patient bootstrap alike: given weights (B, N) (how often each
film is drawn in each of B resamples) every metric is a weighted count, one value per resample, all at once."""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm

RATES = ("recall", "specificity", "ppv", "npv", "accuracy")  # at a threshold; ppv is precision
RANKING = ("auroc", "auprc")  # threshold-free
COUNTS = ("tp", "fn", "tn", "fp")


def counts(labels, probs, threshold: float, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Weighted confusion counts of predicting probs >= threshold: (B,) arrays, or (1,) without weights."""
    y = np.asarray(labels).astype(bool)
    pred = np.asarray(probs, dtype=np.float64) >= threshold
    w = np.ones((1, len(y))) if weights is None else np.asarray(weights, dtype=np.float64)
    return {"tp": w @ (y & pred), "fn": w @ (y & ~pred), "tn": w @ (~y & ~pred), "fp": w @ (~y & pred)}


def rates(labels, probs, threshold: float, weights: np.ndarray | None = None) -> dict:
    """RATES plus F1 and F2 at threshold (NaN where a rate is undefined, e.g. recall without positives); floats,
    or with weights (B, N) one value per resample."""
    c = counts(labels, probs, threshold, weights)
    tp, fn, tn, fp = (c[k] for k in COUNTS)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"recall": tp / (tp + fn), "specificity": tn / (tn + fp), "ppv": tp / (tp + fp), "npv": tn / (tn + fn),
               "accuracy": (tp + tn) / (tp + tn + fp + fn),
               "f1": 2 * tp / (2 * tp + fp + fn), "f2": 5 * tp / (5 * tp + 4 * fn + fp)}
    return out if weights is not None else {k: float(v[0]) for k, v in out.items()}


def ranking(labels, probs, weights: np.ndarray | None = None) -> dict:
    """AUROC and AUPRC (average precision) as sklearn computes them with sample weights: ties count half for AUROC,
    AP is step-wise; floats, or with weights (B, N) one value per resample (NaN where a resample lacks a class)."""
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


def threshold_for_recall(labels, probs, target: float) -> float:
    """Highest threshold t at which predicting probs >= t reaches recall >= target (nan without positives)."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    if not labels.any():
        return math.nan
    _, tpr, thresholds = skm.roc_curve(labels, probs, drop_intermediate=False)
    return float(thresholds[np.argmax(tpr >= target)])


def compute_metrics(labels, probs, threshold: float = 0.5, target_recall: float | None = None) -> dict[str, float]:
    """Rates, F1, F2, AUROC, AUPRC and the confusion counts at threshold; with target_recall also the threshold
    reaching it and specificity there (spec_at_recall)."""
    out = {"threshold": float(threshold), **rates(labels, probs, threshold), **ranking(labels, probs),
           **{k: int(v[0]) for k, v in counts(labels, probs, threshold).items()}}
    if target_recall is not None:
        t = threshold_for_recall(labels, probs, target_recall)
        at = rates(labels, probs, t) if not math.isnan(t) else {}
        out["threshold_at_recall"] = t
        out["spec_at_recall"] = at.get("specificity", math.nan)
        out["recall_at_threshold"] = at.get("recall", math.nan)
    return out
