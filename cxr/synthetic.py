"""A deterministic, CXR-like synthetic data set in the Kaggle layout, for the demo and the tests.

Each drawing has a body outline, two dark lung fields, ribs, a heart shadow and noise; PNEUMONIA
cases add patchy opacities inside the lungs. Patients have 1 to 3 images and Kaggle-style names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def create_synthetic(
    root: str | Path, *, n_patients: int = 200, size: int = 96, test_fraction: float = 0.2, seed: int = 0
) -> Path:
    """Write <root>/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg; returns root. Same seed, same files."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    n_test = max(2, int(n_patients * test_fraction))
    for patient in range(n_patients):
        sick = patient % 3 != 0  # two thirds pneumonia, like Kaggle's imbalance
        split = "test" if patient < n_test else "train"
        anatomy = _anatomy(rng)
        for image in range(int(rng.integers(1, 4))):
            name = _file_name(patient, image, sick)
            # a couple of images in val/, as the official split has, so merging is exercised
            folder = "val" if split == "train" and patient < n_test + 4 and image == 0 else split
            out = root / folder / ("PNEUMONIA" if sick else "NORMAL") / name
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(draw(anatomy, sick, size, rng)).save(out, quality=92)
    return root


def _file_name(patient: int, image: int, sick: bool) -> str:
    if sick:
        kind = "bacteria" if patient % 2 else "virus"
        return f"person{patient}_{kind}_{image}.jpeg"
    prefix = "NORMAL2-" if patient % 2 else ""
    return f"{prefix}IM-{patient:04d}-{image + 1:04d}.jpeg"


def _anatomy(rng: np.random.Generator) -> dict:
    return {
        "lung_w": rng.uniform(0.15, 0.2),
        "lung_h": rng.uniform(0.3, 0.38),
        "gap": rng.uniform(0.2, 0.26),
        "rib_freq": rng.uniform(14, 20),
        "tissue": rng.uniform(110, 150),
    }


def draw(anatomy: dict, sick: bool, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size) uint8 chest-like drawing."""
    y, x = np.mgrid[0:1:size * 1j, 0:1:size * 1j]
    cx, cy = 0.5 + rng.normal(0, 0.02), 0.5 + rng.normal(0, 0.02)
    image = np.full((size, size), 25.0)
    image[((x - cx) / 0.42) ** 2 + ((y - cy) / 0.48) ** 2 < 1] = anatomy["tissue"]
    lungs = np.zeros((size, size), bool)
    for side in (-1, 1):
        lx = cx + side * anatomy["gap"]
        lungs |= ((x - lx) / anatomy["lung_w"]) ** 2 + ((y - cy + 0.03) / anatomy["lung_h"]) ** 2 < 1
    image[lungs] = 55
    ribs = np.sin(2 * np.pi * (anatomy["rib_freq"] * y + 3 * (x - cx) ** 2)) > 0.75
    image += 35 * (ribs & lungs)
    image += 70 * np.exp(-(((x - cx + 0.06) / 0.1) ** 2 + ((y - cy - 0.12) / 0.12) ** 2))  # heart
    if sick:
        image += _opacities(x, y, lungs, rng)
    image += rng.normal(0, 8, (size, size))
    return np.clip(image * rng.uniform(0.85, 1.15), 0, 255).astype(np.uint8)


def _opacities(x: np.ndarray, y: np.ndarray, lungs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Patchy consolidations: blurred blobs broken up by noise, kept inside the lung fields."""
    ys, xs = np.nonzero(lungs)
    patches = np.zeros_like(x)
    for _ in range(int(rng.integers(2, 5))):
        k = rng.integers(len(ys))
        py, px = ys[k] / (x.shape[0] - 1), xs[k] / (x.shape[1] - 1)
        radius = rng.uniform(0.07, 0.13)
        patches += np.exp(-(((x - px) ** 2 + (y - py) ** 2) / radius**2))
    mottling = rng.uniform(0.6, 1.0, x.shape)
    return 110 * np.clip(patches, 0, 1) * mottling * lungs
