"""The Kaggle chest_xray folder layout: scan it into a manifest, patient ids from Kaggle file names."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.cli import check_range
from cxr.errors import InputError
from cxr.images import FILM_SUFFIXES
from cxr.splits import MANIFEST_COLUMNS, SPLITS, holdout_by_patient

CLASSES = {"normal": 0, "pneumonia": 1}

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


def scan_labelled(root: str | Path) -> pd.DataFrame:
    """Every film of a labelled folder, whatever split it sits in: <root>/{NORMAL,PNEUMONIA}/ (films anywhere
    below), or the Kaggle layout <root>/{train,val,test}/{NORMAL,PNEUMONIA}/. Columns path, label, patient."""
    root = Path(root)
    classes = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and p.name.lower() in CLASSES} if root.is_dir() else {}
    if len(classes) < len(CLASSES):
        return scan(root)[["path", "label", "patient"]]
    rows = [(str(p.resolve()), CLASSES[name], patient_key(p)) for name, folder in sorted(classes.items())
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix.lower() in FILM_SUFFIXES]
    return pd.DataFrame(rows, columns=["path", "label", "patient"])


def scan(root: str | Path, *, val_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Manifest of a Kaggle-layout folder: path, label (1 = PNEUMONIA), patient, split, source_split.

    The official val split (16 images) is merged into train, then train is re-split into train/val,
    stratified by class and grouped by patient. Test rows are kept as they are.
    """
    check_range("val_fraction", val_fraction)
    rows, ignored = _read_layout(Path(root))
    frame = pd.DataFrame(rows, columns=["path", "label", "patient", "source_split"])
    frame["split"] = np.where(frame["source_split"] == "test", "test", "train")
    pool = frame.index[frame["split"] == "train"]
    frame.loc[holdout_by_patient(frame.loc[pool], val_fraction, seed), "split"] = "val"
    frame.attrs["notes"] = [f"ignored {len(ignored)} file(s) in {root} that are not films ({'/'.join(sorted(FILM_SUFFIXES))}), "
                            f"e.g. {ignored[0]}"] if ignored else []
    return frame[MANIFEST_COLUMNS].reset_index(drop=True)


def _read_layout(root: Path) -> tuple[list[tuple], list[str]]:
    if not root.is_dir():
        raise InputError(f"data folder {root} does not exist: pass the Kaggle chest_xray folder (with train/)")
    split_dirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and p.name.lower() in SPLITS}
    if "train" not in split_dirs:
        found = sorted(p.name for p in root.iterdir())[:10]
        raise InputError(
            f"no train/ folder in {root} (found: {found or 'nothing'}): expected "
            f"<root>/train/{{NORMAL,PNEUMONIA}}/*.jpeg, optionally val/ and test/ alike"
        )
    rows, ignored = [], []
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
            images = [p for p in files if p.suffix.lower() in FILM_SUFFIXES]
            ignored += [str(p) for p in files if p.suffix.lower() not in FILM_SUFFIXES]
            if not images and split != "val":
                raise InputError(
                    f"{class_dirs[name]} holds no .jpeg/.jpg/.png/.dcm image: every class needs images in {split}/"
                )
            rows += [(str(p.resolve()), label, patient_key(p), split) for p in images]
    return rows, ignored

