"""cxr.metrics: agreement with scikit-learn, hand-computed cases, the recall-targeted threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from cxr.metrics import compute_metrics, ranking, rates, threshold_for_recall


def _random_case(seed: int, n: int = 300, decimals: int = 2):
    """Labels, probabilities rounded to make ties, per-film weights (a patient-bootstrap-like resample), threshold."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    probs = np.round(np.clip(rng.normal(0.35 + 0.3 * labels, 0.25), 0, 1), decimals)
    return labels, probs, rng.poisson(1.0, n).astype(float), float(np.round(rng.uniform(0.3, 0.7), decimals))


@pytest.mark.parametrize("seed", range(5))
def test_rates_and_ranking_agree_with_sklearn_with_and_without_weights(seed: int) -> None:
    labels, probs, weights, threshold = _random_case(seed)
    pred = (probs >= threshold).astype(int)
    out = compute_metrics(labels, probs, threshold)
    tn, fp, fn, tp = skm.confusion_matrix(labels, pred).ravel()
    assert (out["tn"], out["fp"], out["fn"], out["tp"]) == (tn, fp, fn, tp)
    for w, got in ((None, out), (weights, None)):
        if got is None:  # one resample given as a weight row: the bootstrap's own code path
            got = {k: float(v[0]) for k, v in {**rates(labels, probs, threshold, w[None]), **ranking(labels, probs, w[None])}.items()}
        kw = {"sample_weight": w}
        assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred, **kw))
        assert got["recall"] == pytest.approx(skm.recall_score(labels, pred, **kw))
        assert got["specificity"] == pytest.approx(skm.recall_score(labels, pred, pos_label=0, **kw))
        assert got["ppv"] == pytest.approx(skm.precision_score(labels, pred, **kw))
        assert got["npv"] == pytest.approx(skm.precision_score(labels, pred, pos_label=0, **kw))
        assert got["f1"] == pytest.approx(skm.f1_score(labels, pred, **kw))
        assert got["f2"] == pytest.approx(skm.fbeta_score(labels, pred, beta=2, **kw))
        assert got["auroc"] == pytest.approx(skm.roc_auc_score(labels, probs, **kw))
        assert got["auprc"] == pytest.approx(skm.average_precision_score(labels, probs, **kw))


@pytest.mark.parametrize("seed", range(3))
def test_every_resample_of_a_bootstrap_agrees_with_sklearn(seed: int) -> None:
    """The vectorised ranking over many weight rows at once equals sklearn on each row (ties included)."""
    labels, probs, _, _ = _random_case(seed, n=120, decimals=1)  # one decimal: many ties
    weights = np.random.default_rng(seed).poisson(1.0, (20, len(labels))).astype(float)
    spread = ranking(labels, probs, weights)
    for b, w in enumerate(weights):
        assert spread["auroc"][b] == pytest.approx(skm.roc_auc_score(labels, probs, sample_weight=w))
        assert spread["auprc"][b] == pytest.approx(skm.average_precision_score(labels, probs, sample_weight=w))


def test_hand_computed_case() -> None:
    labels = [0, 0, 0, 1, 1, 1, 1, 1]
    probs = [0.1, 0.4, 0.6, 0.3, 0.5, 0.7, 0.8, 0.9]
    out = compute_metrics(labels, probs, 0.5)
    assert (out["tn"], out["fp"], out["fn"], out["tp"]) == (2, 1, 1, 4)
    assert out["accuracy"] == pytest.approx(6 / 8)
    assert out["recall"] == pytest.approx(4 / 5)
    assert out["specificity"] == pytest.approx(2 / 3)
    assert out["ppv"] == pytest.approx(4 / 5) and out["npv"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(0.8)
    assert out["f2"] == pytest.approx(5 * 0.8 * 0.8 / (4 * 0.8 + 0.8))
    # pairs (pos, neg) ranked right: 0.3 beats 0.1 only; 0.5 beats 0.1, 0.4; 0.7, 0.8, 0.9 beat all three
    assert out["auroc"] == pytest.approx((1 + 2 + 3 + 3 + 3) / 15)


def test_prediction_is_positive_at_exactly_the_threshold() -> None:
    out = compute_metrics([0, 1], [0.5, 0.5], 0.5)
    assert (out["fp"], out["tp"]) == (1, 1)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_single_class_gives_nan_ranking_metrics() -> None:
    out = compute_metrics([1, 1, 1], [0.2, 0.6, 0.9], 0.5, target_recall=0.9)
    assert math.isnan(out["auroc"]) and math.isnan(out["auprc"])
    assert out["recall"] == pytest.approx(2 / 3)
    negatives = compute_metrics([0, 0], [0.2, 0.6], 0.5, target_recall=0.9)
    assert math.isnan(negatives["threshold_at_recall"]) and math.isnan(negatives["spec_at_recall"])
    assert negatives["specificity"] == pytest.approx(0.5)


def test_threshold_for_recall_hand_case() -> None:
    labels = np.array([0, 0, 1, 1, 1, 1])
    probs = np.array([0.1, 0.6, 0.3, 0.7, 0.8, 0.9])
    t = threshold_for_recall(labels, probs, 0.75)
    assert t == pytest.approx(0.7)
    assert compute_metrics(labels, probs, t)["recall"] >= 0.75
    assert compute_metrics(labels, probs, 0.8)["recall"] < 0.75  # the next higher distinct threshold misses
    assert threshold_for_recall(labels, probs, 1.0) == pytest.approx(0.3)
    assert threshold_for_recall(labels, probs, 0.25) == pytest.approx(0.9)


@pytest.mark.parametrize("seed", range(4))
def test_threshold_for_recall_is_the_highest_reaching_target(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    probs = np.round(np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 1), 2)  # rounding makes ties
    for target in (0.5, 0.9, 0.98, 1.0):
        t = threshold_for_recall(labels, probs, target)
        assert compute_metrics(labels, probs, t)["recall"] >= target
        higher = np.unique(probs[probs > t])
        if len(higher):
            assert compute_metrics(labels, probs, higher[0])["recall"] < target


def test_spec_at_recall_is_specificity_at_that_threshold() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 150)
    probs = np.clip(rng.normal(0.4 + 0.25 * labels, 0.2), 0, 1)
    out = compute_metrics(labels, probs, 0.5, target_recall=0.95)
    t = out["threshold_at_recall"]
    assert t == threshold_for_recall(labels, probs, 0.95)
    pred = probs >= t
    assert out["spec_at_recall"] == pytest.approx(np.mean(~pred[labels == 0]))
    assert out["recall_at_threshold"] == pytest.approx(np.mean(pred[labels == 1]))
    assert out["recall_at_threshold"] >= 0.95
    assert out["threshold"] == 0.5  # the headline metrics stay at the given threshold
