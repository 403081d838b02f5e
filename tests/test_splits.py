"""cxr.splits: the patient folds of the pool for --final folds and each fold member's roles (the val/test hold-out
itself is tested with the Kaggle scan in tests/test_kaggle.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr.errors import InputError
from cxr.splits import fold_roles, patient_folds


def _manifest(n_patients: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for p in range(n_patients):
        split = "test" if p % 6 == 0 else ("val" if p % 5 == 0 else "train")
        for film in range(rng.integers(1, 4)):
            rows.append({"path": f"p{p}-{film}.png", "label": int(p % 3 != 0), "patient": f"p{p}", "split": split})
    return pd.DataFrame(rows)


def test_folds_are_patient_disjoint_stratified_and_cover_the_pool_once():
    manifest = _manifest()
    folds = patient_folds(manifest, 4, seed=0)
    pool = manifest["split"].isin(["train", "val"]).to_numpy()
    assert (folds[~pool] == -1).all() and set(folds[pool]) == {0, 1, 2, 3}  # test untouched, every pool row once
    assert manifest.assign(fold=folds)[pool].groupby("patient")["fold"].nunique().max() == 1
    shares = manifest.assign(fold=folds)[pool].groupby("fold")["label"].mean()
    assert shares.max() - shares.min() < 0.15  # stratified by class
    assert (patient_folds(manifest, 4, seed=0) == folds).all() and (patient_folds(manifest, 4, seed=1) != folds).any()


def test_a_fold_member_never_trains_on_or_picks_its_epoch_with_its_own_fold():
    manifest = _manifest()
    folds = patient_folds(manifest, 3, seed=0)
    for k in range(3):
        roles = fold_roles(manifest, folds, k, inner_fraction=0.2, seed=0)
        assert ((roles == "oof") == (folds == k)).all() and ((roles == "test") == (folds == -1)).all()
        patients = {r: set(manifest["patient"][roles == r]) for r in ("train", "val", "oof")}
        assert patients["val"] and not patients["train"] & patients["val"]
        assert not (patients["train"] | patients["val"]) & patients["oof"]


def test_too_few_patients_for_the_folds_is_an_input_error():
    with pytest.raises(InputError, match="--final-members"):
        patient_folds(_manifest(4), 5, seed=0)
