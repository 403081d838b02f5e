"""Temperature scaling of pneumonia probabilities: one parameter T fitted on val, q = sigmoid(logit(p) / T)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

_EPS = 1e-7


def logit(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities; temperature 1 leaves them as they are (up to clipping at 1e-7)."""
    return 1.0 / (1.0 + np.exp(-logit(probs) / temperature))


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the log-loss of apply_temperature(probs, T) on (labels, probs)."""
    z, y = logit(probs), np.asarray(labels, dtype=np.float64)

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, s) - y * s))  # log(1 + e^s) - y s: stable binary log-loss

    best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(best.x))
