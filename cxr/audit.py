"""Data audit: pixel-identical films across splits and patients present in both the training pool and test.
Reported, never fixed silently: the official test split stays as the data set defines it."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor

import pandas as pd

from cxr.images import read_film

POOL = ("train", "val")
_PARALLEL_MIN_FILMS = 256  # below this, starting a process pool costs more than it saves
_FILMS_PER_TASK = 64


def pixel_hash(path: str) -> str:
    """SHA-1 of the decoded full-resolution 8-bit pixels (and their shape), decoded as training decodes them (DICOM
    included): equal for re-encoded copies of one film."""
    pixels = read_film(path)
    return hashlib.sha1(str(pixels.shape).encode() + pixels.tobytes()).hexdigest()


def _safe_hash(path: str) -> str | None:
    try:
        return pixel_hash(path)
    except (OSError, ValueError):
        return None  # an unreadable film is the decoder's error to report, not the audit's


def hash_files(paths: list[str], workers: int | None = None) -> list[str | None]:
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(paths) < _PARALLEL_MIN_FILMS:
        return [_safe_hash(p) for p in paths]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_safe_hash, paths, chunksize=_FILMS_PER_TASK))


def audit(manifest: pd.DataFrame, hashes: list[str | None], limit: int = 50) -> dict:
    """Duplicates across splits (groups of pixel-identical films in more than one split) and patients of the
    training pool (train + val) that also appear in test; counts plus up to `limit` examples each."""
    frame = manifest.assign(hash=hashes)
    groups = frame.dropna(subset=["hash"]).groupby("hash")
    across = [g for _, g in groups if g["split"].nunique() > 1]
    within = sum(1 for _, g in groups if len(g) > 1 and g["split"].nunique() == 1)
    pairs = pd.Series([tuple(sorted(g["split"].unique())) for g in across], dtype=object)
    pool_patients = set(frame.loc[frame["split"].isin(POOL), "patient"])
    shared = sorted(pool_patients & set(frame.loc[frame["split"] == "test", "patient"]))
    return {
        "images_hashed": int(frame["hash"].notna().sum()),
        "duplicate_groups_across_splits": len(across),
        "duplicate_groups_by_splits": {"+".join(k): int(v) for k, v in pairs.value_counts().items()},
        "duplicate_groups_within_one_split": within,
        "duplicate_examples": [[{"path": p, "split": s} for p, s in zip(g["path"], g["split"])] for g in across[:limit]],
        "patients_in_pool_and_test": len(shared),
        "patient_examples": shared[:limit],
    }
