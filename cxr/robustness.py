"""The final model under acquisition shift: the films that chose the threshold (val, or the out-of-fold films) and test,
each under every perturbation of cxr.shift's ROBUSTNESS_BANK (disjoint from the bank trials were selected on),
scored as the shipped model scores them (its members, mirroring and temperature) at the shipped threshold: AUROC,
recall and specificity with patient-bootstrap intervals over the same resamples as the clean films (cxr.evaluation)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr.calibration import apply_temperature
from cxr.engine import default_device, predict
from cxr.intervals import metrics_with_intervals
from cxr.models import CxrNet
from cxr.resamples import patient_bootstrap
from cxr.shift import ROBUSTNESS_BANK, ROBUSTNESS_SEED, Perturbation, everywhere

SCORES = ("auroc", "recall", "specificity")


def robustness(models: list[CxrNet], images: np.ndarray, predictions: pd.DataFrame, member_columns: list[str],
               evaluation: dict, *, tta: bool, image_size: int, contrast_norm: str, precision: str = "auto",
               bank: tuple[Perturbation, ...] = ROBUSTNESS_BANK) -> dict:
    """metrics.json's "robustness", one entry per perturbation of bank. images: the films of predictions' rows, in
    order; predictions: split, label, patient and each member's column (NaN where the member does not score a film: a
    fold member outside its fold); evaluation: cxr.evaluation's (threshold_chosen_on, temperature, threshold, n_boot,
    bootstrap_seed); tta, image_size, contrast_norm and precision: the shipped model's, so a film is scored as it
    would be in use."""
    seed = evaluation["bootstrap_seed"]
    splits = {"chosen": (evaluation["threshold_chosen_on"], seed), "test": ("test", seed + 1)}  # evaluate's resamples
    parts = {}
    for key, (split, split_seed) in splits.items():
        rows = (predictions["split"] == split).to_numpy()
        if rows.any():
            frame = predictions[rows].reset_index(drop=True)
            parts[key] = (frame, images[rows], patient_bootstrap(frame["patient"], evaluation["n_boot"], split_seed))
    entries = []
    for perturbation in bank:
        entry = {"family": perturbation.family, "magnitude": perturbation.magnitude, "strength": perturbation.strength,
                 "chosen": None, "test": None}
        for key, (frame, films, weights) in parts.items():
            scorers = [frame[c].notna().to_numpy() for c in member_columns]
            raw = _ensemble(models, films, scorers, perturbation, dict(tta=tta, image_size=image_size,
                                                                       contrast_norm=contrast_norm, precision=precision))
            scored = metrics_with_intervals(frame["label"], apply_temperature(raw, evaluation["temperature"]),
                                            evaluation["threshold"], weights)
            entry[key] = {k: scored[k] for name in SCORES for k in (name, f"{name}_ci95")}
        entries.append(entry)
    return {"seed": ROBUSTNESS_SEED, "perturbations": entries}


def _ensemble(models: list[CxrNet], films: np.ndarray, scorers: list[np.ndarray], perturbation: Perturbation,
              scoring: dict) -> np.ndarray:
    """The uncalibrated ensemble probability of each perturbed film: the mean over the members that score it (on the
    driver's GPU when it has one: every perturbation is a pass of every member over val and test)."""
    columns = np.full((len(models), len(films)), np.nan)
    for i, (model, rows) in enumerate(zip(models, scorers)):
        shift = everywhere(perturbation, int(rows.sum()))
        columns[i, rows] = predict(model.to(default_device()), films[rows], shift=shift, **scoring)
    return np.nanmean(columns, axis=0)
