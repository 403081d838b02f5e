"""The evaluation a clinician can check: temperature scaling fitted on val, a decision threshold fixed on val
(point rule, or recall held with confidence), metrics with patient-bootstrap intervals, calibration before and
after, subgroups and plain-language warnings. Test rows are scored once, at the val-chosen threshold."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr.calibration import apply_temperature, calibration_summary, fit_temperature
from cxr.final_metrics import CHOSEN_ON
from cxr.intervals import (N_BOOT, bootstrap_thresholds, confident_threshold, exact_threshold, metrics_with_intervals,
                           percentile_interval, wilson_intervals)
from cxr.metrics import compute_metrics, counts, rates, threshold_for_recall
from cxr.resamples import patient_bootstrap
from cxr.subgroups import class_balance, recall_by_kind



def evaluate(predictions: pd.DataFrame, *, target_recall: float, recall_confidence: float | None = None,
             rule: str | None = None, n_boot: int = N_BOOT, seed: int = 0, manifest: pd.DataFrame | None = None,
             chosen_on: str = "val") -> dict:
    """predictions: path, patient, split (chosen_on or test), label, probability_raw (uncalibrated). Temperature and
    threshold (by rule: operating_point) are fitted on the chosen_on rows ("val", or "oof" for a fold ensemble); test
    is scored once. A JSON-able dict whose chosen_on and "test" keys hold the scored metrics (threshold_chosen_on:
    chosen_on)."""
    chosen, test = (predictions[predictions["split"] == s].reset_index(drop=True) for s in (chosen_on, "test"))
    point = operating_point(chosen["label"], chosen["probability_raw"], chosen["patient"], target_recall=target_recall,
                            recall_confidence=recall_confidence, rule=rule, n_boot=n_boot, seed=seed,
                            fitted_on=CHOSEN_ON[chosen_on])
    temperature, threshold, w_chosen = point["temperature"], point["threshold"], point.pop("weights")
    q_chosen = apply_temperature(chosen["probability_raw"], temperature)
    out = {
        **point, "threshold_chosen_on": chosen_on, "n_boot": n_boot, "bootstrap_seed": seed,
        "calibration": {chosen_on: _calibration(chosen, temperature)},
        chosen_on: _scored(chosen, q_chosen, threshold, w_chosen),
        "test": None, "test_at_0.5": None,
        "subgroups": {chosen_on: recall_by_kind(chosen, q_chosen, threshold, n_boot, seed)},
        "class_balance": class_balance(manifest if manifest is not None else predictions),
    }
    out["out_of_sample"] = out_of_sample(chosen["label"], chosen["probability_raw"], chosen["patient"], target_recall=target_recall,
                                         rule=point["rule"], recall_confidence=recall_confidence, seed=seed)
    out["rule_cost"] = {f"{chosen_on}_specificity_point_rule": rates(chosen["label"], q_chosen, point["threshold_point"])["specificity"],
                        f"{chosen_on}_specificity_chosen": out[chosen_on]["specificity"]}
    if len(test):
        q_test = apply_temperature(test["probability_raw"], temperature)
        w_test = patient_bootstrap(test["patient"], n_boot, seed + 1)
        out["calibration"]["test"] = _calibration(test, temperature)
        out["test"] = _scored(test, q_test, threshold, w_test)
        out["test_at_0.5"] = compute_metrics(test["label"], q_test, 0.5)
        out["subgroups"]["test"] = recall_by_kind(test, q_test, threshold, n_boot, seed + 1)
        out["rule_cost"]["test_specificity_point_rule"] = rates(test["label"], q_test, point["threshold_point"])["specificity"]
        out["rule_cost"]["test_specificity_chosen"] = out["test"]["specificity"]
    out["warnings"] = warnings(out)
    return out


DEFAULT_CONFIDENCE = 0.95  # of the bootstrap and exact rules when none is given
CV_BOOT = N_BOOT // 4  # resamples of the bootstrap rule refitted in each cross-validation fold (15 fits, not one)


def operating_point(labels, probs_raw, patients, *, target_recall: float, recall_confidence: float | None = None,
                    rule: str | None = None, n_boot: int = N_BOOT, seed: int = 0, fitted_on: str = "val",
                    interval: bool = True) -> dict:
    """Temperature fitted on (labels, probs_raw), then the threshold on the calibrated probability by rule: point
    (highest threshold whose recall reaches target_recall), bootstrap (the highest whose one-sided lower bound over
    patient resamples does, at recall_confidence) or exact (the highest whose recall on further films reaches it with
    that confidence: cxr.intervals.exact_threshold). Without a rule: bootstrap if recall_confidence is given, else
    point. Also (interval) the point rule's 95 % interval over patients; "weights" holds the patient resamples used
    (None when neither the rule nor the interval needs them)."""
    labels = np.asarray(labels)
    rule = rule or ("bootstrap" if recall_confidence else "point")
    confidence = (recall_confidence or DEFAULT_CONFIDENCE) if rule != "point" else None
    temperature = fit_temperature(labels, probs_raw)
    q = apply_temperature(probs_raw, temperature)
    weights = patient_bootstrap(patients, n_boot, seed) if interval or rule == "bootstrap" else None
    point = threshold_for_recall(labels, q, target_recall)
    threshold, text = point, f"highest threshold whose {fitted_on} recall reaches {target_recall} (point estimate)"
    if rule == "bootstrap":
        threshold = confident_threshold(labels, q, weights, target_recall, confidence)
        text = (f"highest threshold whose one-sided {confidence:.0%} lower confidence bound of {fitted_on} "
                f"recall (patient bootstrap) reaches {target_recall}")
    elif rule == "exact":
        threshold = exact_threshold(labels, q, target_recall, confidence)
        text = (f"highest threshold whose recall on further films like {fitted_on} reaches {target_recall} with "
                f"{confidence:.0%} confidence (exact order-statistic bound on the pneumonia films' scores)")
    return {"target_recall": target_recall, "recall_confidence": confidence, "rule": rule, "temperature": temperature,
            "threshold": threshold, "threshold_rule": text, "threshold_point": point,
            "threshold_ci95": percentile_interval(bootstrap_thresholds(labels, q, weights, target_recall)) if interval
            else None, "weights": weights}


def out_of_sample(labels, probs_raw, patients, *, target_recall: float, rule: str, recall_confidence: float | None,
                  folds: int = 5, repeats: int = 3, seed: int = 0) -> dict:
    """What an operating point fitted by rule will do on further films: patient-grouped, class-stratified k-fold
    cross-validation, repeated (temperature and threshold fitted on k - 1 folds, the held-out fold scored); recall and
    specificity pooled over every held-out film, with Wilson 95 % intervals at the films' own counts. (Each fit sees
    (k - 1) / k of the films: a little more conservative than the fit on all of them.)"""
    from sklearn.model_selection import StratifiedGroupKFold

    labels, probs_raw, patients = np.asarray(labels), np.asarray(probs_raw, dtype=np.float64), np.asarray(patients)
    hits = {"tp": 0, "fn": 0, "tn": 0, "fp": 0}
    for r in range(repeats):
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed + r)
        for fit, held in splitter.split(probs_raw, labels, groups=patients):
            point = operating_point(labels[fit], probs_raw[fit], patients[fit], target_recall=target_recall,
                                    recall_confidence=recall_confidence, rule=rule, n_boot=CV_BOOT, seed=seed + r,
                                    interval=False)
            q = apply_temperature(probs_raw[held], point["temperature"])
            for key, value in counts(labels[held], q, point["threshold"]).items():
                hits[key] += int(value[0])
    per_film = {k: round(v / repeats) for k, v in hits.items()}  # Wilson at the films' own counts, not repeats x
    wilson = wilson_intervals(per_film)
    return {"folds": folds, "repeats": repeats, "rule": rule,
            "recall": hits["tp"] / max(1, hits["tp"] + hits["fn"]), "recall_wilson95": wilson["recall"],
            "specificity": hits["tn"] / max(1, hits["tn"] + hits["fp"]), "specificity_wilson95": wilson["specificity"]}


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
    chosen_on = evaluation["threshold_chosen_on"]
    notes = [f"The operating point was fitted on {CHOSEN_ON[chosen_on]}: patients of the training pool "
             "(in-distribution); expect the test split and other hospitals to show lower specificity."]
    if chosen_on == "oof":
        notes.append("Each out-of-fold score comes from one fold member, while test and new films get the mean of all "
                     "members: the ensemble is usually a little better, so the threshold fitted out of fold is, if "
                     "anything, conservative for recall.")
    chosen, test = evaluation[chosen_on], evaluation["test"]
    if test is None:
        notes.append(f"There is no test split: every number here is from {chosen_on}, which also chose the threshold.")
        return notes
    for name in ("recall", "specificity", "auroc"):
        (vlo, vhi), (tlo, thi) = chosen[f"{name}_ci95"], test[f"{name}_ci95"]
        if thi < vlo or tlo > vhi:
            notes.append(f"{chosen_on} and test disagree on {name} beyond their 95 % intervals: {chosen_on} "
                         f"{chosen[name]:.3f} [{vlo:.3f}-{vhi:.3f}], test {test[name]:.3f} [{tlo:.3f}-{thi:.3f}]. "
                         "Trust the test numbers.")
    if test["recall"] < evaluation["target_recall"]:
        notes.append(f"Test recall {test['recall']:.3f} is below the target {evaluation['target_recall']} that the "
                     f"threshold reached on {chosen_on}.")
    return notes
