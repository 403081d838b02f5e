"""The manifest every data source is read into, and the patient-grouped, class-stratified hold-out of val and test."""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from cxr.errors import InputError

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["path", "label", "patient", "split", "source_split"]


def holdout_by_patient(pool: pd.DataFrame, fraction: float, seed: int) -> pd.Index:
    """Rows of the first fold of a stratified, patient-grouped K-fold with K = round(1 / fraction)."""
    n_splits = max(2, round(1 / fraction))
    if pool["patient"].nunique() < n_splits:
        raise InputError(
            f"only {pool['patient'].nunique()} patients in train: need at least {n_splits} to hold out "
            f"val_fraction={fraction} by patient; add images or raise val_fraction"
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, held_out = next(splitter.split(pool, pool["label"], groups=pool["patient"]))
    return pool.index[held_out]
