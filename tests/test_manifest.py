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


def _labels(n: int) -> list[str]:
    return ["PNEUMONIA" if i % 3 else "normal" for i in range(n)]


@pytest.mark.parametrize("column", ["path", "label", "patient"])
def test_a_null_in_a_parquet_manifest_is_named_not_read_as_none(films, column):
    root, names = films
    frame = pd.DataFrame({"path": names, "label": _labels(60), "patient": [f"p{i}" for i in range(60)]}).astype(object)
    frame.loc[7, column] = None
    frame.to_parquet(root / "m.parquet")
    with pytest.raises(InputError, match=f"1 row\\(s\\) with an empty '{column}' \\(rows 8\\)"):
        read_manifest(root / "m.parquet")


def test_an_empty_patient_id_is_refused_not_merged_into_one_patient(films):
    root, names = films
    patients = [f"p{i}" for i in range(60)]
    patients[3] = patients[9] = " "
    pd.DataFrame({"path": names, "label": _labels(60), "patient": patients}).to_csv(root / "m.csv", index=False)
    with pytest.raises(InputError, match=r"2 row\(s\) with an empty 'patient' \(rows 4, 10\)"):
        read_manifest(root / "m.csv")


def test_a_film_listed_twice_or_in_two_splits_is_refused(films):
    root, names = films
    twice = pd.DataFrame({"path": names + [names[5]], "label": _labels(61)})
    twice.to_csv(root / "twice.csv", index=False)
    with pytest.raises(InputError, match=r"f5.png is listed twice \(rows 6, 61"):
        read_manifest(root / "twice.csv")
    splits = ["train"] * 40 + ["test"] * 20
    rows = pd.DataFrame({"path": names + [f"./{names[2]}"], "label": _labels(61), "split": splits + ["test"]})
    rows.to_csv(root / "leak.csv", index=False)  # the same file under another spelling, in train and in test
    with pytest.raises(InputError, match=r"f2.png is listed in two splits \(rows 3, 61"):
        read_manifest(root / "leak.csv")
