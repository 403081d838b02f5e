"""Acquisition shift: fixed, seeded perturbations of films (gamma, contrast, blur, noise, resolution loss), as another
machine or another exposure would take them, applied to whole batches as tensors in [0, 1] at the model's size.

Two disjoint banks, so nothing is judged on what it was selected on:
- SELECTION_BANK scores every epoch of every trial (val_shift_auroc, val_shift_spec_at_recall, which --metric may
  rank by): each val film is seen once, under one perturbation dealt to it by a seeded permutation, so the shifted
  pass costs one more val pass (the same films under the same perturbation in every trial and member);
- ROBUSTNESS_BANK scores the final model (cxr.robustness): each perturbation at two strengths, on every film of val
  (or the out-of-fold films) and test, at other magnitudes than the selection bank's.
Blur and resolution loss are fractions of the image side, so a bank means the same at 64 px and at 512 px.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from kornia.enhance import adjust_contrast_with_mean_subtraction, adjust_gamma
from kornia.filters import gaussian_blur2d

from cxr.metrics import compute_metrics

FAMILIES = ("gamma", "contrast", "blur", "noise", "resolution")


@dataclass(frozen=True)
class Perturbation:
    family: str  # one of FAMILIES
    magnitude: float  # gamma: exponent; contrast: factor around the film's mean; blur: Gaussian sigma / side;
    # noise: Gaussian sigma of intensity in [0, 1]; resolution: side kept (down-sampled, then up again)
    strength: int = 1  # the robustness bank's order within a family: 1 mild, 2 strong

    @property
    def name(self) -> str:
        return f"{self.family}={self.magnitude:g}"

    def apply(self, x: torch.Tensor, films: np.ndarray, seed: int) -> torch.Tensor:
        """x: (B, 1, H, W) in [0, 1]; films: each film's id, which seeds its noise."""
        side, m = x.shape[-1], float(self.magnitude)
        if self.family == "gamma":
            return adjust_gamma(x, m)
        if self.family == "contrast":
            return adjust_contrast_with_mean_subtraction(x, m)
        if self.family == "blur":
            sigma = m * side
            size = 2 * int(np.ceil(3 * sigma)) + 1
            return gaussian_blur2d(x, (size, size), (sigma, sigma), border_type="reflect")
        if self.family == "noise":
            return x + m * _film_noise(x.shape[1:], films, seed).to(x.device, x.dtype)
        # resolution: fewer pixels of the same anatomy, brought back to the side the model takes
        small = F.interpolate(x, size=max(1, round(m * side)), mode="bilinear", antialias=True, align_corners=False)
        return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _film_noise(shape: torch.Size, films: np.ndarray, seed: int) -> torch.Tensor:
    """The same noise for a film whatever batch it is in: one generator per film, seeded by (seed, film id)."""
    fields = []
    for film in films:
        state = np.random.SeedSequence([seed, int(film)]).generate_state(1, np.uint64)[0]
        fields.append(torch.randn(shape, generator=torch.Generator().manual_seed(int(state))))
    return torch.stack(fields)


SELECTION_SEED = 30  # deals the val films round the selection bank and seeds their noise
SELECTION_BANK = (
    Perturbation("gamma", 0.7), Perturbation("gamma", 1.5),
    Perturbation("contrast", 0.7), Perturbation("contrast", 1.4),
    Perturbation("blur", 0.01), Perturbation("noise", 0.04), Perturbation("resolution", 0.5),
)
ROBUSTNESS_SEED = 31  # seeds the robustness bank's noise
ROBUSTNESS_BANK = tuple(
    Perturbation(family, magnitude, strength)
    for family, magnitudes in (("gamma", (1.25, 2.0)), ("contrast", (0.8, 0.5)), ("blur", (0.006, 0.015)),
                               ("noise", (0.02, 0.08)), ("resolution", (0.7, 0.3)))
    for strength, magnitude in enumerate(magnitudes, start=1)
)


@dataclass(frozen=True, eq=False)
class Shift:
    """Which perturbation of bank each film gets: bank[choice[film]] (films are indices into the scored images;
    a film whose choice is -1 passes unchanged). Called by cxr.augment.BatchPipeline on a batch of films."""

    bank: tuple[Perturbation, ...]
    choice: np.ndarray
    seed: int

    def __call__(self, x: torch.Tensor, films: np.ndarray) -> torch.Tensor:
        kinds = self.choice[films]
        out = x.clone()
        for k in np.unique(kinds[kinds >= 0]):
            rows = np.flatnonzero(kinds == k)
            index = torch.as_tensor(rows, device=x.device)
            out[index] = self.bank[k].apply(x[index], films[rows], self.seed)
        return out.clamp_(0, 1)


def selection_shift(n_films: int, scored: np.ndarray) -> Shift:
    """The films `scored` (of n_films) dealt round SELECTION_BANK in a seeded order: each perturbation gets an equal
    share, and the same films whatever the trial."""
    choice = np.full(n_films, -1)
    order = np.random.default_rng(SELECTION_SEED).permutation(len(scored))
    choice[np.asarray(scored)[order]] = np.arange(len(scored)) % len(SELECTION_BANK)
    return Shift(SELECTION_BANK, choice, SELECTION_SEED)


def everywhere(perturbation: Perturbation, n_films: int) -> Shift:
    """Every one of n_films under one perturbation of the robustness bank."""
    return Shift((perturbation,), np.zeros(n_films, dtype=int), ROBUSTNESS_SEED)


def selection_scores(labels, probs, target_recall: float) -> dict[str, float]:
    """A trial's shift metrics (cxr.monitors) from its val films under selection_shift."""
    m = compute_metrics(labels, probs, target_recall=target_recall)
    return {"val_shift_auroc": m["auroc"], "val_shift_spec_at_recall": m["spec_at_recall"]}
