"""cxr.shift: the two perturbation banks (disjoint, every family, each perturbation doing what its family says) and
the seeded, batch-independent dealing of val films round the selection bank."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr.shift import FAMILIES, ROBUSTNESS_BANK, SELECTION_BANK, Perturbation, everywhere, selection_shift

BANKS = {"selection": SELECTION_BANK, "robustness": ROBUSTNESS_BANK}


def _films(n: int = 6, side: int = 128) -> torch.Tensor:
    """(n, 1, side, side) in [0, 1]: a smooth gradient with a fine texture, different per film."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side] / side
    films = [0.2 + 0.5 * (a * x + (1 - a) * y) + 0.1 * ((np.indices((side, side)).sum(0) % 2) - 0.5) * b
             for a, b in rng.uniform(0.2, 0.8, (n, 2))]
    return torch.tensor(np.stack(films)[:, None], dtype=torch.float32).clamp(0, 1)


def _fine_detail(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between horizontal neighbours, per film."""
    return (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3))


def test_the_selection_and_robustness_banks_are_disjoint_and_cover_every_family():
    selection = {(p.family, p.magnitude) for p in SELECTION_BANK}
    robustness = {(p.family, p.magnitude) for p in ROBUSTNESS_BANK}
    assert not selection & robustness  # nothing is judged on what it was selected on
    assert {f for f, _ in selection} == {f for f, _ in robustness} == set(FAMILIES)
    for family in FAMILIES:  # the robustness bank: a mild and a strong perturbation of each family, in that order
        assert [p.strength for p in ROBUSTNESS_BANK if p.family == family] == [1, 2]


@pytest.mark.parametrize("bank", list(BANKS))
def test_each_perturbation_does_what_its_family_says(bank):
    x = _films()
    films = np.arange(len(x))
    for p in BANKS[bank]:
        y = everywhere(p, len(x))(x, films)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1, p.name
        if p.family == "gamma":  # above 1 darkens, below 1 brightens
            assert ((y.mean() < x.mean()) if p.magnitude > 1 else (y.mean() > x.mean())), p.name
        elif p.family == "contrast":  # around each film's mean: the spread scales, the mean stays
            assert ((y.std() < x.std()) if p.magnitude < 1 else (y.std() > x.std())), p.name
            assert y.mean().item() == pytest.approx(x.mean().item(), abs=0.02), p.name
        elif p.family == "noise":
            assert (y - x).std().item() == pytest.approx(p.magnitude, rel=0.2) and (_fine_detail(y) > _fine_detail(x)).all()
        else:  # blur and resolution loss take the fine detail away, the more the stronger
            assert (_fine_detail(y) < 0.8 * _fine_detail(x)).all(), p.name
    for family in ("blur", "resolution", "noise"):
        mild, strong = (everywhere(p, len(x))(x, films) for p in ROBUSTNESS_BANK if p.family == family)
        assert ((mild - x).abs().mean() < (strong - x).abs().mean()), family


def test_the_selection_shift_is_seeded_balanced_and_the_same_whatever_the_batches():
    scored = np.arange(10, 80, 2)  # val films among 100
    shift = selection_shift(100, scored)
    assert np.array_equal(shift.choice, selection_shift(100, scored).choice)  # the same films in every trial
    assert (shift.choice[np.setdiff1d(np.arange(100), scored)] == -1).all()
    shares = np.bincount(shift.choice[scored], minlength=len(SELECTION_BANK))
    assert shares.max() - shares.min() <= 1
    x = _films(len(scored))
    whole = shift(x, scored)
    halves = torch.cat([shift(x[:13], scored[:13]), shift(x[13:], scored[13:])])
    assert torch.equal(whole, halves) and torch.equal(whole, shift(x, scored))  # noise is the film's, not the batch's
    changed = (whole - x).abs().amax(dim=(1, 2, 3)) > 1e-3
    assert changed.all()  # every scored film is perturbed
    others = np.arange(5)  # films outside the scored set pass unchanged
    assert torch.equal(shift(x[:5], others), x[:5])


def test_a_perturbation_is_named_by_family_and_magnitude():
    assert Perturbation("blur", 0.02).name == "blur=0.02" and Perturbation("gamma", 2.0).name == "gamma=2"
