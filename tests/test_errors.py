"""Bad input: each case raises cxr.errors.InputError whose message names the problem and the way out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.config import TrainConfig
from cxr.data import scan
from cxr.dataset import load_dataset
from cxr.errors import InputError
from cxr.models import count_blocks, create_model


def _image(path: Path, value: int = 120) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), value, np.uint8)).save(path)


def _layout(root: Path, patients: int = 6) -> Path:
    for i in range(patients):
        _image(root / "train" / "NORMAL" / f"IM-{i:04d}-0001.jpeg", 60)
        _image(root / "train" / "PNEUMONIA" / f"person{i}_virus_1.jpeg", 180)
    return root


def test_input_error_is_a_value_error() -> None:
    assert issubclass(InputError, ValueError)


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


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupted_image_is_named_when_the_cache_is_built(tmp_path: Path, damage: str) -> None:
    root = _layout(tmp_path / "data")
    bad = root / "train" / "PNEUMONIA" / "person3_virus_1.jpeg"
    data = bad.read_bytes()
    bad.write_bytes({"garbage": b"this is not a JPEG", "truncated": data[: len(data) // 3], "empty": b""}[damage])
    with pytest.raises(InputError, match=r"unreadable image") as info:
        load_dataset(root, image_size=16, cache_dir=tmp_path / "cache")
    assert str(bad) in str(info.value)
    assert not list((tmp_path / "cache").glob("*.npy"))  # nothing half-built is left to be reused


def test_unknown_backbone_offers_close_matches() -> None:
    with pytest.raises(InputError, match=r"unknown backbone 'resnet5O'") as info:
        create_model("resnet5O", pretrained=False)
    assert "'resnet50'" in str(info.value)
    with pytest.raises(InputError, match=r"unknown backbone 'densenet12'.*densenet121"):
        count_blocks("densenet12")


def test_out_of_range_config_value_names_the_key() -> None:
    with pytest.raises(InputError, match=r"config key 'lr' = -1\.0 is invalid: expected"):
        TrainConfig.from_dict({"lr": -1})


def test_unknown_config_key_is_named() -> None:
    with pytest.raises(InputError, match=r"unknown config key 'epoch'.*did you mean 'epochs'"):
        TrainConfig.from_dict({"epoch": 3})


def test_pretrained_without_weights_file(tmp_path: Path) -> None:
    (tmp_path / "resnet18.txt").write_text("not weights")
    with pytest.raises(InputError) as info:
        create_model("resnet18", pretrained=True, weights_dir=tmp_path)
    message = str(info.value)
    assert "'resnet18'" in message and str(tmp_path) in message
    assert "weights_dir" in message  # way out 1: a folder holding resnet18.safetensors
    assert "pretrained=False" in message  # way out 2: train from scratch
