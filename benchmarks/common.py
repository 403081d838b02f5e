"""What the benchmarks share: where the repository, its outputs and the shared data and weights are, the decode
cache, a patient-grouped share of a data set, the machine line and the markdown table they print.

A script imports it as `from common import ...`, as it imports cpuload: benchmarks/ is sys.path[0] when it runs as
`python benchmarks/<script>.py`, and pytest puts benchmarks/ on the path as well (pyproject.toml), so a test can import
a script as `benchmarks.<script>`.
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"  # git-ignored
DEFAULT_DATA = REPO.parent / "shared" / "data" / "kermany224"  # Kaggle layout, train/ only
DEFAULT_WEIGHTS = REPO.parent / "shared" / "weights"
LITE0_SPACE = REPO / "benchmarks" / "spaces" / "lite0_128.py"


def cache_dir() -> Path:
    """The decode cache: $CXR_CACHE_DIR, else benchmarks/out/cache (real films are decoded once for every run)."""
    return Path(os.environ.get("CXR_CACHE_DIR") or OUT / "cache")


def cache_env() -> dict[str, str]:
    """The environment of a subprocess (python -m tune.run, cxr.recalibrate) that decodes into cache_dir()."""
    return {**os.environ, "CXR_CACHE_DIR": str(cache_dir())}


def patient_subset(frame, fraction: float, seed: int, min_patients: int = 1):
    """The rows of a seeded random `fraction` of frame's patients (at least min_patients): every film of a patient or
    none, so that splits made from them stay patient-disjoint."""
    import numpy as np

    patients = np.sort(frame["patient"].unique())
    count = min(len(patients), max(min_patients, round(fraction * len(patients))))
    keep = np.random.default_rng(seed).choice(patients, count, replace=False)
    return frame[frame["patient"].isin(keep)]


def subset_folder(data_dir: Path, fraction: float, seed: int = 0) -> Path:
    """benchmarks/out/kermany-subset-<fraction>-seed<seed>/train/{NORMAL,PNEUMONIA}: symlinks to every film of a
    patient_subset (at least 10 patients) of data_dir, made once."""
    from cxr.kaggle import scan

    root = OUT / f"kermany-subset-{fraction:g}-seed{seed}"
    if root.exists():
        return root
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # what a stopped run left
    for path in patient_subset(scan(data_dir, val_fraction=0.2, seed=seed), fraction, seed, min_patients=10)["path"]:
        src = Path(path)
        dst = tmp / "train" / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(src)
    tmp.rename(root)
    return root


def markdown_table(rows: list[dict]) -> str:
    """rows as a markdown table: a column per key, in the order first seen; empty where a row lacks the key."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row.get(key, "")) for key in keys) + " |" for row in rows]
    return "\n".join(lines)


def print_markdown(rows: list[dict]) -> None:
    print(markdown_table(rows))


def machine() -> str:
    """The machine line a benchmark prints beside its table."""
    from importlib.metadata import version

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    libraries = ", ".join(f"{name} {version(name)}" for name in ("torch", "ray", "numpy", "pandas", "pillow"))
    return (f"{platform.machine()}, {os.cpu_count()} CPUs, {memory:.0f} GiB, Python {platform.python_version()}, "
            f"{libraries}; load average at the end {os.getloadavg()[0]:.2f}")
