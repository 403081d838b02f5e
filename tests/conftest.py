"""Shared fixtures: a synthetic Kaggle-layout folder and a CXR cache, both made once per session in tmp.

Nothing here reads ../shared, and CXR_CACHE_DIR points every test at a temporary cache, so no test writes
to ~/.cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr.dataset import CxrData, load_dataset
from cxr.synthetic import make_synthetic

SYNTHETIC_PATIENTS = 200
SYNTHETIC_SIZE = 96
CACHED_SIZE = 64  # image size the session's decoded data set is cached at


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 200-patient synthetic chest_xray folder (train/, val/, test/) with 96 px JPEGs; treat as read-only."""
    return make_synthetic(
        tmp_path_factory.mktemp("kaggle") / "chest_xray", n_patients=SYNTHETIC_PATIENTS, size=SYNTHETIC_SIZE
    )


@pytest.fixture(scope="session")
def session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cxr-cache")


@pytest.fixture(autouse=True)
def _temporary_cache(monkeypatch: pytest.MonkeyPatch, session_cache_dir: Path) -> None:
    """Every test that leaves cache_dir out still writes under tmp, never to ~/.cache/cxr."""
    monkeypatch.setenv("CXR_CACHE_DIR", str(session_cache_dir))


@pytest.fixture(scope="session")
def synthetic_data(synthetic_root: Path, session_cache_dir: Path) -> CxrData:
    """The synthetic set scanned (seed 0) and decoded at 64 px; shared, so tests must not write into it."""
    return load_dataset(synthetic_root, image_size=CACHED_SIZE, cache_dir=session_cache_dir)
