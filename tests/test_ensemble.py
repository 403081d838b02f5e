"""cxr.ensemble: member seeds, the mirroring choice and the assembled ensemble (no training: members are made up)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cxr.config import TrainConfig
from cxr.dataset import CxrData
from cxr.ensemble import Member, assemble, assess_robustness, choose_tta, member_seeds, train_member
from cxr.final_metrics import to_json
from cxr.models import create_model
from cxr.robustness import SCORES
from cxr.shift import ROBUSTNESS_BANK, Perturbation


MIRRORED_SEEDS = (2, 3)  # untrained members whose ensemble prefers mirroring on the synthetic val


def test_member_seeds_are_distinct_derived_and_never_a_trial_seed():
    seeds = member_seeds(0, 5, taken={0})
    assert len(set(seeds)) == 5 and 0 not in seeds
    assert member_seeds(0, 5, taken={0}) == seeds and member_seeds(1, 5, taken={0}) != seeds
    assert not set(member_seeds(0, 3, taken=set(seeds[:2]))) & set(seeds[:2])


def test_assemble_follows_the_contract(assembled, synthetic_data: CxrData):
    model, metrics, predictions, history = assembled.model, assembled.metrics, assembled.predictions, assembled.history
    assert len(predictions) == len(synthetic_data.indices("val")) + len(synthetic_data.indices("test"))
    for column in ["path", "patient", "split", "label", "prob_member_0", "prob_member_2", "probability_raw", "probability", "prediction"]:
        assert column in predictions
    assert np.allclose(predictions["probability_raw"], predictions[[f"prob_member_{i}" for i in range(3)]].mean(axis=1))
    assert metrics["n_members"] == 3 and [m["seed"] for m in metrics["members"]] == [100, 101, 102] == model.seeds
    assert metrics["tta"]["used"] == model.tta and "ensemble" in metrics
    assert sorted(history["member"].unique()) == [0, 1, 2] and model.threshold == metrics["threshold"]
    assert len(metrics["robustness"]["perturbations"]) == len(ROBUSTNESS_BANK)
    assert to_json(metrics)["n_members"] == 3  # metrics.json's schema


def test_model_json_records_the_precision_the_members_trained_in(synthetic_data: CxrData, tmp_path, made_up_members):
    from cxr.package import load_model

    config = TrainConfig(backbone="test_efficientnet", pretrained=False, image_size=16)
    members = made_up_members(synthetic_data, config, k=2)
    for member in members:
        member.history[-1]["training_precision"] = "bf16"  # what cxr.engine writes into every epoch's metrics
    model = assemble(config, members, synthetic_data, n_boot=20)[0]
    assert load_model(model.save(tmp_path / "final")).info["training_precision"] == "bf16"
    members[1].history[-1]["training_precision"] = "fp16"  # a member that ran on an older GPU under "auto"
    assert assemble(config, members, synthetic_data, n_boot=20)[0].info["training_precision"] == "bf16, fp16"


def test_a_member_scores_its_films_in_the_config_s_precision(synthetic_data: CxrData, monkeypatch):
    """The final stage's scoring follows the config key precision, as training does (bf16 autocast is real on the
    CPU); training itself is cxr.engine's, left out here."""
    import torch

    import cxr.ensemble
    from cxr.engine import FitResult

    config = TrainConfig(backbone="test_efficientnet", pretrained=False, image_size=32)
    model = create_model(config.backbone, pretrained=False).eval()
    torch.nn.init.constant_(model.backbone.get_classifier().bias, 3.0)  # confident logits: bf16's rounding shows
    monkeypatch.setattr(cxr.ensemble, "fit", lambda *args, **kwargs: FitResult(model, [{}], 1, {}, model.state_dict()))
    probs = {p: train_member(config.replace(precision=p), synthetic_data).probs for p in ("fp32", "bf16")}
    for split in ("val", "val_mirrored", "test", "test_mirrored"):
        assert np.abs(probs["bf16"][split] - probs["fp32"][split]).max() > 1e-4, split


def test_mirroring_is_chosen_only_when_val_gains():
    labels = np.array([0, 0, 1, 1])
    data = CxrData(np.zeros((4, 2, 2), np.uint8), pd.DataFrame({"path": list("abcd"), "label": labels,
                                                                 "patient": list("abcd"), "split": "val"}))
    better = Member(1, 1, {}, [], {"val": np.array([0.6, 0.2, 0.5, 0.9]), "val_mirrored": np.array([0.2, 0.2, 0.9, 0.9])})
    worse = Member(1, 1, {}, [], {"val": np.array([0.1, 0.2, 0.8, 0.9]), "val_mirrored": np.array([0.9, 0.9, 0.1, 0.1])})
    assert choose_tta([better], data)["used"] and not choose_tta([worse], data)["used"]


def test_one_member_is_allowed(synthetic_data: CxrData, made_up_members):
    config = TrainConfig(backbone="test_efficientnet", pretrained=False, image_size=16)
    model, metrics, _, _ = assemble(config, made_up_members(synthetic_data, config, 1), synthetic_data, n_boot=100)
    assert metrics["n_members"] == 1 and len(model.members) == 1


def _fold_members(data: CxrData, config: TrainConfig, folds: np.ndarray) -> list[Member]:
    """One made-up member per fold: it scores its own fold (member k's scores are offset by k / 100, so whose score
    a row got can be read back) and every test film."""
    state = {n: t.clone() for n, t in create_model(config.backbone, pretrained=False).state_dict().items()}
    out = []
    for k in range(folds.max() + 1):
        probs = {}
        for split, rows in (("oof", np.flatnonzero(folds == k)), ("test", data.indices("test"))):
            probs[split] = np.clip(0.3 + 0.4 * data.labels[rows], 0, 1) - 0.1 * (np.arange(len(rows)) % 3) / 3 + k / 100
            probs[f"{split}_mirrored"] = probs[split]
            for p in ROBUSTNESS_BANK:  # under shift, every score a little lower
                probs[f"{split}@{p.name}"] = probs[f"{split}@{p.name}_mirrored"] = probs[split] * 0.9
        out.append(Member(200 + k, 1, state, [{"epoch": 1}], probs, fold=k))
    return out


def test_fold_ensemble_scores_each_pool_film_by_the_member_that_held_it_out(synthetic_data: CxrData):
    from cxr.splits import patient_folds

    config = TrainConfig(backbone="test_efficientnet", pretrained=False, image_size=16, target_recall=0.95)
    folds = patient_folds(synthetic_data.manifest, 3, seed=0)
    members = _fold_members(synthetic_data, config, folds)
    model, metrics, predictions, history = assemble(config, members, synthetic_data, folds=folds, n_boot=200)
    metrics["robustness"] = assess_robustness(members, synthetic_data, predictions, metrics, folds)
    oof = predictions[predictions["split"] == "oof"]
    assert len(oof) == (folds >= 0).sum() and set(predictions["split"]) == {"oof", "test"}
    columns = [f"prob_member_{k}" for k in range(3)]
    assert (oof[columns].notna().sum(axis=1) == 1).all()  # exactly one member scores each pool film: its fold's
    assert (oof[columns].notna().to_numpy().argmax(axis=1) == oof["fold"].to_numpy()).all()
    test = predictions[predictions["split"] == "test"]
    assert np.allclose(test["probability_raw"], test[columns].mean(axis=1)) and test[columns].notna().all().all()
    assert metrics["threshold_chosen_on"] == "oof" and metrics["final_kind"] == "folds" and "oof" in metrics and "val" not in metrics
    assert [f["fold"] for f in metrics["folds"]["per_fold"]] == [0, 1, 2]
    assert sum(f["images"] for f in metrics["folds"]["per_fold"]) == len(oof)
    assert len(metrics["folds"]["test_single_members"]) == 3 and model.info["final_kind"] == "folds"
    assert sorted(history["fold"].unique()) == [0, 1, 2]
    assert to_json(metrics | {"final_stage_s": 1.0, "members_s": 0.8})["final_kind"] == "folds"  # metrics.json's schema


@pytest.mark.parametrize("kind", ["seeds", "folds"])
def test_under_a_perturbation_that_changes_no_film_the_robustness_is_the_shipped_evaluation(synthetic_data, kind,
                                                                                          monkeypatch):
    """Gamma 1 changes no film: each member scores the films that choose the threshold (val, or its own pool fold)
    and test under the bank where it trains (train_member, its training patched out), and assess_robustness
    combines them as the shipped model does (members, mirroring, temperature, threshold, patient resamples, contrast
    normalisation), so every number equals the evaluation's."""
    import cxr.ensemble
    from cxr.engine import FitResult
    from cxr.splits import patient_folds

    config = TrainConfig(backbone="test_efficientnet", pretrained=False, image_size=16, target_recall=0.9,
                         contrast_norm="equalize")
    folds = patient_folds(synthetic_data.manifest, 2, seed=0) if kind == "folds" else None
    manifest, members = synthetic_data.manifest, []
    for k, seed in enumerate(MIRRORED_SEEDS):
        torch.manual_seed(seed)
        model = create_model(config.backbone, pretrained=False).eval()
        monkeypatch.setattr(cxr.ensemble, "fit", lambda *args, m=model, **kwargs: FitResult(m, [{}], 1, {}, m.state_dict()))
        data = synthetic_data if folds is None else CxrData(synthetic_data.images, manifest.assign(
            split=np.where(folds == k, "oof", np.where(manifest["split"] == "test", "test", "train"))))
        members.append(train_member(config.replace(seed=seed), data, fold=None if folds is None else k,
                                    bank=(Perturbation("gamma", 1.0),)))
    model, metrics, predictions, _ = assemble(config, members, synthetic_data, folds=folds, n_boot=100)
    robustness = assess_robustness(members, synthetic_data, predictions, metrics, folds, bank=(Perturbation("gamma", 1.0),))
    assert metrics["tta"]["used"] or kind == "folds"  # these seeds' members mirror on val: so must the robustness step
    (entry,) = robustness["perturbations"]
    for key, split in (("chosen", metrics["threshold_chosen_on"]), ("test", "test")):
        for name in SCORES:
            assert entry[key][name] == metrics[split][name], (split, name)
            assert entry[key][f"{name}_ci95"] == metrics[split][f"{name}_ci95"], (split, name)


def test_what_members_score_under_shift_where_they_train_is_what_the_shipped_model_scores_here(synthetic_data,
                                                                                            monkeypatch):
    """assess_robustness, from the scores each member computed under the bank where it trained, equals
    cxr.robustness.robustness running the shipped model on the perturbed films here: the same films, members,
    mirroring, contrast normalisation and rows (families without noise, whose seed is a film's position)."""
    import cxr.ensemble
    from cxr.engine import FitResult
    from cxr.robustness import robustness

    bank = (Perturbation("gamma", 2.0, 2), Perturbation("blur", 0.015, 2))
    config = TrainConfig(backbone="test_efficientnet", pretrained=False, image_size=16, target_recall=0.9,
                         contrast_norm="equalize")
    members = []
    for seed in MIRRORED_SEEDS:
        torch.manual_seed(seed)
        model = create_model(config.backbone, pretrained=False).eval()
        monkeypatch.setattr(cxr.ensemble, "fit", lambda *args, m=model, **kwargs: FitResult(m, [{}], 1, {}, m.state_dict()))
        members.append(train_member(config.replace(seed=seed), synthetic_data, bank=bank))
    model, metrics, predictions, _ = assemble(config, members, synthetic_data, n_boot=100)
    rows = np.concatenate([synthetic_data.indices("val"), synthetic_data.indices("test")])
    here = robustness(model.members, synthetic_data.images[rows], predictions, [f"prob_member_{i}" for i in range(2)],
                      metrics, tta=model.tta, image_size=16, contrast_norm="equalize", bank=bank)
    there = assess_robustness(members, synthetic_data, predictions, metrics, bank=bank)
    for ours, theirs in zip(there["perturbations"], here["perturbations"]):
        for split in ("chosen", "test"):
            assert ours[split].keys() == theirs[split].keys()
            for name, value in ours[split].items():
                assert value == pytest.approx(theirs[split][name], abs=1e-9), (ours["family"], split, name)
    assert there["perturbations"][0]["test"]["auroc"] != metrics["test"]["auroc"]  # the bank changes what is scored
