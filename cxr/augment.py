"""Batch pipeline: cached uint8 films -> augmented, contrast-normalised, normalised 3-channel float batches, on the
model's device.

Augmentation runs on whole batches with per-sample random parameters (kornia), so on a GPU it costs almost nothing.
In training a film goes through the acquisition-like family first (what another detector, exposure or
post-processing does to it), then the contrast normalisation every film gets (a shifted film is normalised as a
new site's film would be), then geometry (rotation, crop, mirroring: the padding a rotation adds is not part of the
film's histogram). `augment` is the older single strength: rotation, zoom-in and shift share one affine warp (a
random resized crop at a fixed aspect ratio, which keeps the anatomy's proportions), then brightness and contrast.
"""

from __future__ import annotations

from collections.abc import Callable

import kornia.augmentation as K
import kornia.enhance
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr.config import TrainConfig

ACQUISITION_KEYS = ("aug_lowres", "aug_noise", "aug_sharpness", "aug_gamma", "aug_contrast")
GEOMETRY_KEYS = ("aug_crop", "aug_rotation")
CLAHE_CLIP = 2.0  # the contrast limit usual for chest films (OpenCV's 40 barely limits a 256-bin tile)
CLAHE_GRID = (8, 8)
DEGRADED_SHARE = 0.5  # noise and resolution loss hit half the films: the other half stays as acquired


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


def create_acquisition(config: TrainConfig) -> nn.Module:
    """The acquisition-like family in the order a film is made: resolution loss and noise at the detector, then
    sharpening or smoothing, gamma and contrast in post-processing; identity when every key is 0."""
    steps = {
        "aug_lowres": lambda v: ResolutionLoss(v, p=DEGRADED_SHARE),
        "aug_noise": lambda v: K.RandomGaussianNoise(std=v, p=DEGRADED_SHARE),
        "aug_sharpness": lambda v: K.RandomSharpness((1 - v, 1 + v), p=1.0),
        "aug_gamma": lambda v: K.RandomGamma((1 / (1 + v), 1 + v), p=1.0),
        "aug_contrast": lambda v: K.ColorJitter(contrast=(1 - v, 1 + v), p=1.0),
    }
    chosen = [steps[key](getattr(config, key)) for key in ACQUISITION_KEYS if getattr(config, key) > 0]
    return nn.Sequential(*chosen) if chosen else nn.Identity()


def create_geometry(config: TrainConfig) -> nn.Module:
    """`augment`'s warp when it is on, and the separate geometric keys; mirroring (hflip) whenever any augmentation
    is on, once."""
    legacy = create_augmentation(config.augment, config.hflip)
    steps = [legacy] if config.augment > 0 else []
    if config.aug_crop > 0:
        size = (config.image_size, config.image_size)
        steps.append(K.RandomResizedCrop(size, scale=(1 - config.aug_crop, 1.0), ratio=(1.0, 1.0), p=1.0))
    if config.aug_rotation > 0:
        steps.append(K.RandomRotation(config.aug_rotation, p=1.0))
    new_keys = any(getattr(config, key) > 0 for key in (*ACQUISITION_KEYS, *GEOMETRY_KEYS))
    if config.hflip and config.augment <= 0 and new_keys:
        steps.append(K.RandomHorizontalFlip(p=0.5))
    return nn.Sequential(*steps) if steps else nn.Identity()


class ResolutionLoss(nn.Module):
    """Films downsampled to a side of s times their own (s drawn per batch from [1 - strength, 1]) and upsampled
    back, as a detector or an archive of lower resolution leaves them; each film with probability p. One scale per
    batch keeps it two whole-batch resizes; batches differ."""

    def __init__(self, strength: float, p: float):
        super().__init__()
        self.strength, self.p = strength, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        scale = 1 - self.strength * torch.rand(()).item()
        low = (max(2, round(height * scale)), max(2, round(width * scale)))
        lost = F.interpolate(x, size=low, mode="bilinear", antialias=True, align_corners=False)
        lost = F.interpolate(lost, size=(height, width), mode="bilinear", align_corners=False)
        chosen = (torch.rand(len(x)) < self.p).to(x.device, non_blocking=True)
        return torch.where(chosen.view(-1, 1, 1, 1), lost, x)


class ContrastNormalisation(nn.Module):
    """Histogram equalisation or CLAHE (kornia.enhance) of (B, 1, H, W) films in [0, 1]; "none" is the identity."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "equalize":
            return kornia.enhance.equalize(x)
        if self.kind == "clahe":
            return kornia.enhance.equalize_clahe(x, clip_limit=CLAHE_CLIP, grid_size=CLAHE_GRID)
        return x


def mirror(films):
    """Films flipped left-right (the last axis): uint8 arrays (N, H, W) or normalised tensors (N, C, H, W)."""
    if isinstance(films, torch.Tensor):
        return torch.flip(films, dims=[-1])
    return np.ascontiguousarray(np.asarray(films)[..., ::-1])


def mirror_mean(plain, mirrored):
    """Test-time mirroring: the mean of a film's and its mirror image's probabilities."""
    return (plain + mirrored) / 2


class BatchPipeline(nn.Module):
    """uint8 (B, H, W) -> float (B, 3, size, size), contrast-normalised (contrast_norm, in training and evaluation
    alike) and normalised with the backbone's pretrained mean/std; augmented in training only."""

    def __init__(self, size: int, mean: tuple, std: tuple, strength: float = 0.0, hflip: bool = True, *,
                 contrast_norm: str, acquisition: nn.Module | None = None, geometry: nn.Module | None = None):
        super().__init__()
        self.size = size
        self.acquisition = acquisition if acquisition is not None else nn.Identity()
        self.contrast = ContrastNormalisation(contrast_norm)
        self.augment = geometry if geometry is not None else create_augmentation(strength, hflip)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @classmethod
    def for_training(cls, config: TrainConfig, mean: tuple, std: tuple) -> BatchPipeline:
        """Every augmentation key of config, and its contrast normalisation."""
        return cls(config.image_size, mean, std, contrast_norm=config.contrast_norm,
                   acquisition=create_acquisition(config), geometry=create_geometry(config))

    @torch.no_grad()
    def forward(self, images: torch.Tensor, train: bool,
                shift: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """shift: a perturbation of the films in [0, 1] at the model's size (cxr.shift), applied as acquisition would
        be: before the contrast normalisation, which then treats the shifted film as a new site's film."""
        x = images.to(self.mean.device, non_blocking=True).unsqueeze(1).float().div_(255)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        if shift is not None:
            x = shift(x)  # cxr.shift.Shift keeps the films in [0, 1]
        if train:
            x = self.acquisition(x).clamp_(0, 1)
        x = self.contrast(x)
        if train:
            x = self.augment(x).clamp_(0, 1)
        return self.normalise(x)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) films in [0, 1] -> the members' input: 3 identical channels, scaled by mean and std."""
        return (x.expand(-1, 3, -1, -1) - self.mean) / self.std
