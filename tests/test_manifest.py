"""cxr.manifest: CSV/parquet manifests with or without patient and split; errors name the row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.errors import InputError
from cxr.manifest import read_manifest


@pytest.fixture
def films(tmp_path):
    rng = np.random.default_rng(0)
    names = []
    for i in range(60):
        name = f"img/f{i}.png"
        (tmp_path / "img").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / name)
        names.append(name)
    return tmp_path, names


def test_without_patient_or_split_each_film_is_a_patient_and_test_is_held_out(films):
    root, names = films
    pd.DataFrame({"path": names, "label": ["PNEUMONIA" if i % 3 else "normal" for i in range(60)]}).to_csv(root / "m.csv", index=False)
    manifest = read_manifest(root / "m.csv", val_fraction=0.2)
    assert set(manifest["split"]) == {"train", "val", "test"} and manifest["patient"].is_unique
    assert manifest["path"].str.startswith(str(root.resolve())).all()
    assert len(manifest.attrs["notes"]) == 2 and set(manifest["label"]) == {0, 1}


def test_patients_and_given_splits_are_kept(films):
    root, names = films
    frame = pd.DataFrame({"path": [str(root / n) for n in names], "label": [i % 2 for i in range(60)],
                          "patient": [f"p{i // 2}" for i in range(60)], "split": ["test" if i < 10 else "train" for i in range(60)]})
    frame.to_parquet(root / "m.parquet")
    manifest = read_manifest(root / "m.parquet", val_fraction=0.2)
    assert (manifest["split"][:10] == "test").all() and (manifest["split"] == "val").any()
    val, train = (set(manifest.loc[manifest["split"] == s, "patient"]) for s in ("val", "train"))
    assert not val & train and manifest.attrs["notes"] == []


@pytest.mark.parametrize("change, words", [
    ({"label": "maybe"}, ["row 3", "label"]), ({"path": "img/absent.png"}, ["row 3", "absent.png"]),
    ({"split": "holdout"}, ["row 3", "split"]),
])
def test_bad_rows_are_named(films, change, words):
    root, names = films
    frame = pd.DataFrame({"path": names, "label": [str(i % 2) for i in range(60)], "split": "train"})
    for column, value in change.items():
        frame.loc[2, column] = value
    frame.to_csv(root / "m.csv", index=False)
    with pytest.raises(InputError) as err:
        read_manifest(root / "m.csv")
    assert all(w in str(err.value) for w in words), err.value


def test_missing_column_is_named(films):
    root, names = films
    pd.DataFrame({"file": names}).to_csv(root / "m.csv", index=False)
    with pytest.raises(InputError, match="'path' column"):
        read_manifest(root / "m.csv")
