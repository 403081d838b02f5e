"""The shippable final model: a folder with model.json and one safetensors file per ensemble member.

Probability of a film: each member's sigmoid (averaged with the mirrored film when tta is on), the mean over
members, then temperature scaling; the decision is calibrated probability >= threshold. Loading needs only
this folder (no Ray, no Optuna, no results tables, no pretrained weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from cxr.calibration import apply_temperature
from cxr.config import TrainConfig
from cxr.engine import predict as predict_probs
from cxr.errors import InputError
from cxr.jsonio import read_json, write_json
from cxr.models import CxrNet, create_model, data_config

MODEL_FILE = "model.json"
FORMAT = "cxr-final-model"
VERSION = 2


@dataclass
class FinalModel:
    config: TrainConfig
    members: list[CxrNet]
    seeds: list[int]
    threshold: float
    temperature: float = 1.0
    tta: bool = False
    info: dict = field(default_factory=dict)  # threshold rule, target recall, ... (written to model.json as is)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def member_probabilities(self, images: np.ndarray) -> np.ndarray:
        """(K, N) uncalibrated probabilities of each member for (N, S, S) uint8 images at image_size."""
        return np.stack([predict_probs(m, images, image_size=self.image_size, tta=self.tta) for m in self.members])

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Calibrated ensemble probabilities, the number the threshold applies to."""
        return apply_temperature(self.member_probabilities(images).mean(axis=0), self.temperature)

    def predict(self, items: Iterable[str | Path | np.ndarray]) -> pd.DataFrame:
        """One row per item (a file path or a 2-D grayscale array): path, probability, decision, error.
        An unreadable file gets its error and NaN probability; the others are still predicted."""
        from cxr.images import decode, resize_array  # decode knows every supported file type

        rows, images, ok = [], [], []
        for i, item in enumerate(items):
            is_array = isinstance(item, np.ndarray)
            row = {"path": f"<array {i}>" if is_array else str(item), "probability": math.nan, "decision": pd.NA, "error": None}
            try:
                images.append(resize_array(item, self.image_size) if is_array else decode(str(item), self.image_size))
                ok.append(i)
            except (OSError, ValueError) as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
        frame = pd.DataFrame(rows, columns=["path", "probability", "decision", "error"])
        if ok:
            probs = self.probabilities(np.stack(images))
            frame.loc[ok, "probability"] = probs
            frame.loc[ok, "decision"] = (probs >= self.threshold).astype(int)
        frame["decision"] = frame["decision"].astype("Int64")
        return frame

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        members = []
        for i, (model, seed) in enumerate(zip(self.members, self.seeds)):
            name = f"member-{i}.safetensors"
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / name))
            members.append({"file": name, "seed": int(seed)})
        dc = data_config(self.members[0])
        spec = {
            "format": FORMAT, "version": VERSION, "positive_class": "PNEUMONIA", "config": self.config.to_dict(),
            "members": members, "combine": "mean of member probabilities", "tta": self.tta,
            "temperature": float(self.temperature), "threshold": float(self.threshold),
            "image_size": self.image_size, "mean": list(dc["mean"]), "std": list(dc["std"]),
            "grayscale_as_rgb": True, **self.info,
        }
        write_json(folder / MODEL_FILE, spec)
        return folder


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> FinalModel:
    """The model a search shipped in results/<name>/final (or a copy of that folder)."""
    folder = Path(folder)
    if (folder / MODEL_FILE).is_file():
        spec = _read(folder / MODEL_FILE)
        if spec.get("format") != FORMAT:
            raise InputError(f"{folder / MODEL_FILE} is not a cxr final model (format {spec.get('format')!r}): pass a final/ folder")
        config = TrainConfig.from_dict(spec["config"])
        members = [_member(config, folder / m["file"], device) for m in spec["members"]]
        info = {k: v for k, v in spec.items() if k not in _SPEC_KEYS}
        return FinalModel(config, members, [m["seed"] for m in spec["members"]], spec["threshold"],
                          spec.get("temperature", 1.0), spec.get("tta", False), info)
    raise InputError(f"{folder} holds no {MODEL_FILE}: pass the final/ folder of a finished tune.run experiment")


_SPEC_KEYS = {"format", "version", "positive_class", "config", "members", "combine", "tta", "temperature",
              "threshold", "image_size", "mean", "std", "grayscale_as_rgb"}


def _member(config: TrainConfig, path: Path, device) -> CxrNet:
    if not path.is_file():
        raise InputError(f"member weights {path} are missing: copy the whole final/ folder")
    model = create_model(config.backbone, pretrained=False, dropout=config.dropout, unfrozen_blocks=config.unfrozen_blocks)
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval()


def _read(path: Path) -> dict:
    try:
        return read_json(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is unreadable ({type(exc).__name__}: {exc}): copy the final/ folder again") from None
