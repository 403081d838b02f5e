"""Recall-focused binary metrics from pneumonia probabilities (PNEUMONIA = 1 is the positive class).

One implementation serves point estimates and the patient bootstrap alike: given weights (how often each film is
drawn in each of B resamples: cxr.resamples, or a dense (B, N) array) every metric is a weighted count, one value per
resample, computed a block of resamples at a time so memory stays linear in the films."""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm

from cxr.resamples import Weights, row_blocks, weights_of

RATES = ("recall", "specificity", "ppv", "npv", "accuracy")  # at a threshold; ppv is precision
RANKING = ("auroc", "auprc")  # threshold-free
COUNTS = ("tp", "fn", "tn", "fp")


def counts(labels, probs, threshold: float, weights: Weights = None) -> dict[str, np.ndarray]:
    """Weighted confusion counts of predicting probs >= threshold: (B,) arrays, or (1,) without weights."""
    y = np.asarray(labels).astype(bool)
    pred = np.asarray(probs, dtype=np.float64) >= threshold
    cells = np.stack([y & pred, y & ~pred, ~y & ~pred, ~y & pred], axis=1).astype(np.float64)  # (N, 4), COUNTS order
    w = weights_of(weights, len(y))
    out = np.concatenate([w.take(rows) @ cells for rows in row_blocks(w.shape[0], len(y))])
    return {k: out[:, i] for i, k in enumerate(COUNTS)}


def rates(labels, probs, threshold: float, weights: Weights = None) -> dict:
    """RATES plus F1 and F2 at threshold (NaN where a rate is undefined, e.g. recall without positives); floats,
    or with weights one value per resample."""
    c = counts(labels, probs, threshold, weights)
    tp, fn, tn, fp = (c[k] for k in COUNTS)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"recall": tp / (tp + fn), "specificity": tn / (tn + fp), "ppv": tp / (tp + fp), "npv": tn / (tn + fn),
               "accuracy": (tp + tn) / (tp + tn + fp + fn),
               "f1": 2 * tp / (2 * tp + fp + fn), "f2": 5 * tp / (5 * tp + 4 * fn + fp)}
    return out if weights is not None else {k: float(v[0]) for k, v in out.items()}


def ranking(labels, probs, weights: Weights = None) -> dict:
    """AUROC and AUPRC (average precision) as sklearn computes them with sample weights: ties count half for AUROC,
    AP is step-wise; floats, or with weights one value per resample (NaN where a resample lacks a class). Films are
    sorted once; each block of resamples sums its weights per distinct score."""
    y = np.asarray(labels).astype(bool)
    scores = np.asarray(probs, dtype=np.float64)
    order = np.argsort(scores, kind="stable")
    _, starts = np.unique(scores[order], return_index=True)  # first film of each distinct score, ascending
    y_sorted = y[order]
    w = weights_of(weights, len(y))
    parts = [_ranking_block(w.take(rows, order), y_sorted, starts) for rows in row_blocks(w.shape[0], len(y))]
    auroc, auprc = (np.concatenate([p[i] for p in parts]) for i in (0, 1))
    if weights is None:
        return {"auroc": float(auroc[0]), "auprc": float(auprc[0])}
    return {"auroc": auroc, "auprc": auprc}


def _ranking_block(w: np.ndarray, y_sorted: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and AUPRC of each row of film weights w (films in ascending score order, ties starting at starts)."""
    if not w.shape[1]:
        return np.full(len(w), np.nan), np.full(len(w), np.nan)
    pos = np.add.reduceat(w * y_sorted, starts, axis=1)  # (b, G): weight of positives / negatives at each score
    neg = np.add.reduceat(w * ~y_sorted, starts, axis=1)
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives scored strictly lower
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (pos * (below + 0.5 * neg)).sum(axis=1) / (total_pos * total_neg)
        tp, fp = np.cumsum(pos[:, ::-1], axis=1), np.cumsum(neg[:, ::-1], axis=1)  # predicting score >= each value
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        auprc = (pos[:, ::-1] * precision).sum(axis=1) / total_pos
    missing = (total_pos == 0) | (total_neg == 0)
    auroc[missing], auprc[missing] = np.nan, np.nan
    return auroc, auprc


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
