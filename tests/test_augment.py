"""cxr.augment: uint8 batches -> normalised 3-channel float batches, augmented on demand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cxr.augment import BatchPipeline, create_augmentation

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _batch(n: int = 4, size: int = 48) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.integers(0, 256, (n, size, size), dtype=np.uint8))


def _expected_plain(images: torch.Tensor) -> torch.Tensor:
    x = images.float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_strength_zero_is_normalisation_only() -> None:
    assert isinstance(create_augmentation(0.0, hflip=True), nn.Identity)
    images = _batch()
    out = BatchPipeline(48, MEAN, STD, strength=0.0)(images, train=True)
    assert out.shape == (4, 3, 48, 48) and out.dtype == torch.float32
    torch.testing.assert_close(out, _expected_plain(images))


def test_resizes_to_the_pipeline_size() -> None:
    out = BatchPipeline(32, MEAN, STD)(_batch(size=48), train=False)
    assert out.shape == (4, 3, 32, 32)
    flat = BatchPipeline(32, MEAN, STD)(torch.full((2, 48, 48), 100, dtype=torch.uint8), train=False)
    torch.testing.assert_close(flat, _expected_plain(torch.full((2, 32, 32), 100, dtype=torch.uint8)))


def test_evaluation_never_augments() -> None:
    images = _batch()
    pipeline = BatchPipeline(48, MEAN, STD, strength=1.0)
    torch.testing.assert_close(pipeline(images, train=False), _expected_plain(images))


def test_training_augments_within_range_and_follows_the_torch_seed() -> None:
    images = _batch()
    pipeline = BatchPipeline(48, MEAN, STD, strength=0.5, hflip=True)
    torch.manual_seed(1)
    a = pipeline(images, train=True)
    torch.manual_seed(1)
    b = pipeline(images, train=True)
    torch.manual_seed(2)
    c = pipeline(images, train=True)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.allclose(a, _expected_plain(images), atol=1e-3)
    low = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    high = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    per_channel = a.transpose(0, 1).reshape(3, -1)
    assert (per_channel.min(1).values >= low - 1e-5).all() and (per_channel.max(1).values <= high + 1e-5).all()
    # the three channels are one film normalised three ways
    torch.testing.assert_close(a[:, 1] * STD[1] + MEAN[1], a[:, 0] * STD[0] + MEAN[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("hflip", [True, False])
def test_hflip_switch(hflip: bool) -> None:
    steps = [type(m).__name__ for m in create_augmentation(0.5, hflip=hflip)]
    assert ("RandomHorizontalFlip" in steps) == hflip
    assert "RandomAffine" in steps


def test_stronger_augmentation_moves_pixels_more() -> None:
    images = _batch(n=64)
    plain = _expected_plain(images)
    change = {}
    for strength in (0.1, 1.0):
        torch.manual_seed(0)
        out = BatchPipeline(48, MEAN, STD, strength=strength, hflip=False)(images, train=True)
        change[strength] = (out - plain).abs().mean().item()
    assert change[0.1] < change[1.0]
