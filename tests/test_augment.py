"""cxr.augment: uint8 batches -> normalised 3-channel float batches, augmented on demand: `augment` as it always
was, each key of the acquisition-like and geometric families doing what its rule says, contrast normalisation in
training and evaluation alike (after the acquisition family, before geometry)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cxr.augment import BatchPipeline, create_augmentation, create_geometry
from cxr.config import TrainConfig

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
    out = BatchPipeline(48, MEAN, STD, strength=0.0, contrast_norm="none")(images, train=True)
    assert out.shape == (4, 3, 48, 48) and out.dtype == torch.float32
    torch.testing.assert_close(out, _expected_plain(images))


def test_resizes_to_the_pipeline_size() -> None:
    out = BatchPipeline(32, MEAN, STD, contrast_norm="none")(_batch(size=48), train=False)
    assert out.shape == (4, 3, 32, 32)
    flat = BatchPipeline(32, MEAN, STD, contrast_norm="none")(torch.full((2, 48, 48), 100, dtype=torch.uint8), train=False)
    torch.testing.assert_close(flat, _expected_plain(torch.full((2, 32, 32), 100, dtype=torch.uint8)))


def test_evaluation_never_augments() -> None:
    images = _batch()
    pipeline = BatchPipeline(48, MEAN, STD, strength=1.0, contrast_norm="none")
    torch.testing.assert_close(pipeline(images, train=False), _expected_plain(images))


def test_training_augments_within_range_and_follows_the_torch_seed() -> None:
    images = _batch()
    pipeline = BatchPipeline(48, MEAN, STD, strength=0.5, hflip=True, contrast_norm="none")
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
        out = BatchPipeline(48, MEAN, STD, strength=strength, hflip=False, contrast_norm="none")(images, train=True)
        change[strength] = (out - plain).abs().mean().item()
    assert change[0.1] < change[1.0]


def _films(values: np.ndarray, n: int = 64) -> torch.Tensor:
    """n copies of one (S, S) uint8 film."""
    return torch.from_numpy(np.repeat(values.astype(np.uint8)[None], n, axis=0))


def _noise_films(n: int = 64, size: int = 32, lo: int = 96, hi: int = 160) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).integers(lo, hi, (n, size, size), dtype=np.uint8))


def _through(images: torch.Tensor, train: bool = True, seed: int = 0, **keys) -> torch.Tensor:
    """(B, S, S) films in [0, 1] as the pipeline of a config with only these keys on hands them to the model."""
    config = TrainConfig(image_size=images.shape[-1], augment=0.0, hflip=False, **keys)
    torch.manual_seed(seed)
    return BatchPipeline.for_training(config, (0, 0, 0), (1, 1, 1))(images, train=train)[:, 0]  # films as they are


def _detail(films: torch.Tensor) -> torch.Tensor:
    """Per film, the mean absolute difference of neighbouring pixels inside its one-pixel border (high frequencies)."""
    inner = films[:, 1:-1, 1:-1]
    return (inner[:, :, 1:] - inner[:, :, :-1]).abs().mean(dim=(1, 2))


def test_every_lever_off_is_augment_as_it_always_was() -> None:
    images = _batch()
    old = BatchPipeline(48, MEAN, STD, strength=0.5, hflip=True, contrast_norm="none")
    new = BatchPipeline.for_training(TrainConfig(image_size=48, augment=0.5), MEAN, STD)
    torch.manual_seed(3)
    a = old(images, train=True)
    torch.manual_seed(3)
    assert torch.equal(a, new(images, train=True))
    assert isinstance(create_geometry(TrainConfig(augment=0.0)), nn.Identity)


@pytest.mark.parametrize("keys, flips", [({"aug_gamma": 0.2}, 1), ({"aug_crop": 0.2}, 1), ({"augment": 0.5}, 1),
                                         ({"augment": 0.5, "aug_rotation": 5.0}, 1), ({}, 0)])
def test_mirroring_comes_with_any_augmentation_once(keys: dict, flips: int) -> None:
    def count(module: nn.Module) -> int:
        return sum(type(m).__name__ == "RandomHorizontalFlip" for m in module.modules())

    config = TrainConfig(**{"augment": 0.0, **keys})
    assert count(create_geometry(config)) == flips
    assert count(create_geometry(config.replace(hflip=False))) == 0


def test_gamma_raises_each_film_to_a_power_of_its_own_within_the_range() -> None:
    ramp = np.linspace(20, 235, 16 * 16).reshape(16, 16)
    x = torch.from_numpy(ramp.astype(np.uint8)).float() / 255
    out = _through(_films(ramp), aug_gamma=0.5)
    powers = out.log() / x.log()
    per_film = powers.mean(dim=(1, 2))
    assert (powers.std(dim=(1, 2)) < 1e-3).all()  # one gamma per film
    assert (per_film >= 1 / 1.5 - 1e-4).all() and (per_film <= 1.5 + 1e-4).all()
    assert per_film.max() / per_film.min() > 1.5  # films differ
    torch.testing.assert_close(_through(_films(ramp), aug_gamma=0.0), x.expand(64, -1, -1))


def test_contrast_scales_each_film_about_its_mean_within_the_range() -> None:
    films = _noise_films(lo=100, hi=156)
    x = films.float() / 255
    out = _through(films, aug_contrast=0.3)
    torch.testing.assert_close(out.mean(dim=(1, 2)), x.mean(dim=(1, 2)), atol=1e-5, rtol=0)
    factors = out.std(dim=(1, 2)) / x.std(dim=(1, 2))
    assert (factors >= 0.7 - 1e-4).all() and (factors <= 1.3 + 1e-4).all() and factors.max() - factors.min() > 0.3


def test_sharpness_blurs_some_films_and_sharpens_others() -> None:
    films = _noise_films(lo=112, hi=144)
    change = _detail(_through(films, aug_sharpness=1.0)) / _detail(films.float() / 255)
    assert (change < 0.8).sum() > 8 and (change > 1.2).sum() > 8
    assert (change > 0.3).all() and (change < 2.2).all()  # factors within [0, 2] of the 3 x 3 smoothed film


def test_noise_hits_half_the_films_with_the_standard_deviation_given() -> None:
    out = _through(_films(np.full((32, 32), 128)), aug_noise=0.05)
    std = out.std(dim=(1, 2))
    noisy = std > 0
    assert 16 <= noisy.sum() <= 48
    assert (out[~noisy] == torch.tensor(128.0) / 255).all()
    assert ((std[noisy] - 0.05).abs() < 0.01).all()


def test_resolution_loss_smooths_half_the_films_and_leaves_the_others() -> None:
    films = _noise_films()
    out = _through(films, aug_lowres=0.5)
    changed = (out != films.float() / 255).flatten(1).any(dim=1)
    assert 16 <= changed.sum() <= 48
    assert (_detail(out[changed]) < 0.9 * _detail(films[changed].float() / 255)).all()
    torch.testing.assert_close(out.mean(dim=(1, 2)), films.float().mean(dim=(1, 2)) / 255, atol=3e-3, rtol=0)


def test_rotation_turns_each_film_by_its_own_angle() -> None:
    out = _through(_films(np.full((33, 33), 255)), aug_rotation=30.0)
    assert (out[:, 16, 16] > 0.999).all()  # the centre stays
    dark = (out < 0.5).float().mean(dim=(1, 2))  # corners the rotation brings in: 0.155 of the film at 30 degrees
    assert (dark > 0).sum() > 40 and dark.max() < 0.16 and dark.max() - dark.min() > 0.1
    assert (_through(_films(np.full((33, 33), 255)), aug_rotation=0.0) == 1).all()


def test_crop_zooms_into_at_most_the_area_given() -> None:
    ramp = np.tile(np.linspace(0, 255, 32), (32, 1))
    out = _through(_films(ramp), aug_crop=0.4)
    spans = out[:, 16].max(dim=1).values - out[:, 16].min(dim=1).values  # a row: the share of the width kept
    assert (spans <= 1 + 1e-4).all() and (spans >= (1 - 0.4) ** 0.5 - 0.05).all()
    assert (spans < 0.9).sum() > 16


@pytest.mark.parametrize("train", [True, False])
def test_contrast_normalisation_stretches_a_flat_film_in_training_and_evaluation(train: bool) -> None:
    films = _noise_films(n=4, size=128, lo=100, hi=140)  # CLAHE's tiles of 16 x 16 px: its limit of 2 applies
    plain = _through(films, train=train)
    equalised = _through(films, train=train, contrast_norm="equalize")
    clahe = _through(films, train=train, contrast_norm="clahe")
    assert torch.equal(plain, films.float() / 255)
    assert equalised.amin() < 0.05 and equalised.amax() > 0.95  # a flat film uses the whole range
    assert (clahe.std(dim=(1, 2)) > 1.3 * plain.std(dim=(1, 2))).all() and not torch.allclose(clahe, equalised)


def test_contrast_normalisation_comes_after_the_acquisition_family() -> None:
    """Equalisation undoes any monotone change of the grey levels: after a random gamma the model sees (almost) the
    film it sees at evaluation; the other order would hand it the gamma's change."""
    films = _noise_films(n=16, lo=40, hi=220)
    trained = _through(films, aug_gamma=0.5, contrast_norm="equalize")
    evaluated = _through(films, train=False, contrast_norm="equalize")
    assert (trained - evaluated).abs().mean() < 0.01
    assert (_through(films, aug_gamma=0.5) - films.float() / 255).abs().mean() > 0.03
