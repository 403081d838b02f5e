"""The shippable final model: a folder with model.json and one safetensors file per ensemble member.

Probability of a film: each member's sigmoid (averaged with the mirrored film when tta is on), the mean over
members, then temperature scaling; the decision is calibrated probability >= threshold. Members predict in the
precision the config key `precision` means on their device (cxr.precision), as they trained; model.json's
training_precision records what that was. Loading needs only this folder (no Ray, no Optuna, no results tables, no
pretrained weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from cxr.calibration import TEMPERATURE_BOUNDS, apply_temperature
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

    def member_probabilities(self, images: np.ndarray, precision: str | None = None) -> np.ndarray:
        """(K, N) uncalibrated probabilities of each member for (N, S, S) uint8 images at image_size, in the config's
        precision unless another is named (cxr.export checks its fp32 graph against "fp32")."""
        precision = precision or self.config.precision
        return np.stack([predict_probs(m, images, image_size=self.image_size, tta=self.tta, precision=precision,
                                       contrast_norm=self.config.contrast_norm) for m in self.members])

    def probabilities(self, images: np.ndarray, precision: str | None = None) -> np.ndarray:
        """Calibrated ensemble probabilities, the number the threshold applies to."""
        return apply_temperature(self.member_probabilities(images, precision).mean(axis=0), self.temperature)

    def predict(self, items: Iterable[str | Path | np.ndarray], max_pixels: int | None = None) -> pd.DataFrame:
        """One row per item (a file path or a 2-D grayscale array), in order: path, probability, decision, error.
        A film that cannot be read (whatever its decoder raises) gets its error and NaN probability; the others are
        still predicted. Files above max_pixels (cxr.images.MAX_PIXELS unless given) are refused unread."""
        from cxr.images import MAX_PIXELS, decode, resize_array  # decode knows every supported file type

        rows, images, ok = [], [], []
        for i, item in enumerate(items):
            is_array = isinstance(item, np.ndarray)
            row = {"path": f"<array {i}>" if is_array else str(item), "probability": math.nan, "decision": pd.NA, "error": None}
            try:
                images.append(resize_array(item, self.image_size) if is_array
                              else decode(str(item), self.image_size, max_pixels or MAX_PIXELS))
                ok.append(i)
            except Exception as exc:  # noqa: BLE001  untrusted files: any decoder failure is this film's error row
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
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
    """The model a search shipped in results/<name>/final (or a copy of that folder), validated: every key of
    model.json with its type and range, and every member's weights against the architecture it names. Any problem is
    one InputError naming the key or the file."""
    folder = Path(folder)
    path = folder / MODEL_FILE
    if not path.is_file():
        raise InputError(f"{folder} holds no {MODEL_FILE}: pass the final/ folder of a finished tune.run experiment")
    spec = _read(path)
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        found = spec.get("format") if isinstance(spec, dict) else type(spec).__name__
        raise InputError(f"{path} is not a cxr final model (format {found!r}): pass a final/ folder")
    for key, (ok, expected) in _CHECKS.items():
        if key not in spec:
            raise InputError(f"{path}: key '{key}' is missing ({expected} expected): copy the final/ folder again")
        if not ok(spec[key]):
            raise InputError(f"{path}: '{key}' = {spec[key]!r} is invalid: expected {expected}")
    if not isinstance(spec["config"], dict):
        raise InputError(f"{path}: 'config' = {spec['config']!r} is invalid: expected the training config (an object)")
    try:
        config = TrainConfig.from_dict(spec["config"])
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    members = [_member(config, folder, m, i, device) for i, m in enumerate(spec["members"])]
    info = {k: v for k, v in spec.items() if k not in _SPEC_KEYS}
    return FinalModel(config, members, [m["seed"] for m in spec["members"]], spec["threshold"], spec["temperature"],
                      spec["tta"], info)


def _finite(value, lo: float, hi: float, closed: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return lo <= value <= hi if closed else lo < value < hi


_CHECKS = {  # key: (check, what is expected)
    "threshold": (lambda v: _finite(v, 0.0, 1.0, closed=False), "a finite probability strictly between 0 and 1"),
    "temperature": (lambda v: _finite(v, *TEMPERATURE_BOUNDS, closed=True),
                    f"a finite temperature in [{TEMPERATURE_BOUNDS[0]}, {TEMPERATURE_BOUNDS[1]}] (the bounds calibration fits in)"),
    "tta": (lambda v: isinstance(v, bool), "true or false"),
    "members": (lambda v: isinstance(v, list) and len(v) >= 1, "a list of at least one member"),
    "config": (lambda v: isinstance(v, dict), "the training config (an object)"),
}
_SPEC_KEYS = {"format", "version", "positive_class", "config", "members", "combine", "tta", "temperature",
              "threshold", "image_size", "mean", "std", "grayscale_as_rgb"}


def _member(config: TrainConfig, folder: Path, entry, index: int, device) -> CxrNet:
    """Member index's weights: a plain file name inside the folder, safetensors, matching config's architecture."""
    where = f"{folder / MODEL_FILE}: member {index}"
    name = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not isinstance(entry.get("seed"), int) or isinstance(entry.get("seed"), bool):
        raise InputError(f"{where} = {entry!r} is invalid: expected {{\"file\": <name>.safetensors, \"seed\": <integer>}}")
    if Path(name).name != name or name in ("", ".", "..") or not name.endswith(".safetensors"):
        raise InputError(f"{where}: file {name!r} is not a plain .safetensors name inside the model folder: "
                         "a model folder never points outside itself")
    path = folder / name
    if not path.is_file():
        raise InputError(f"member weights {path} are missing: copy the whole final/ folder")
    model = create_model(config.backbone, pretrained=False, dropout=config.dropout, unfrozen_blocks=config.unfrozen_blocks)
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001  safetensors raises its own error kinds for a corrupt file
        raise InputError(f"member weights {path} are unreadable ({type(exc).__name__}: {str(exc)[:200]}): "
                         "copy the final/ folder again") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"member weights {path} do not fit the backbone '{config.backbone}' that {MODEL_FILE} names "
                         f"({str(exc).splitlines()[0][:200]}): the folder mixes two models") from None
    return model.to(device).eval()


def _read(path: Path) -> dict:
    try:
        return read_json(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is unreadable ({type(exc).__name__}: {exc}): copy the final/ folder again") from None
