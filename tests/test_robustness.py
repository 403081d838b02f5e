"""cxr.robustness: the shipped model scored under every perturbation of the robustness bank, at the shipped
threshold, each film by the members that score it (models made by hand: a scorer of fine detail, so which
perturbations must cost it ranking is known)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxr.engine import predict
from cxr.evaluation import evaluate
from cxr.metrics import threshold_for_recall
from cxr.models import CxrNet
from cxr.robustness import SCORES, robustness
from cxr.shift import ROBUSTNESS_BANK, Perturbation

SIDE = 64


class _Detail(nn.Module):
    """Logit = sign x scale x (fine detail - 0.03): the mean absolute difference between horizontal neighbours of a
    film that reaches it in [0, 1] (identity normalisation)."""

    pretrained_cfg = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}

    def __init__(self, sign: float):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(60.0 * sign))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        detail = (x[:, :1, :, 1:] - x[:, :1, :, :-1]).abs().mean(dim=(1, 2, 3))
        return (self.scale * (detail - 0.03))[:, None]


def _films(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pneumonia films carry a fine texture three times as strong as normal ones, on smooth random backgrounds."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    y, x = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    checker = (np.indices((SIDE, SIDE)).sum(0) % 2) - 0.5
    films = [0.3 + 0.3 * (a * x + (1 - a) * y) + (0.12 if sick else 0.04) * checker * rng.uniform(0.9, 1.1)
             for a, sick in zip(rng.uniform(0, 1, n), labels)]
    return (np.clip(np.stack(films), 0, 1) * 255).round().astype(np.uint8), labels


def _case(fold_members: bool, signs: tuple[float, float] = (1.0, -1.0)):
    """Val and test films, a detail scorer and (signs) its inverse as members (their mean is about 0.5 for every film); with
    fold_members each val film is scored by the first member alone (its fold), else by both. The threshold reaches
    recall 0.95 on the clean val films' scores of the first member."""
    models = [CxrNet(_Detail(sign), []).eval() for sign in signs]
    (val, val_labels), (test, test_labels) = _films(40, 0), _films(30, 1)
    predictions = pd.DataFrame({"split": ["val"] * 40 + ["test"] * 30, "label": np.r_[val_labels, test_labels],
                                "patient": [f"p{i}" for i in range(70)]})
    predictions["prob_member_0"] = 0.5
    predictions["prob_member_1"] = np.where(fold_members & (predictions["split"] == "val"), np.nan, 0.5)
    clean = predict(models[0], val, contrast_norm="none")
    evaluation = {"threshold_chosen_on": "val", "temperature": 1.0, "n_boot": 100, "bootstrap_seed": 0,
                  "threshold": threshold_for_recall(val_labels, clean, 0.95)}
    return models, np.concatenate([val, test]), predictions, evaluation


def _scores(out: dict, name: str) -> dict:
    return next(e for e in out["perturbations"] if f"{e['family']}={e['magnitude']:g}" == name)


def test_every_perturbation_is_scored_on_its_perturbed_films_at_the_shipped_threshold():
    models, images, predictions, evaluation = _case(fold_members=True)
    out = robustness(models, images, predictions, ["prob_member_0", "prob_member_1"], evaluation, tta=False, contrast_norm="none",
                     image_size=SIDE)
    assert [(e["family"], e["magnitude"], e["strength"]) for e in out["perturbations"]] == [
        (p.family, p.magnitude, p.strength) for p in ROBUSTNESS_BANK]
    for entry in out["perturbations"]:
        for split in ("chosen", "test"):
            scores = entry[split]
            assert set(scores) == {"auroc", "auroc_ci95", "recall", "recall_ci95", "specificity", "specificity_ci95"}
            for name in ("auroc", "recall", "specificity"):
                low, high = scores[f"{name}_ci95"]
                assert low <= scores[name] <= high, (entry, split, name)
    # val: the detail scorer alone (its fold); contrast and gamma keep its ranking, blur and resolution loss take the
    # detail it ranks by away, and with it the recall the threshold was chosen for
    assert _scores(out, "contrast=0.8")["chosen"]["auroc"] == 1.0 and _scores(out, "gamma=1.25")["chosen"]["auroc"] == 1.0
    for name in ("blur=0.015", "resolution=0.3"):
        assert _scores(out, name)["chosen"]["auroc"] < 0.8 and _scores(out, name)["chosen"]["recall"] < 0.5, name
    # test: both members, whose scores cancel (every film about 0.5, far below the threshold): nothing is called
    assert all(e["test"]["recall"] == 0 and e["test"]["specificity"] == 1 for e in out["perturbations"])


def test_without_folds_every_member_scores_every_film():
    models, images, predictions, evaluation = _case(fold_members=False)
    out = robustness(models, images, predictions, ["prob_member_0", "prob_member_1"], evaluation, tta=False, contrast_norm="none",
                     image_size=SIDE)
    assert all(e["chosen"]["recall"] == 0 and e["chosen"]["specificity"] == 1 for e in out["perturbations"])


def test_films_a_perturbation_leaves_unchanged_score_as_the_evaluation_over_the_same_patient_resamples():
    """Gamma 1 changes no film: every score and interval is cxr.evaluation's (its temperature, threshold and patient
    resamples), on val and on test."""
    models, images, predictions, _ = _case(fold_members=False, signs=(1.0, 1.0))
    predictions["probability_raw"] = np.mean([predict(m, images, contrast_norm="none") for m in models], axis=0)
    predictions["path"] = [f"/{split}/{'person' if y else 'IM-'}{i}_bacteria.jpeg"
                           for i, (split, y) in enumerate(zip(predictions["split"], predictions["label"]))]
    evaluation = evaluate(predictions, target_recall=0.9, n_boot=200, seed=3)
    out = robustness(models, images, predictions, ["prob_member_0", "prob_member_1"], evaluation, tta=False, contrast_norm="none",
                     image_size=SIDE, bank=(Perturbation("gamma", 1.0),))
    (entry,) = out["perturbations"]
    for key, split in (("chosen", "val"), ("test", "test")):
        for name in SCORES:
            assert entry[key][name] == evaluation[split][name], (split, name)
            assert entry[key][f"{name}_ci95"] == evaluation[split][f"{name}_ci95"], (split, name)
