"""Calibration: temperature scaling (one parameter T fitted on val, q = sigmoid(logit(p) / T)) and how well
probabilities match observed rates (ECE, Brier, log-loss, reliability curve)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit
from scipy.special import logit as _logit
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss

_FLOAT = np.finfo(np.float64)
_LOW, _HIGH = _FLOAT.tiny, 1 - _FLOAT.epsneg  # only exact 0 and 1 move: clipping must not tie films the members ranked apart
_LOSS_EPS = 1e-15  # log-loss of a confident mistake is capped, as sklearn caps it
TEMPERATURE_BOUNDS = (0.05, 20.0)  # a degenerate val set cannot blow the temperature up
ECE_BINS = 15


def logit(probs: np.ndarray) -> np.ndarray:
    return _logit(np.clip(np.asarray(probs, dtype=np.float64), _LOW, _HIGH))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities; temperature 1 leaves them as they are (0 and 1 move to the nearest float64 inside)."""
    return expit(logit(probs) / temperature)


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float:
    """The T in TEMPERATURE_BOUNDS that minimises the log-loss of apply_temperature(probs, T) on (labels, probs)."""
    z, y = logit(probs), np.asarray(labels, dtype=np.float64)

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, s) - y * s))  # log(1 + e^s) - y s: stable binary log-loss

    best = minimize_scalar(nll, bounds=tuple(np.log(TEMPERATURE_BOUNDS)), method="bounded")
    return float(np.exp(best.x))


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the image-weighted mean |observed pneumonia rate - mean probability| over equal-width bins."""
    y, p = np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(which):
        inside = which == b
        total += inside.sum() * abs(y[inside].mean() - p[inside].mean())
    return float(total / max(1, len(p)))


def calibration_summary(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """ECE (ECE_BINS bins), Brier score and log-loss of probabilities against labels (lower is better for all)."""
    y, p = np.asarray(labels, dtype=int), np.clip(np.asarray(probs, dtype=np.float64), _LOSS_EPS, 1 - _LOSS_EPS)
    return {
        "ece": expected_calibration_error(y, p),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
    }


def reliability_curve(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(mean probability, observed rate) per non-empty bin, for a reliability diagram."""
    observed, predicted = calibration_curve(np.asarray(labels, dtype=int), np.asarray(probs), n_bins=bins)
    return predicted, observed
