"""cxr.subgroups: pneumonia kind from Kaggle names; recall per kind; class balance per split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr.subgroups import class_balance, pneumonia_kind, recall_by_kind


@pytest.mark.parametrize("name, label, kind", [
    ("person12_bacteria_3.jpeg", 1, "bacterial"), ("person447_virus_921_1.jpeg", 1, "viral"),
    ("IM-0115-0001.jpeg", 0, "normal"), ("scan_0001.png", 1, "unknown"),
])
def test_kind_from_file_name(name, label, kind):
    assert pneumonia_kind(f"/data/test/X/{name}", label) == kind


def test_recall_per_kind_and_balance():
    frame = pd.DataFrame({
        "path": ["a/person1_bacteria_1.jpeg", "a/person1_bacteria_2.jpeg", "a/person2_virus_3.jpeg", "a/IM-0001-0001.jpeg"],
        "label": [1, 1, 1, 0], "patient": ["p1", "p1", "p2", "n1"], "split": ["test"] * 4,
    })
    groups = {g["kind"]: g for g in recall_by_kind(frame, np.array([0.9, 0.2, 0.8, 0.1]), 0.5, n_boot=200, seed=0)}
    assert groups["bacterial"]["recall"] == 0.5 and groups["bacterial"]["missed"] == 1 and groups["bacterial"]["patients"] == 1
    assert groups["viral"]["recall"] == 1.0
    balance = class_balance(frame)["test"]
    assert (balance["images"], balance["patients"], balance["pneumonia_share"], balance["bacterial_images"]) == (4, 3, 0.75, 2)
