"""cxr.kaggle: Kaggle layout scan, patient keys, patient-grouped stratified train/val re-split (cxr.splits)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.errors import InputError
from cxr.kaggle import patient_key, scan
from cxr.splits import MANIFEST_COLUMNS


def _image(path: Path, value: int = 128, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


def _files_under(folder: Path) -> set[str]:
    return {str(p.resolve()) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "name, key",
    [
        ("person1_bacteria_1.jpeg", "p1"),
        ("person12_virus_3", "p12"),
        ("person1000_bacteria_2931.jpeg", "p1000"),
        ("person447_virus_921_1.jpeg", "p447"),  # a real Kaggle name with an extra _1
        ("IM-0115-0001.jpeg", "n0115"),
        ("IM-0115-0001-0002.jpeg", "n0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "n21427"),
        ("NORMAL2-IM-0395-0001-0002.jpeg", "n20395"),  # real Kaggle names carry a third number too
        ("train/PNEUMONIA/PERSON3_VIRUS_7.JPEG", "p3"),
        ("scan_42.png", "scan_42"),
        ("IM-0115.jpeg", "IM-0115"),
        ("person5_fungus_1.jpeg", "person5_fungus_1"),
    ],
)
def test_patient_key(name: str, key: str) -> None:
    assert patient_key(name) == key


def test_images_of_one_patient_share_a_key() -> None:
    assert patient_key("person7_bacteria_1.jpeg") == patient_key("person7_virus_30.jpeg")
    assert patient_key("IM-0001-0001.jpeg") != patient_key("NORMAL2-IM-0001-0001.jpeg")


def test_manifest_columns_and_labels(synthetic_root: Path) -> None:
    frame = scan(synthetic_root)
    assert list(frame.columns) == MANIFEST_COLUMNS
    assert set(frame["split"]) == {"train", "val", "test"}
    for path, label in zip(frame["path"], frame["label"]):
        assert Path(path).is_absolute()
        assert Path(path).parent.name == ("PNEUMONIA" if label == 1 else "NORMAL")
    assert frame.attrs["notes"] == []
    assert frame["path"].is_unique


def test_no_patient_in_both_train_and_val(synthetic_root: Path) -> None:
    for seed in range(3):
        frame = scan(synthetic_root, seed=seed)
        train = set(frame.loc[frame["split"] == "train", "patient"])
        val = set(frame.loc[frame["split"] == "val", "patient"])
        assert train and val
        assert not train & val


def test_val_class_ratio_close_to_train(synthetic_root: Path) -> None:
    for seed in range(5):
        frame = scan(synthetic_root, seed=seed)
        ratio = frame.groupby("split")["label"].mean()
        assert abs(ratio["val"] - ratio["train"]) <= 0.03, (seed, ratio.to_dict())


def test_val_fraction_is_roughly_honoured(synthetic_root: Path) -> None:
    for fraction in (0.2, 0.3):
        frame = scan(synthetic_root, val_fraction=fraction)
        pool = frame[frame["split"] != "test"]
        share = (pool["split"] == "val").mean()
        expected = 1 / round(1 / fraction)  # one fold of round(1 / fraction)
        assert abs(share - expected) < 0.06, (fraction, share)


def test_same_seed_same_split_other_seed_other_split(synthetic_root: Path) -> None:
    first, again, other = scan(synthetic_root, seed=1), scan(synthetic_root, seed=1), scan(synthetic_root, seed=2)
    assert first["split"].tolist() == again["split"].tolist()
    assert first["path"].tolist() == other["path"].tolist()  # same rows, same order
    assert first["split"].tolist() != other["split"].tolist()


def test_official_val_is_merged_and_test_untouched(synthetic_root: Path) -> None:
    frame = scan(synthetic_root)
    official_val = _files_under(synthetic_root / "val")
    assert official_val, "the synthetic set must put some images under val/"
    merged = frame[frame["source_split"] == "val"]
    assert set(merged["path"]) == official_val  # none lost
    assert set(merged["split"]) <= {"train", "val"}
    assert set(frame.loc[frame["split"] == "test", "path"]) == _files_under(synthetic_root / "test")
    assert (frame.loc[frame["source_split"] == "test", "split"] == "test").all()
    assert set(frame["path"]) == _files_under(synthetic_root)  # every image, once


def _hand_made(root: Path, class_names=("normal", "Pneumonia"), splits=("train",)) -> Path:
    for split in splits:
        normal, pneumonia = (root / split / name for name in class_names)
        for i in range(6):
            _image(normal / f"IM-{i + 10 * len(split):04d}-0001.png", 40)
            _image(pneumonia / f"person{i + 10 * len(split)}_virus_1.jpg", 200)
            _image(pneumonia / f"person{i + 10 * len(split)}_bacteria_2.JPEG", 210)
    return root


def test_any_case_class_folders_png_jpg_and_ignored_files(tmp_path: Path) -> None:
    root = _hand_made(tmp_path / "data", class_names=("normal", "Pneumonia"))
    (root / "train" / "normal" / "notes.txt").write_text("not an image")
    (root / "train" / "Pneumonia" / "Thumbs.db").write_bytes(b"\0")
    (root / "train" / "Pneumonia" / "scan.tif").write_bytes(b"\0")
    frame = scan(root)
    assert len(frame) == 18
    (note,) = frame.attrs["notes"]
    assert note.startswith("ignored 3 file(s)") and "notes.txt" in note
    assert frame["label"].sum() == 12
    assert {Path(p).suffix for p in frame["path"]} == {".png", ".jpg", ".JPEG"}
    assert frame.loc[frame["label"] == 1, "patient"].str.fullmatch(r"p\d+").all()


def test_root_with_only_train(tmp_path: Path) -> None:
    frame = scan(_hand_made(tmp_path / "data", class_names=("NORMAL", "PNEUMONIA")))
    assert set(frame["split"]) == {"train", "val"}
    assert set(frame["source_split"]) == {"train"}
    assert (frame["split"] == "val").sum() >= 2


def test_upper_case_split_folders(tmp_path: Path) -> None:
    root = _hand_made(tmp_path / "data", splits=("TRAIN", "Test"))
    frame = scan(root)
    assert set(frame["source_split"]) == {"train", "test"}
    assert (frame["split"] == "test").sum() == 18


def _layout(root: Path, patients: int = 6) -> Path:
    for i in range(patients):
        _image(root / "train" / "NORMAL" / f"IM-{i:04d}-0001.jpeg", 60)
        _image(root / "train" / "PNEUMONIA" / f"person{i}_virus_1.jpeg", 180)
    return root


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"does not exist") as info:
        scan(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)


def test_root_without_train_folder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(InputError) as info:
        scan(tmp_path)
    message = str(info.value)
    assert "no train/ folder" in message and "'images'" in message  # what was found
    assert "train/{NORMAL,PNEUMONIA}" in message  # the expected layout


def test_no_class_folders(tmp_path: Path) -> None:
    _image(tmp_path / "train" / "scans" / "a.jpeg")
    _image(tmp_path / "train" / "b.jpeg")
    with pytest.raises(InputError) as info:
        scan(tmp_path)
    message = str(info.value)
    assert "NORMAL/PNEUMONIA" in message  # the problem: both class folders missing
    assert "'scans'" in message and "'b.jpeg'" in message  # what was found
    assert "train/NORMAL and" in message and "train/PNEUMONIA" in message  # the expected layout


def test_one_class_folder_missing(tmp_path: Path) -> None:
    _image(tmp_path / "train" / "NORMAL" / "IM-0001-0001.jpeg")
    with pytest.raises(InputError, match=r"has no PNEUMONIA folder"):
        scan(tmp_path)


def test_empty_class_folder(tmp_path: Path) -> None:
    root = _layout(tmp_path)
    for file in (root / "train" / "PNEUMONIA").iterdir():
        file.unlink()
    (root / "train" / "PNEUMONIA" / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match=r"PNEUMONIA holds no \.jpeg/\.jpg/\.png/\.dcm image"):
        scan(root)


def test_too_few_patients_to_hold_out_val(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"only 4 patients in train"):
        scan(_layout(tmp_path, patients=2))


def test_val_fraction_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"val_fraction=0\.6"):
        scan(_layout(tmp_path), val_fraction=0.6)
