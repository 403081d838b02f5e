"""cxr.synthetic: deterministic CXR-like drawings in the Kaggle layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr.kaggle import patient_key
from cxr.synthetic import draw, create_synthetic


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpeg"))}


def test_layout_names_and_class_balance(tmp_path: Path) -> None:
    root = create_synthetic(tmp_path / "set", n_patients=30, size=32)
    assert root == tmp_path / "set"
    for split in ("train", "val", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            assert any((root / split / label).glob("*.jpeg")), f"{split}/{label} is empty"
    files = list(root.rglob("*.jpeg"))
    patients = {(p.parent.name, patient_key(p)) for p in files}
    assert all(not key.startswith(("IM-", "NORMAL2", "person")) for _, key in patients)  # Kaggle-style names
    assert len(patients) == 30 and 30 <= len(files) <= 90
    sick = sum(label == "PNEUMONIA" for label, _ in patients)
    assert sick == 20  # two thirds


def test_same_seed_same_files_other_seed_other_pixels(tmp_path: Path) -> None:
    a = _tree(create_synthetic(tmp_path / "a", n_patients=12, size=32, seed=3))
    b = _tree(create_synthetic(tmp_path / "b", n_patients=12, size=32, seed=3))
    c = _tree(create_synthetic(tmp_path / "c", n_patients=12, size=32, seed=4))
    assert a == b
    assert a != c


def test_pneumonia_drawings_are_brighter_in_the_lungs() -> None:
    anatomy = {"lung_w": 0.18, "lung_h": 0.34, "gap": 0.23, "rib_freq": 16.0, "tissue": 130.0}
    normal = [draw(anatomy, False, 64, np.random.default_rng(i)) for i in range(8)]
    sick = [draw(anatomy, True, 64, np.random.default_rng(i)) for i in range(8)]
    assert normal[0].shape == (64, 64) and normal[0].dtype == np.uint8
    assert np.mean(sick) > np.mean(normal) + 2
