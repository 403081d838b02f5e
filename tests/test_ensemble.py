"""cxr.ensemble: member seeds, the mirroring choice and the assembled ensemble (no training: members are made up)."""

from __future__ import annotations

import numpy as np

from cxr.config import TrainConfig
from cxr.dataset import CxrData
from cxr.ensemble import Member, assemble, choose_tta, member_seeds
from cxr.models import create_model


def test_member_seeds_are_distinct_derived_and_never_a_trial_seed():
    seeds = member_seeds(0, 5, taken={0})
    assert len(set(seeds)) == 5 and 0 not in seeds
    assert member_seeds(0, 5, taken={0}) == seeds and member_seeds(1, 5, taken={0}) != seeds
    assert not set(member_seeds(0, 3, taken=set(seeds[:2]))) & set(seeds[:2])


def _members(data: CxrData, config: TrainConfig, k: int = 3) -> list[Member]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(k):
        state = {n: t.clone() for n, t in create_model(config.backbone, pretrained=False).state_dict().items()}
        probs = {}
        for split in ("val", "test"):
            labels = data.labels[data.indices(split)]
            probs[split] = np.clip(0.3 + 0.4 * labels + rng.normal(0, 0.15, len(labels)), 0.01, 0.99)
            probs[f"{split}_mirrored"] = np.clip(probs[split] + rng.normal(0, 0.05, len(labels)), 0.01, 0.99)
        out.append(Member(100 + i, 2, state, [{"epoch": 1}, {"epoch": 2}], probs))
    return out


def test_assemble_follows_the_contract(synthetic_data: CxrData):
    config = TrainConfig(backbone="test_efficientnet", pretrained=False, image_size=64, target_recall=0.95)
    members = _members(synthetic_data, config)
    model, metrics, predictions, history = assemble(config, members, synthetic_data, n_boot=200)
    assert len(predictions) == len(synthetic_data.indices("val")) + len(synthetic_data.indices("test"))
    for column in ["path", "patient", "split", "label", "prob_member_0", "prob_member_2", "probability_raw", "probability", "prediction"]:
        assert column in predictions
    assert np.allclose(predictions["probability_raw"], predictions[[f"prob_member_{i}" for i in range(3)]].mean(axis=1))
    assert metrics["k"] == 3 and [m["seed"] for m in metrics["members"]] == [100, 101, 102] == model.seeds
    assert metrics["tta"]["used"] == model.tta and "ensemble" in metrics
    assert sorted(history["member"].unique()) == [0, 1, 2] and model.threshold == metrics["threshold"]


def test_mirroring_is_chosen_only_when_val_gains():
    labels = np.array([0, 0, 1, 1])
    better = Member(1, 1, {}, [], {"val": np.array([0.6, 0.2, 0.5, 0.9]), "val_mirrored": np.array([0.2, 0.2, 0.9, 0.9])})
    worse = Member(1, 1, {}, [], {"val": np.array([0.1, 0.2, 0.8, 0.9]), "val_mirrored": np.array([0.9, 0.9, 0.1, 0.1])})
    assert choose_tta([better], labels)["used"] and not choose_tta([worse], labels)["used"]


def test_one_member_is_allowed(synthetic_data: CxrData):
    config = TrainConfig(backbone="test_efficientnet", pretrained=False, image_size=64)
    model, metrics, _, _ = assemble(config, _members(synthetic_data, config, 1), synthetic_data, n_boot=100)
    assert metrics["k"] == 1 and len(model.members) == 1
