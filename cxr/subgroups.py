"""Subgroups a reviewer asks for: recall per pneumonia kind (from Kaggle file names) and class balance per split."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.intervals import percentile_interval
from cxr.metrics import rates
from cxr.resamples import patient_bootstrap

_KINDS = (("bacterial", re.compile(r"bacteria", re.I)), ("viral", re.compile(r"virus", re.I)))


def pneumonia_kind(path: str, label: int) -> str:
    """normal | bacterial | viral | unknown (a pneumonia film whose name does not say)."""
    if not label:
        return "normal"
    name = Path(path).name
    return next((kind for kind, pattern in _KINDS if pattern.search(name)), "unknown")


def recall_by_kind(frame: pd.DataFrame, probs: np.ndarray, threshold: float, n_boot: int, seed: int) -> list[dict]:
    """Per pneumonia kind: films, patients, missed films, recall with a patient-bootstrap 95 % interval."""
    kinds = [pneumonia_kind(p, y) for p, y in zip(frame["path"], frame["label"])]
    out = []
    for kind in ("bacterial", "viral", "unknown"):
        inside = np.array([k == kind for k in kinds])
        if not inside.any():
            continue
        labels, p = frame["label"].to_numpy()[inside], np.asarray(probs)[inside]
        weights = patient_bootstrap(frame["patient"].to_numpy()[inside], n_boot, seed)
        out.append({"kind": kind, "images": int(inside.sum()), "patients": int(frame["patient"][inside].nunique()),
                    "missed": int((p < threshold).sum()), "recall": rates(labels, p, threshold)["recall"],
                    "recall_ci95": percentile_interval(rates(labels, p, threshold, weights)["recall"])})
    return out


def class_balance(manifest: pd.DataFrame) -> dict[str, dict]:
    """Per split: images, patients, pneumonia share, and the films of each pneumonia kind."""
    out = {}
    for split, rows in manifest.groupby("split", sort=False):
        kinds = pd.Series([pneumonia_kind(p, y) for p, y in zip(rows["path"], rows["label"])]).value_counts()
        out[split] = {"images": int(len(rows)), "patients": int(rows["patient"].nunique()),
                      "pneumonia_share": float(rows["label"].mean()), **{f"{k}_images": int(v) for k, v in kinds.items()}}
    return out
