"""Read the Kaggle chest_xray layout into a manifest and re-split train/val by patient."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from cxr.errors import InputError

CLASSES = {"normal": 0, "pneumonia": 1}
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".dcm", ".dicom"}
SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["path", "label", "patient", "split", "source_split"]

_PATIENT_PATTERNS = (
    (re.compile(r"^person(\d+)_(?:bacteria|virus)_\d+(?:_\d+)?$", re.I), "p{}"),  # also person447_virus_921_1
    (re.compile(r"^NORMAL2-IM-(\d+)-\d+(?:-\d+)?$", re.I), "n2{}"),  # also NORMAL2-IM-0395-0001-0001
    (re.compile(r"^IM-(\d+)-\d+(?:-\d+)?$", re.I), "n{}"),
)


def patient_key(path: str | Path) -> str:
    """Patient id from a Kaggle file name; unknown names are their own patient."""
    stem = Path(path).stem
    for pattern, template in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return template.format(match.group(1))
    return stem


def scan(root: str | Path, *, val_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Manifest of a Kaggle-layout folder: path, label (1 = PNEUMONIA), patient, split, source_split.

    The official val split (16 images) is merged into train, then train is re-split into train/val,
    stratified by class and grouped by patient. Test rows are kept as they are.
    """
    if not 0.0 < val_fraction < 0.5:
        raise InputError(f"val_fraction={val_fraction} is out of range: use a value in (0, 0.5)")
    rows, ignored = _read_layout(Path(root))
    frame = pd.DataFrame(rows, columns=["path", "label", "patient", "source_split"])
    frame["split"] = np.where(frame["source_split"] == "test", "test", "train")
    pool = frame.index[frame["split"] == "train"]
    frame.loc[_val_rows(frame.loc[pool], val_fraction, seed), "split"] = "val"
    frame.attrs["ignored_files"] = ignored
    return frame[MANIFEST_COLUMNS].reset_index(drop=True)


def _read_layout(root: Path) -> tuple[list[tuple], int]:
    if not root.is_dir():
        raise InputError(f"data folder {root} does not exist: pass the Kaggle chest_xray folder (with train/)")
    split_dirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and p.name.lower() in SPLITS}
    if "train" not in split_dirs:
        found = sorted(p.name for p in root.iterdir())[:10]
        raise InputError(
            f"no train/ folder in {root} (found: {found or 'nothing'}): expected "
            f"<root>/train/{{NORMAL,PNEUMONIA}}/*.jpeg, optionally val/ and test/ alike"
        )
    rows, ignored = [], 0
    for split, split_dir in sorted(split_dirs.items()):
        class_dirs = {p.name.lower(): p for p in split_dir.iterdir() if p.is_dir()}
        missing = sorted(set(CLASSES) - set(class_dirs))
        if missing:
            raise InputError(
                f"{split_dir} has no {'/'.join(m.upper() for m in missing)} folder "
                f"(found: {sorted(p.name for p in split_dir.iterdir())[:10] or 'nothing'}): "
                f"expected {split_dir}/NORMAL and {split_dir}/PNEUMONIA"
            )
        for name, label in CLASSES.items():
            files = sorted(p for p in class_dirs[name].iterdir() if p.is_file())
            images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
            ignored += len(files) - len(images)
            if not images and split != "val":
                raise InputError(
                    f"{class_dirs[name]} holds no .jpeg/.jpg/.png/.dcm image: every class needs images in {split}/"
                )
            rows += [(str(p.resolve()), label, patient_key(p), split) for p in images]
    return rows, ignored


def _val_rows(pool: pd.DataFrame, val_fraction: float, seed: int) -> pd.Index:
    """First fold of a stratified, patient-grouped K-fold with K = round(1 / val_fraction)."""
    n_splits = max(2, round(1 / val_fraction))
    if pool["patient"].nunique() < n_splits:
        raise InputError(
            f"only {pool['patient'].nunique()} patients in train: need at least {n_splits} to hold out "
            f"val_fraction={val_fraction} by patient; add images or raise val_fraction"
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, val_idx = next(splitter.split(pool, pool["label"], groups=pool["patient"]))
    return pool.index[val_idx]
