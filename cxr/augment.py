"""Batch pipeline: cached uint8 films -> augmented, normalised 3-channel float batches, on the model's device.

Augmentation runs on whole batches with per-sample random parameters (kornia), so on a GPU it costs
almost nothing. Rotation, zoom-in and shift share one affine warp: a random resized crop at a fixed
aspect ratio, which keeps the anatomy's proportions.
"""

from __future__ import annotations

from collections.abc import Callable

import kornia.augmentation as K
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def create_augmentation(strength: float, hflip: bool) -> nn.Module:
    """Strength 1 = rotation up to 20 degrees, zoom up to 1.4x (crops down to ~50 % of the area),
    shift up to 10 %, brightness and contrast +-20 %; 0 = identity."""
    if strength <= 0:
        return nn.Identity()
    s = strength
    steps = [
        K.RandomAffine(degrees=20 * s, translate=(0.1 * s, 0.1 * s), scale=(1.0, 1.0 + 0.4 * s), p=1.0),
        K.RandomBrightness((1 - 0.2 * s, 1 + 0.2 * s), p=1.0),
        K.RandomContrast((1 - 0.2 * s, 1 + 0.2 * s), p=1.0),
    ]
    if hflip:
        steps.insert(1, K.RandomHorizontalFlip(p=0.5))
    return nn.Sequential(*steps)


def mirror(films):
    """Films flipped left-right (the last axis): uint8 arrays (N, H, W) or normalised tensors (N, C, H, W)."""
    if isinstance(films, torch.Tensor):
        return torch.flip(films, dims=[-1])
    return np.ascontiguousarray(np.asarray(films)[..., ::-1])


def mirror_mean(plain, mirrored):
    """Test-time mirroring: the mean of a film's and its mirror image's probabilities."""
    return (plain + mirrored) / 2


class BatchPipeline(nn.Module):
    """uint8 (B, H, W) -> float (B, 3, size, size) normalised with the backbone's pretrained mean/std."""

    def __init__(self, size: int, mean: tuple, std: tuple, strength: float = 0.0, hflip: bool = True):
        super().__init__()
        self.size = size
        self.augment = create_augmentation(strength, hflip)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, images: torch.Tensor, train: bool,
                shift: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """shift: a perturbation of the films in [0, 1] at the model's size (cxr.shift), before normalising."""
        x = images.to(self.mean.device, non_blocking=True).unsqueeze(1).float().div_(255)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        if train:
            x = self.augment(x).clamp_(0, 1)
        if shift is not None:
            x = shift(x)
        return (x.expand(-1, 3, -1, -1) - self.mean) / self.std
