"""cxr.audit: pixel-identical films across splits (also when re-encoded) and patients shared by pool and test."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

import cxr.audit
from cxr.audit import audit, hash_files


def test_duplicates_across_splits_and_shared_patients(tmp_path, write_dicom):
    rng = np.random.default_rng(0)
    film, other = (rng.integers(0, 255, (40, 30), dtype=np.uint8) for _ in range(2))
    film[0, :2] = 0, 255  # the full 8-bit range: the DICOM copy decodes to the same pixels
    Image.fromarray(film).save(tmp_path / "a.png")
    write_dicom(tmp_path / "b.dcm", film)  # the same pixels in another file format
    Image.fromarray(other).save(tmp_path / "c.png")
    Image.fromarray(other).save(tmp_path / "d.png")
    manifest = pd.DataFrame({"path": [str(tmp_path / n) for n in ("a.png", "b.dcm", "c.png", "d.png")],
                             "split": ["train", "test", "val", "val"], "patient": ["p1", "p2", "p1", "p3"]})
    hashes = hash_files(list(manifest["path"]))
    assert hashes[0] == hashes[1] != hashes[2] == hashes[3]
    result = audit(manifest, hashes)
    assert result["duplicate_groups_across_splits"] == 1 and result["duplicate_groups_by_splits"] == {"test+train": 1}
    assert result["duplicate_groups_within_one_split"] == 1
    assert result["patients_in_pool_and_test"] == 0
    shared = audit(manifest.assign(patient=["p1", "p1", "p2", "p3"]), hashes)
    assert shared["patients_in_pool_and_test"] == 1 and shared["patient_examples"] == ["p1"]


def test_hashing_in_processes_equals_hashing_here(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, (20, 30), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    (tmp_path / "3.png").write_bytes(b"not a PNG")  # unreadable: None, in its place
    monkeypatch.setattr(cxr.audit, "_PARALLEL_MIN_FILMS", 2)
    monkeypatch.setattr(cxr.audit, "_FILMS_PER_TASK", 2)
    serial = hash_files(paths, workers=1)
    assert serial[3] is None and len(set(serial)) == len(paths)
    assert hash_files(paths, workers=2) == serial
