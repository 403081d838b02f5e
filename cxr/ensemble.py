"""The ensemble of the final model: K members of the best config trained with new seeds, combined by mean probability, with
test-time mirroring only if val prefers it, then calibrated and thresholded by cxr.evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cxr.augment import mirror, mirror_mean
from cxr.config import TrainConfig
from cxr.dataset import CxrData
from cxr.engine import EpochCallback, fit, predict
from cxr.evaluation import calibrated, evaluate
from cxr.intervals import N_BOOT
from cxr.metrics import compute_metrics, threshold_for_recall
from cxr.models import create_model
from cxr.package import FinalModel

SPLITS = ("val", "test")
_SEED_STREAM = 0xF1A1  # tags the member seeds' stream, so they never follow the run seed's own sequence


@dataclass
class Member:
    seed: int
    best_epoch: int
    state: dict = field(repr=False)  # the best epoch's weights (CPU tensors)
    history: list[dict]
    probs: dict[str, np.ndarray]  # "<split>" plain and "<split>_mirrored" probabilities for val and test


def member_seeds(base_seed: int, k: int, taken: set[int]) -> list[int]:
    """k distinct seeds derived from base_seed, none of them a seed a search trial trained with."""
    seeds: list[int] = []
    for word in np.random.SeedSequence([base_seed, _SEED_STREAM]).generate_state(4 * k + len(taken) + 4):
        seed = int(word) % 2**31
        if seed not in taken and seed not in seeds:
            seeds.append(seed)
        if len(seeds) == k:
            return seeds
    raise RuntimeError("could not derive enough member seeds")  # 2**31 values: practically unreachable


def train_member(config: TrainConfig, data: CxrData, *, backbone_state: dict | None = None,
                 on_epoch_end: EpochCallback | None = None) -> Member:
    result = fit(config, data, on_epoch_end, backbone_state=backbone_state)
    probs = {}
    for split in SPLITS:
        images = data.images[data.indices(split)]
        probs[split] = predict(result.model, images, image_size=config.image_size)
        probs[f"{split}_mirrored"] = predict(result.model, mirror(images), image_size=config.image_size)
    return Member(config.seed, result.best_epoch, result.best_state, result.history, probs)


def choose_tta(members: list[Member], labels: np.ndarray) -> dict:
    """Mirroring is used only if it raises the ensemble's val AUROC (ties keep the cheaper plain pass)."""
    plain = np.mean([member_probs(m, "val", tta=False) for m in members], axis=0)
    mirrored = np.mean([member_probs(m, "val", tta=True) for m in members], axis=0)
    auroc_plain = compute_metrics(labels, plain)["auroc"]
    auroc_tta = compute_metrics(labels, mirrored)["auroc"]
    return {"used": bool(auroc_tta > auroc_plain), "rule": "used if it raises the ensemble's val AUROC",
            "val_auroc_plain": auroc_plain, "val_auroc_tta": auroc_tta}


def member_probs(member: Member, split: str, tta: bool) -> np.ndarray:
    return mirror_mean(member.probs[split], member.probs[f"{split}_mirrored"]) if tta else member.probs[split]


def assemble(config: TrainConfig, members: list[Member], data: CxrData, *, recall_confidence: float | None = None,
             n_boot: int = N_BOOT, seed: int = 0) -> tuple[FinalModel, dict, pd.DataFrame, pd.DataFrame]:
    """(the shippable model, metrics.json, predictions of val and test rows, every member's history)."""
    rows = np.concatenate([data.indices(s) for s in SPLITS])
    predictions = data.manifest.iloc[rows][["path", "patient", "split", "label"]].reset_index(drop=True)
    tta = choose_tta(members, data.labels[data.indices("val")])
    for i, m in enumerate(members):
        predictions[f"prob_member_{i}"] = np.concatenate([member_probs(m, s, tta["used"]) for s in SPLITS])
    member_columns = [f"prob_member_{i}" for i in range(len(members))]
    predictions["probability_raw"] = predictions[member_columns].mean(axis=1)
    metrics = evaluate(predictions, target_recall=config.target_recall, recall_confidence=recall_confidence,
                       n_boot=n_boot, seed=seed, manifest=data.manifest)
    predictions["probability"] = calibrated(predictions, metrics)
    predictions["prediction"] = (predictions["probability"] >= metrics["threshold"]).astype(int)
    metrics["members"] = [{"seed": m.seed, "best_epoch": m.best_epoch, **_own_threshold(predictions, c, config.target_recall)}
                          for m, c in zip(members, member_columns)]
    metrics["ensemble"] = _own_threshold(predictions, "probability_raw", config.target_recall)
    metrics.update(tta=tta, k=len(members), final_epochs=config.epochs)
    models = [_model(config, m) for m in members]
    model = FinalModel(config, models, [m.seed for m in members], metrics["threshold"], metrics["temperature"], tta["used"],
                       info={"threshold_rule": metrics["threshold_rule"], "target_recall": config.target_recall})
    history = pd.concat([pd.DataFrame(m.history).assign(member=i, seed=m.seed) for i, m in enumerate(members)], ignore_index=True)
    return model, metrics, predictions, history


def _own_threshold(predictions: pd.DataFrame, column: str, target_recall: float) -> dict:
    """Val and test metrics of one probability column at the threshold val picks for it (uncalibrated)."""
    val, test = (predictions[predictions["split"] == s] for s in SPLITS)
    threshold = threshold_for_recall(val["label"], val[column], target_recall)
    out = {"val": compute_metrics(val["label"], val[column], threshold, target_recall), "test": None}
    if len(test):
        out["test"] = compute_metrics(test["label"], test[column], threshold)
    return out


def _model(config: TrainConfig, member: Member):
    model = create_model(config.backbone, pretrained=False, dropout=config.dropout, unfrozen_blocks=config.unfrozen_blocks)
    model.load_state_dict(member.state)
    return model.eval()
