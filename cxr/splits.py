"""The manifest every data source is read into, and the patient-grouped, class-stratified hold-out of val and test."""

from __future__ import annotations

import numpy as np
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


POOL = ("train", "val")  # what the final model may learn from; test is never touched


def patient_folds(manifest: pd.DataFrame, k: int, seed: int) -> np.ndarray:
    """Fold 0..k-1 of every pool row (test rows: -1), patient-grouped and class-stratified; every pool row is in
    exactly one fold."""
    pool = np.flatnonzero(manifest["split"].isin(POOL).to_numpy())
    rows = manifest.iloc[pool]
    if rows["patient"].nunique() < k:
        raise InputError(f"only {rows['patient'].nunique()} patients in train + val: need at least {k} for "
                         f"--final folds with {k} members; lower --final-members")
    folds = np.full(len(manifest), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(rows, rows["label"], groups=rows["patient"])):
        folds[pool[held_out]] = fold
    return folds


def fold_roles(manifest: pd.DataFrame, folds: np.ndarray, fold: int, inner_fraction: float, seed: int) -> np.ndarray:
    """The split column fold member `fold` trains on: its fold is "oof" (never trained on, never used to choose an
    epoch), an inner patient hold-out of the other folds is "val" (best epoch, early stopping), the rest "train";
    test rows stay "test"."""
    roles = np.where(folds == fold, "oof", np.where(folds < 0, "test", "train")).astype(object)
    rest = manifest[roles == "train"]
    roles[manifest.index.get_indexer(holdout_by_patient(rest, inner_fraction, seed + fold))] = "val"
    return roles
