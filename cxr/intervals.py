"""Uncertainty: bootstrap resamples of patients (all films of a patient move together), percentile intervals of
any metric of cxr.metrics, Wilson intervals as the image-level cross-check, the interval of the val-chosen
threshold, a threshold whose recall holds with confidence; and how intervals are written for a reader.

A resample is a vector of film weights (how often each film's patient was drawn), so every metric of every
resample is a weighted count: 2,000 resamples of a 600-patient split take well under a second or two.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import beta, binomtest

from cxr.metrics import COUNTS, RANKING, RATES, counts, ranking, rates

N_BOOT = 2000  # resamples: percentile intervals stable to about +-0.005 at this count
_RECALL_SLACK = 1e-12  # recall is a ratio of float sums: a target reached up to rounding is reached


def patient_bootstrap(patients, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """(n_boot, n_images) weights: row b counts how often each image's patient was drawn in resample b
    (patients drawn with replacement, as many as there are)."""
    codes, uniques = pd.factorize(pd.Series(patients), sort=True)
    n = len(uniques)
    drawn = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    return drawn[:, codes].astype(np.float64)


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> list[float]:
    tail = (1 - confidence) / 2 * 100
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[~np.isnan(finite)]
    if not len(finite):
        return [math.nan, math.nan]
    return [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]


def metrics_with_intervals(labels, probs, threshold: float, weights: np.ndarray, confidence: float = 0.95) -> dict:
    """Point estimates of the ranking metrics and the rates at threshold, each with a patient-bootstrap interval
    (`<name>_ci95`); also the confusion counts."""
    point = {**ranking(labels, probs), **rates(labels, probs, threshold)}
    spread = {**ranking(labels, probs, weights), **rates(labels, probs, threshold, weights)}
    tag = f"ci{round(confidence * 100)}"
    out = {"threshold": float(threshold)}
    for name in (*RANKING, *RATES):
        out[name] = point[name]
        out[f"{name}_{tag}"] = percentile_interval(spread[name], confidence)
    out.update({k: int(v[0]) for k, v in counts(labels, probs, threshold).items()})
    return out


def wilson_intervals(confusion: dict, confidence: float = 0.95) -> dict[str, list[float] | None]:
    """Image-level Wilson intervals of recall (tp of tp + fn) and specificity (tn of tn + fp) from COUNTS."""
    tp, fn, tn, fp = (int(confusion[k]) for k in COUNTS)
    out = {}
    for name, hits, total in (("recall", tp, tp + fn), ("specificity", tn, tn + fp)):
        ci = binomtest(hits, total).proportion_ci(confidence, method="wilson") if total else None
        out[name] = [float(ci.low), float(ci.high)] if ci else None
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
    reached = recall >= target - _RECALL_SLACK
    first = np.argmax(reached, axis=1)
    return np.where(reached.any(axis=1), thresholds[first], np.nan)


def confident_threshold(labels, probs, weights: np.ndarray, target: float, confidence: float) -> float:
    """The highest threshold whose one-sided lower confidence bound of recall (the (1 - confidence) quantile over
    patient resamples) still reaches target; the lowest positive probability if none does."""
    thresholds, recall = recall_curves(labels, probs, weights)
    lower = np.nanquantile(recall, 1 - confidence, axis=0)
    ok = np.flatnonzero(lower >= target - _RECALL_SLACK)
    return float(thresholds[ok[0]] if len(ok) else thresholds[-1])


def value_text(value) -> str:
    """A metric as the report, the model card and the console write it."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def interval_text(bounds) -> str:
    """An interval as the report, the model card and the console write it: 0.912-0.987, or n/a."""
    if not bounds or any(b is None or (isinstance(b, float) and math.isnan(b)) for b in bounds):
        return "n/a"
    return f"{bounds[0]:.3f}-{bounds[1]:.3f}"


def exact_lower_bound(hits: int, total: int, confidence: float = 0.95) -> float:
    """One-sided exact (Clopper-Pearson) lower confidence bound of a proportion hits / total."""
    return float(beta.ppf(1 - confidence, hits, total - hits + 1)) if hits else 0.0


def fewest_positives(target: float, confidence: float = 0.95) -> int:
    """The fewest positive films that, with none missed, put the exact one-sided lower bound of recall at target or
    above: (1 - confidence) ** (1 / n) >= target (149 at 0.98 and 95 %)."""
    return math.ceil(math.log(1 - confidence) / math.log(target))
