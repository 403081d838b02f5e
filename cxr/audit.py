"""Data audit: pixel-identical films across splits and patients present in both the training pool and test.
Reported, never fixed silently: the official test split stays as the data set defines it."""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

from cxr.images import map_in_processes, read_film

if TYPE_CHECKING:  # the hashing workers import this module: pandas (and cxr.splits' scikit-learn) only where used
    import pandas as pd

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


def _hash_chunk(paths: list[str]) -> list[str | None]:
    return [_safe_hash(p) for p in paths]


def hash_files(paths: list[str], workers: int | None = None) -> list[str | None]:
    workers = (workers or os.cpu_count() or 1) if len(paths) >= _PARALLEL_MIN_FILMS else 1
    return [h for hashes in map_in_processes(_hash_chunk, paths, _FILMS_PER_TASK, workers) for h in hashes]


def audit(manifest: pd.DataFrame, hashes: list[str | None], limit: int = 50) -> dict:
    """Duplicates across splits (groups of pixel-identical films in more than one split) and patients of the
    training pool (train + val) that also appear in test; counts plus up to `limit` examples each."""
    from cxr.splits import POOL

    frame = manifest.assign(hash=hashes)
    hashed = frame.dropna(subset=["hash"])
    films = hashed.groupby(["hash", "split"]).size().unstack(fill_value=0)  # hash (sorted) x split: film counts
    present = films > 0
    n_splits = present.sum(axis=1)
    within = int(((films.sum(axis=1) > 1) & (n_splits == 1)).sum())
    across = present[n_splits > 1]
    pairs = across.dot(across.columns + "+").str[:-1]  # each group's splits in sorted order, "test+train"
    examples = hashed[hashed["hash"].isin(across.index[:limit])].groupby("hash")
    pool_patients = set(frame.loc[frame["split"].isin(POOL), "patient"])
    shared = sorted(pool_patients & set(frame.loc[frame["split"] == "test", "patient"]))
    return {
        "images_hashed": int(frame["hash"].notna().sum()),
        "duplicate_groups_across_splits": len(across),
        "duplicate_groups_by_splits": {k: int(v) for k, v in pairs.value_counts().items()},
        "duplicate_groups_within_one_split": within,
        "duplicate_examples": [[{"path": p, "split": s} for p, s in zip(g["path"], g["split"])] for _, g in examples],
        "patients_in_pool_and_test": len(shared),
        "patient_examples": shared[:limit],
    }
