"""cxr.package: the shippable final/ folder round-trips; bad folders fail in one line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxr.config import TrainConfig
from cxr.errors import InputError
from cxr.models import create_model
from cxr.package import FinalModel, load_model

CONFIG = TrainConfig(backbone="test_efficientnet", pretrained=False, image_size=32)


def _model(tta: bool = False) -> FinalModel:
    members = [create_model(CONFIG.backbone, pretrained=False) for _ in range(2)]
    return FinalModel(CONFIG, [m.eval() for m in members], [11, 12], threshold=0.4, temperature=1.7, tta=tta)


def test_save_and_load_give_the_same_probabilities(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (5, 32, 32), dtype=np.uint8)
    model = _model(tta=True)
    loaded = load_model(model.save(tmp_path / "final"))
    assert (loaded.seeds, loaded.threshold, loaded.temperature, loaded.tta) == ([11, 12], 0.4, 1.7, True)
    assert np.allclose(loaded.probabilities(images), model.probabilities(images), atol=1e-6)
    spec = json.loads((tmp_path / "final" / "model.json").read_text())
    assert spec["image_size"] == 32 and len(spec["mean"]) == 3 and spec["members"][1]["file"] == "member-1.safetensors"


def test_predict_gives_an_error_row_and_still_predicts_the_rest(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    film = np.random.default_rng(0).integers(0, 256, (50, 40), dtype=np.uint8)
    frame = _model().predict([film, tmp_path / "broken.png"])
    assert list(frame.columns) == ["path", "probability", "decision", "error"]
    assert np.isfinite(frame["probability"][0]) and pd.isna(frame["error"][0])
    assert np.isnan(frame["probability"][1]) and "broken.png" in frame["path"][1] and frame["error"][1]


def test_a_folder_without_a_model_fails_with_one_line(tmp_path):
    with pytest.raises(InputError, match="model.json"):
        load_model(tmp_path)


def _spec(folder) -> dict:
    return json.loads((folder / "model.json").read_text())


@pytest.mark.parametrize("key, value, words", [
    ("threshold", float("nan"), "'threshold' = nan is invalid"),
    ("threshold", 2.0, "'threshold' = 2.0 is invalid: expected a finite probability"),
    ("threshold", 0.0, "'threshold' = 0.0 is invalid"),
    ("threshold", "0.4", "'threshold' = '0.4' is invalid"),
    ("temperature", -1.0, "'temperature' = -1.0 is invalid: expected a finite temperature in \\[0.05, 20.0\\]"),
    ("temperature", float("inf"), "'temperature' = inf is invalid"),
    ("tta", "no", "'tta' = 'no' is invalid: expected true or false"),
    ("members", [], "'members' = \\[\\] is invalid: expected a list of at least one member"),
    ("config", "resnet18", "'config' = 'resnet18' is invalid"),
    ("config", {"backbone": "resnet18", "lr": -1}, "config key 'lr' = -1"),
    ("threshold", None, "key 'threshold' is missing"),
])
def test_each_bad_model_json_field_is_one_named_error(tmp_path, key, value, words):
    folder = _model().save(tmp_path / "final")
    spec = _spec(folder)
    if value is None:
        del spec[key]
    else:
        spec[key] = value
    (folder / "model.json").write_text(json.dumps(spec))  # json writes NaN and Infinity, as a hostile file may
    with pytest.raises(InputError, match=words):
        load_model(folder)


@pytest.mark.parametrize("file", ["../../x.safetensors", "/etc/passwd", "sub/member-0.safetensors", "member-0.pt", ".."])
def test_member_files_must_be_plain_names_inside_the_folder(tmp_path, file):
    folder = _model().save(tmp_path / "final")
    spec = _spec(folder)
    spec["members"][0]["file"] = file
    (folder / "model.json").write_text(json.dumps(spec))
    with pytest.raises(InputError, match="not a plain .safetensors name inside the model folder"):
        load_model(folder)


def test_corrupt_or_foreign_member_weights_are_named(tmp_path):
    folder = _model().save(tmp_path / "final")
    (folder / "member-1.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(InputError, match="member-1.safetensors are unreadable"):
        load_model(folder)
    other = create_model("resnet18", pretrained=False)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(folder / "member-1.safetensors"))
    with pytest.raises(InputError, match="do not fit the backbone 'test_efficientnet'"):
        load_model(folder)
