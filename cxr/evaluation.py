"""The evaluation a clinician can check: temperature scaling fitted on val, a decision threshold fixed on val
(point rule, or recall held with confidence), metrics with patient-bootstrap intervals, calibration before and
after, subgroups and plain-language warnings. Test rows are scored once, at the val-chosen threshold."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr.calibration import apply_temperature, calibration_summary, fit_temperature
from cxr.intervals import (N_BOOT, bootstrap_thresholds, confident_threshold, metrics_with_intervals, patient_bootstrap,
                           percentile_interval, wilson_intervals)
from cxr.metrics import compute_metrics, rates, threshold_for_recall
from cxr.subgroups import class_balance, recall_by_kind


def evaluate(predictions: pd.DataFrame, *, target_recall: float, recall_confidence: float | None = None,
             n_boot: int = N_BOOT, seed: int = 0, manifest: pd.DataFrame | None = None) -> dict:
    """predictions: path, patient, split (val/test), label, probability_raw (uncalibrated). A JSON-able dict."""
    val, test = (predictions[predictions["split"] == s].reset_index(drop=True) for s in ("val", "test"))
    temperature = fit_temperature(val["label"], val["probability_raw"])
    q_val = apply_temperature(val["probability_raw"], temperature)
    w_val = patient_bootstrap(val["patient"], n_boot, seed)
    point = threshold_for_recall(val["label"], q_val, target_recall)
    threshold, rule = point, f"highest threshold whose val recall reaches {target_recall} (point estimate)"
    if recall_confidence:
        threshold = confident_threshold(val["label"], q_val, w_val, target_recall, recall_confidence)
        rule = (f"highest threshold whose one-sided {recall_confidence:.0%} lower confidence bound of val recall "
                f"(patient bootstrap) reaches {target_recall}")
    out = {
        "target_recall": target_recall, "recall_confidence": recall_confidence, "temperature": temperature,
        "threshold": threshold, "threshold_rule": rule, "threshold_chosen_on": "val", "threshold_point": point,
        "threshold_ci95": percentile_interval(bootstrap_thresholds(val["label"], q_val, w_val, target_recall)),
        "n_boot": n_boot, "bootstrap_seed": seed,
        "calibration": {"val": _calibration(val, temperature)},
        "val": _scored(val, q_val, threshold, w_val),
        "test": None, "test_at_0.5": None,
        "subgroups": {"val": recall_by_kind(val, q_val, threshold, n_boot, seed)},
        "class_balance": class_balance(manifest if manifest is not None else predictions),
    }
    out["rule_cost"] = {"val_specificity_point_rule": rates(val["label"], q_val, point)["specificity"],
                        "val_specificity_chosen": out["val"]["specificity"]}
    if len(test):
        q_test = apply_temperature(test["probability_raw"], temperature)
        w_test = patient_bootstrap(test["patient"], n_boot, seed + 1)
        out["calibration"]["test"] = _calibration(test, temperature)
        out["test"] = _scored(test, q_test, threshold, w_test)
        out["test_at_0.5"] = compute_metrics(test["label"], q_test, 0.5)
        out["subgroups"]["test"] = recall_by_kind(test, q_test, threshold, n_boot, seed + 1)
        out["rule_cost"]["test_specificity_point_rule"] = rates(test["label"], q_test, point)["specificity"]
        out["rule_cost"]["test_specificity_chosen"] = out["test"]["specificity"]
    out["warnings"] = warnings(out)
    return out


def calibrated(predictions: pd.DataFrame, evaluation: dict) -> np.ndarray:
    return apply_temperature(predictions["probability_raw"], evaluation["temperature"])


def _calibration(frame: pd.DataFrame, temperature: float) -> dict:
    y, raw = frame["label"], frame["probability_raw"]
    return {"before": calibration_summary(y, raw), "after": calibration_summary(y, apply_temperature(raw, temperature))}


def _scored(frame: pd.DataFrame, probs: np.ndarray, threshold: float, weights: np.ndarray) -> dict:
    out = metrics_with_intervals(frame["label"], probs, threshold, weights)
    wilson = wilson_intervals(out)
    out["recall_wilson95"], out["specificity_wilson95"] = wilson["recall"], wilson["specificity"]
    out.update(images=int(len(frame)), patients=int(frame["patient"].nunique()))
    return out


def warnings(evaluation: dict) -> list[str]:
    """Plain-language cautions a reader must see next to the numbers."""
    notes = ["Validation is a patient re-split of the training pool (in-distribution); expect the test split and "
             "other hospitals to show lower specificity than val."]
    val, test = evaluation["val"], evaluation["test"]
    if test is None:
        notes.append("There is no test split: every number here is from val, which also chose the threshold.")
        return notes
    for name in ("recall", "specificity", "auroc"):
        (vlo, vhi), (tlo, thi) = val[f"{name}_ci95"], test[f"{name}_ci95"]
        if thi < vlo or tlo > vhi:
            notes.append(f"Val and test disagree on {name} beyond their 95 % intervals: val {val[name]:.3f} "
                         f"[{vlo:.3f}-{vhi:.3f}], test {test[name]:.3f} [{tlo:.3f}-{thi:.3f}]. Trust the test numbers.")
    if test["recall"] < evaluation["target_recall"]:
        notes.append(f"Test recall {test['recall']:.3f} is below the target {evaluation['target_recall']} that the "
                     "threshold reached on val.")
    return notes
