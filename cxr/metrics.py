"""Recall-focused binary metrics from pneumonia probabilities (PNEUMONIA = 1 is the positive class)."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binomtest
from sklearn import metrics as skm


def threshold_for_recall(labels: np.ndarray, probs: np.ndarray, target: float) -> float:
    """Highest threshold t at which predicting probs >= t reaches recall >= target (nan without positives)."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    if not labels.any():
        return math.nan
    _, tpr, thresholds = skm.roc_curve(labels, probs, drop_intermediate=False)
    return float(thresholds[np.argmax(tpr >= target)])


def compute_metrics(
    labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5, target_recall: float | None = None
) -> dict[str, float]:
    """Accuracy, recall, specificity, precision, F1, F2, AUROC, AUPRC and the confusion counts at threshold;
    with target_recall also the threshold reaching it and specificity there (spec_at_recall)."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    out = _at_threshold(labels, probs, threshold)
    both = 0 < labels.sum() < len(labels)
    out["auroc"] = float(skm.roc_auc_score(labels, probs)) if both else math.nan
    out["auprc"] = float(skm.average_precision_score(labels, probs)) if both else math.nan
    if target_recall is not None:
        t = threshold_for_recall(labels, probs, target_recall)
        at = _at_threshold(labels, probs, t) if not math.isnan(t) else {}
        out["threshold_at_recall"] = t
        out["spec_at_recall"] = at.get("specificity", math.nan)
        out["recall_at_threshold"] = at.get("recall", math.nan)
    return out


def _at_threshold(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float]:
    pred = (probs >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(labels, pred, labels=[0, 1]).ravel()
    return {
        "threshold": float(threshold),
        "accuracy": float(skm.accuracy_score(labels, pred)),
        "recall": float(skm.recall_score(labels, pred, zero_division=0)),
        "specificity": float(skm.recall_score(labels, pred, pos_label=0, zero_division=0)),
        "precision": float(skm.precision_score(labels, pred, zero_division=0)),
        "f1": float(skm.f1_score(labels, pred, zero_division=0)),
        "f2": float(skm.fbeta_score(labels, pred, beta=2, zero_division=0)),
        "tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp),
    }


def with_intervals(metrics: dict, confidence: float = 0.95) -> dict:
    """Add Wilson intervals for recall (tp of tp+fn) and specificity (tn of tn+fp), image-level."""
    out = dict(metrics)
    for name, hits, total in (("recall", metrics["tp"], metrics["tp"] + metrics["fn"]),
                              ("specificity", metrics["tn"], metrics["tn"] + metrics["fp"])):
        if total:
            ci = binomtest(hits, total).proportion_ci(confidence, method="wilson")
            out[f"{name}_ci{round(confidence * 100)}"] = [float(ci.low), float(ci.high)]
    return out
