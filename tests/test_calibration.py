"""cxr.calibration: temperature scaling lowers log-loss of overconfident probabilities; calibration measures."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.calibration import apply_temperature, calibration_summary, expected_calibration_error, fit_temperature, logit


def _overconfident(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    true_p = rng.uniform(0.05, 0.95, n)
    labels = (rng.random(n) < true_p).astype(int)
    return labels, 1 / (1 + np.exp(-3 * logit(true_p)))  # logits three times too large


def test_temperature_scaling_lowers_log_loss_and_ece():
    labels, probs = _overconfident()
    temperature = fit_temperature(labels, probs)
    assert temperature == pytest.approx(3.0, rel=0.15)
    before, after = calibration_summary(labels, probs), calibration_summary(labels, apply_temperature(probs, temperature))
    assert after["log_loss"] < before["log_loss"] and after["ece"] < before["ece"] and after["brier"] < before["brier"]


def test_temperature_one_changes_nothing_and_keeps_the_order():
    labels, probs = _overconfident(200)
    assert np.allclose(apply_temperature(probs, 1.0), np.clip(probs, 1e-7, 1 - 1e-7))
    assert (np.argsort(apply_temperature(probs, 2.5)) == np.argsort(probs)).all()


def test_ece_is_zero_for_matching_rates_and_large_for_wrong_ones():
    labels = np.array([0, 1] * 50)
    assert expected_calibration_error(labels, np.full(100, 0.5)) == pytest.approx(0.0)
    assert expected_calibration_error(labels, np.where(labels == 1, 0.0, 1.0)) == pytest.approx(1.0)


def test_temperature_keeps_confident_films_in_order():
    # a monotone map must not change AUROC: probabilities a hair below 1 stay distinct and ordered (T >= 1 softens;
    # a T < 1 pushes them towards 1, where float64 itself runs out of room)
    for probs in (1 - np.logspace(-6, -14, 9), np.logspace(-40, -6, 9)):
        for temperature in (1.0, 2.86, 20.0):
            assert np.all(np.diff(apply_temperature(probs, temperature)) > 0)
