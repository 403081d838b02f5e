"""Uncertainty: percentile intervals of any metric of cxr.metrics over patient-bootstrap resamples
(cxr.resamples: all films of a patient move together), Wilson intervals as the image-level cross-check, the interval
of the val-chosen threshold, a threshold whose recall holds with confidence; and how intervals are written for a
reader.

Every metric of every resample is a weighted count, read a block of resamples (or of films) at a time: 2,000
resamples of a 600-patient split take well under a second, of 50,000 films a few seconds, in memory linear in the
films.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from scipy.stats import beta, binom, binomtest

from cxr.metrics import COUNTS, RANKING, RATES, counts, ranking, rates
from cxr.resamples import Weights, column_blocks, row_blocks, weights_of

N_BOOT = 2000  # resamples: percentile intervals stable to about +-0.005 at this count
_RECALL_SLACK = 1e-12  # recall is a ratio of float sums: a target reached up to rounding is reached


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


def _positives_by_score(labels, probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the positives' film indices, highest probability first; the candidate thresholds, their distinct
    probabilities; the position in that order of each threshold's last film: predicting p >= t keeps every tie)."""
    y = np.asarray(labels).astype(bool)
    positives = np.flatnonzero(y)
    p_pos = np.asarray(probs, dtype=np.float64)[positives]
    order = np.argsort(-p_pos, kind="stable")
    p_sorted = p_pos[order]
    last_of_tie = np.flatnonzero(np.r_[p_sorted[1:] != p_sorted[:-1], True]) if len(p_sorted) else np.zeros(0, int)
    return positives[order], p_sorted[last_of_tie], last_of_tie


def recall_curves(labels, probs, weights: Weights) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Candidate thresholds (the positives' distinct probabilities, highest first) and, a block of resamples at a
    time, the recall each reaches: yields (thresholds (T,), recall (b, T)) per block."""
    films, thresholds, last_of_tie = _positives_by_score(labels, probs)
    w = weights_of(weights, len(np.asarray(labels)))
    for rows in row_blocks(w.shape[0], len(films)):
        cumulative = np.cumsum(w.take(rows, films), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            yield thresholds, cumulative[:, last_of_tie] / cumulative[:, -1:]


def bootstrap_thresholds(labels, probs, weights: Weights, target: float) -> np.ndarray:
    """The threshold the point rule (highest threshold with recall >= target) picks in each resample (NaN where
    none reaches it)."""
    if not np.asarray(labels).astype(bool).any():
        return np.full(weights_of(weights, len(np.asarray(labels))).shape[0], np.nan)
    picked = []
    for thresholds, recall in recall_curves(labels, probs, weights):
        reached = recall >= target - _RECALL_SLACK
        picked.append(np.where(reached.any(axis=1), thresholds[np.argmax(reached, axis=1)], np.nan))
    return np.concatenate(picked)


def confident_threshold(labels, probs, weights: Weights, target: float, confidence: float) -> float:
    """The highest threshold whose one-sided lower confidence bound of recall (the (1 - confidence) quantile over
    patient resamples) still reaches target; the lowest positive probability if none does. Thresholds are taken a
    block of films at a time, each in every resample (a quantile needs them all)."""
    films, thresholds, last_of_tie = _positives_by_score(labels, probs)
    if not len(films):
        return math.nan
    w = weights_of(weights, len(np.asarray(labels)))
    total = np.concatenate([_running_sum(w.take(rows, films))[:, -1].copy() for rows in row_blocks(w.shape[0], len(films))])
    valid = total > 0  # a resample without positives has no recall (nanquantile would skip it, far slower)
    if not valid.any():
        return float(thresholds[-1])
    carry = np.zeros(int(valid.sum()))
    for block in column_blocks(w.shape[0], len(films)):
        cumulative = _running_sum(w.take(slice(None), films[block])[valid], carry)
        carry = cumulative[:, -1]
        columns = np.flatnonzero((last_of_tie >= block.start) & (last_of_tie < block.stop))
        recall = cumulative[:, last_of_tie[columns] - block.start] / total[valid, None]
        ok = np.flatnonzero(np.quantile(recall, 1 - confidence, axis=0) >= target - _RECALL_SLACK)
        if len(ok):
            return float(thresholds[columns[ok[0]]])
    return float(thresholds[-1])


def exact_threshold(labels, probs, target: float, confidence: float) -> float:
    """The highest threshold whose recall on further films from the same source reaches target with the given
    confidence, distribution-free: the k-th lowest positive probability, k the largest with
    P(Binomial(n, 1 - target) >= k) >= confidence (the fraction of pneumonia scoring below the k-th lowest of n is
    Beta(k, n - k + 1)); the lowest positive probability when even k = 1 falls short (too few positives)."""
    p_pos = np.sort(np.asarray(probs, dtype=np.float64)[np.asarray(labels).astype(bool)])
    if not len(p_pos):
        return math.nan
    held = binom.sf(np.arange(len(p_pos)), len(p_pos), 1 - target) >= confidence  # index k - 1: P(X >= k)
    k = int(np.flatnonzero(held)[-1]) + 1 if held.any() else 1
    return float(p_pos[k - 1])


def _running_sum(values: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """Cumulative sums along each row, continuing from start: added in the order one cumsum over the whole row
    would add them, so a row taken in blocks sums exactly as it would at once."""
    if start is None:
        return np.cumsum(values, axis=1)
    return np.cumsum(np.concatenate([start[:, None], values], axis=1), axis=1)[:, 1:]


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
