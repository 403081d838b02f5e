"""Any labelled data: a CSV or parquet manifest with columns path, label and optional patient and split, read
into the same manifest scan() makes of a Kaggle folder (val, and test when no split is given, held out by patient)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr.splits import MANIFEST_COLUMNS, SPLITS, holdout_by_patient
from cxr.errors import InputError

MANIFEST_SUFFIXES = {".csv", ".parquet"}
_LABELS = {"0": 0, "1": 1, "normal": 0, "pneumonia": 1}


def is_manifest(path: str | Path) -> bool:
    return Path(path).suffix.lower() in MANIFEST_SUFFIXES and Path(path).is_file()


def read_labelled(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(path resolved, label 0/1, patient; the raw table): every row checked (filled, existing file, known label,
    listed once). Without a patient column each film is its own patient (noted in attrs["notes"])."""
    path = Path(path)
    raw = _read_table(path)
    for column in ("path", "label"):
        if column not in raw:
            raise InputError(f"manifest {path} has no '{column}' column (columns: {list(raw.columns)}): add it "
                             "(path, label; optional patient, split)")
    _check_filled(path, raw)
    frame = pd.DataFrame({"path": [_resolve(path, p, i) for i, p in enumerate(raw["path"])],
                          "label": [_label(path, v, i) for i, v in enumerate(raw["label"])]})
    _check_unique(path, frame["path"], raw["split"].str.strip().str.lower() if "split" in raw else None)
    frame.attrs["notes"] = []
    if "patient" in raw:
        frame["patient"] = raw["patient"].str.strip().to_numpy()
    else:
        frame["patient"] = frame["path"]
        frame.attrs["notes"].append(f"manifest {path.name} has no patient column: each image is treated as its own patient")
    return frame, raw


def read_manifest(path: str | Path, *, val_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """path (absolute or relative to the manifest), label (0/1 or NORMAL/PNEUMONIA), patient?, split?."""
    path = Path(path)
    frame, raw = read_labelled(path)
    notes = frame.attrs["notes"]
    if "split" in raw:
        frame["split"] = [_split(path, v, i) for i, v in enumerate(raw["split"])]
        frame["source_split"] = frame["split"]
        if not (frame["split"] == "val").any():
            pool = frame.index[frame["split"] == "train"]
            frame.loc[holdout_by_patient(frame.loc[pool], val_fraction, seed), "split"] = "val"
    else:
        frame["split"] = "train"
        frame.loc[holdout_by_patient(frame, val_fraction, seed + 1), "split"] = "test"  # test held out by patient like val
        pool = frame.index[frame["split"] == "train"]
        frame.loc[holdout_by_patient(frame.loc[pool], val_fraction, seed), "split"] = "val"
        frame["source_split"] = np.where(frame["split"] == "test", "test", "train")
        notes.append(f"manifest {path.name} has no split column: test and val are held out by patient")
    if not (frame["split"] == "train").any():
        raise InputError(f"manifest {path} has no train rows: give some rows split=train or leave the split column out")
    frame.attrs["notes"] = notes
    return frame[MANIFEST_COLUMNS].reset_index(drop=True)


def _read_table(path: Path) -> pd.DataFrame:
    """Every cell as a string, a missing one (CSV empty cell, parquet null) as "": a null never becomes "None"."""
    if path.suffix.lower() == ".csv":
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    else:
        table = pd.read_parquet(path)
        raw = table.astype(str).mask(table.isna(), "")
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    return raw


def _check_filled(manifest: Path, raw: pd.DataFrame) -> None:
    """No empty path, label, patient or split: an empty patient id would merge unrelated films into one patient."""
    for column in ("path", "label", "patient", "split"):
        if column in raw:
            empty = np.flatnonzero(raw[column].str.strip() == "")
            if len(empty):
                rows = ", ".join(str(i + 1) for i in empty[:5]) + (" ..." if len(empty) > 5 else "")
                raise InputError(f"manifest {manifest}: {len(empty)} row(s) with an empty '{column}' (rows {rows}): fill "
                                 f"them in or drop those rows" + (" (leave the whole patient column out to treat each "
                                                                  "film as its own patient)" if column == "patient" else ""))


def _check_unique(manifest: Path, paths: pd.Series, splits: pd.Series | None) -> None:
    """A film listed twice would count twice; listed in two splits it would train on its own test."""
    twice = paths[paths.duplicated(keep=False)]
    if len(twice):
        first = twice.index[twice == twice.iloc[0]]
        where = "in two splits" if splits is not None and splits[first].nunique() > 1 else "twice"
        raise InputError(f"manifest {manifest}: {twice.iloc[0]} is listed {where} (rows {', '.join(str(i + 1) for i in first)}; "
                         f"{twice.nunique()} film(s) repeated in all): list every film once")


def _row(manifest: Path, index: int) -> str:
    return f"{manifest}: row {index + 1} (line {index + 2})"


def _resolve(manifest: Path, value: str, index: int) -> str:
    file = Path(value)
    file = file if file.is_absolute() else manifest.parent / file
    if not file.is_file():
        raise InputError(f"{_row(manifest, index)}: file {value} does not exist: fix the path (absolute, or relative to the manifest)")
    return str(file.resolve())


def _label(manifest: Path, value, index: int) -> int:
    key = str(value).strip().lower()
    key = {"0.0": "0", "1.0": "1"}.get(key, key)
    if key not in _LABELS:
        raise InputError(f"{_row(manifest, index)}: unknown label {value!r}: use 0/1 or NORMAL/PNEUMONIA")
    return _LABELS[key]


def _split(manifest: Path, value, index: int) -> str:
    key = str(value).strip().lower()
    if key not in SPLITS:
        raise InputError(f"{_row(manifest, index)}: unknown split {value!r}: use train, val or test")
    return key
