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
    frame = _model().predict([np.zeros((50, 40), np.uint8), tmp_path / "broken.png"])
    assert list(frame.columns) == ["path", "probability", "decision", "error"]
    assert np.isfinite(frame["probability"][0]) and pd.isna(frame["error"][0])
    assert np.isnan(frame["probability"][1]) and "broken.png" in frame["path"][1] and frame["error"][1]


def test_a_folder_without_a_model_fails_with_one_line(tmp_path):
    with pytest.raises(InputError, match="model.json"):
        load_model(tmp_path)
