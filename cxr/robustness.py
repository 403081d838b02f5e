"""The final model under acquisition shift: the films that chose the threshold (val, or the out-of-fold films) and test,
each under every perturbation of cxr.shift's ROBUSTNESS_BANK (disjoint from the bank trials were selected on),
scored as the shipped model scores them (its members, mirroring and temperature) at the shipped threshold: AUROC,
recall and specificity with patient-bootstrap intervals over the same resamples as the clean films (cxr.evaluation).
The final stage's members score their own films under the bank where they train (cxr.ensemble.train_member), so a
driver without a GPU never runs them; robustness() runs given models here (a model folder on new films)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from cxr.augment import mirror, mirror_mean
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
    """metrics.json's "robustness" of models scoring their films here (a model folder on new films: bench_shift).
    images: the films of predictions' rows, in order; predictions: split, label, patient and each member's column (NaN
    where the member does not score a film: a fold member outside its fold); evaluation: cxr.evaluation's
    (threshold_chosen_on, temperature, threshold, n_boot, bootstrap_seed); tta, image_size, contrast_norm and
    precision: the shipped model's, so a film is scored as it would be in use."""
    scoring = dict(image_size=image_size, contrast_norm=contrast_norm, precision=precision)
    scorers = [predictions[c].notna().to_numpy() for c in member_columns]

    def shifted(perturbation: Perturbation) -> np.ndarray:
        columns = np.full((len(models), len(predictions)), np.nan)
        for i, (model, rows) in enumerate(zip(models, scorers)):
            plain, mirrored = shifted_probabilities(model.to(default_device()), images[rows], perturbation, scoring,
                                                    mirrored=tta)
            columns[i, rows] = mirror_mean(plain, mirrored) if tta else plain
        return np.nanmean(columns, axis=0)

    return robustness_of_scores(shifted, predictions, evaluation, bank)


def shifted_probabilities(model: CxrNet, films: np.ndarray, perturbation: Perturbation, scoring: dict,
                          mirrored: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """One model's probabilities of films under perturbation, plain and of the mirrored films (None unless mirrored);
    a film's noise is seeded by its position in films. scoring: predict's image_size, contrast_norm, precision."""
    shift = everywhere(perturbation, len(films))
    plain = predict(model, films, shift=shift, **scoring)
    return plain, predict(model, mirror(films), shift=shift, **scoring) if mirrored else None


def robustness_of_scores(shifted: Callable[[Perturbation], np.ndarray], predictions: pd.DataFrame, evaluation: dict,
                         bank: tuple[Perturbation, ...] = ROBUSTNESS_BANK) -> dict:
    """metrics.json's "robustness" from shifted(perturbation): the uncalibrated ensemble probability of every row of
    predictions under it (the final stage's members compute theirs where they train, cxr.ensemble); calibrated,
    thresholded and resampled as cxr.evaluation did the clean films."""
    seed = evaluation["bootstrap_seed"]
    splits = {"chosen": (evaluation["threshold_chosen_on"], seed), "test": ("test", seed + 1)}  # evaluate's resamples
    parts = {}
    for key, (split, split_seed) in splits.items():
        rows = (predictions["split"] == split).to_numpy()
        if rows.any():
            frame = predictions[rows].reset_index(drop=True)
            parts[key] = (rows, frame, patient_bootstrap(frame["patient"], evaluation["n_boot"], split_seed))
    entries = []
    for perturbation in bank:
        raw = shifted(perturbation)
        entry = {"family": perturbation.family, "magnitude": perturbation.magnitude, "strength": perturbation.strength,
                 "chosen": None, "test": None}
        for key, (rows, frame, weights) in parts.items():
            scored = metrics_with_intervals(frame["label"], apply_temperature(raw[rows], evaluation["temperature"]),
                                            evaluation["threshold"], weights)
            entry[key] = {k: scored[k] for name in SCORES for k in (name, f"{name}_ci95")}
        entries.append(entry)
    return {"seed": ROBUSTNESS_SEED, "perturbations": entries}
