"""The ensemble of the final model: K members of the best config, combined by mean probability, with test-time
mirroring only if the films that choose the threshold prefer it, then calibrated and thresholded by cxr.evaluation. The members are either
trained with new seeds on train (those films are val) or one per patient fold of the pool (train + val), each scoring
the fold it never saw (those films are the out-of-fold predictions, about 5x val)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cxr.augment import mirror, mirror_mean
from cxr.config import TrainConfig
from cxr.dataset import CxrData
from cxr.engine import EpochCallback, fit, predict
from cxr.calibration import apply_temperature
from cxr.evaluation import calibrated, evaluate
from cxr.intervals import N_BOOT
from cxr.metrics import compute_metrics, threshold_for_recall
from cxr.models import create_model
from cxr.package import FinalModel
from cxr.robustness import robustness_of_scores, shifted_probabilities
from cxr.shift import ROBUSTNESS_BANK, Perturbation

_SEED_STREAM = 0xF1A1  # tags the member seeds' stream, so they never follow the run seed's own sequence


@dataclass
class Member:
    seed: int
    best_epoch: int
    state: dict = field(repr=False)  # the best epoch's weights (CPU tensors)
    history: list[dict]
    probs: dict[str, np.ndarray]  # "<split>" plain and "<split>_mirrored" probabilities: val (or oof) and test
    fold: int | None = None  # the pool fold this member never saw (None: a seed member)


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
                 on_epoch_end: EpochCallback | None = None, fold: int | None = None,
                 bank: tuple[Perturbation, ...] = ()) -> Member:
    """A seed member (data's own splits), or fold member `fold` (data's splits from cxr.splits.fold_roles: it
    scores its "oof" rows, never trained on nor used to pick its epoch). With a bank it also scores those films under
    each perturbation ("<split>@<perturbation>" and its mirrored key; assess_robustness): here, on the member's own
    device, rather than on the driver."""
    result = fit(config, data, on_epoch_end, backbone_state=backbone_state)
    scoring = dict(image_size=config.image_size, contrast_norm=config.contrast_norm, precision=config.precision)
    probs = {}
    for split in ("val" if fold is None else "oof", "test"):
        images = data.images[data.indices(split)]
        for name, films in ((split, images), (f"{split}_mirrored", mirror(images))):
            probs[name] = predict(result.model, films, **scoring)
        for perturbation in bank:  # mirrored too: whether the ensemble mirrors is chosen once every member is in
            key = f"{split}@{perturbation.name}"
            probs[key], probs[f"{key}_mirrored"] = shifted_probabilities(result.model, images, perturbation, scoring)
    return Member(config.seed, result.best_epoch, result.best_state, result.history, probs, fold)


def member_probs(member: Member, split: str, tta: bool) -> np.ndarray:
    return mirror_mean(member.probs[split], member.probs[f"{split}_mirrored"]) if tta else member.probs[split]


def fit_columns(members: list[Member], data: CxrData, folds: np.ndarray | None, tta: bool,
                shifted: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(rows that choose the threshold, (K, rows) member probabilities on it): val for seed members; for fold members the pool,
    each row scored by the one member that held its fold out (NaN for the others). shifted: "@<perturbation>" for the
    films under it."""
    rows = _chosen_rows(data, folds)
    if folds is None:
        return rows, np.stack([member_probs(m, "val" + shifted, tta) for m in members])
    columns = np.full((len(members), len(rows)), np.nan)
    for i, m in enumerate(members):
        columns[i, folds[rows] == m.fold] = member_probs(m, "oof" + shifted, tta)  # both in manifest order
    return rows, columns


def scored_columns(members: list[Member], data: CxrData, folds: np.ndarray | None, tta: bool,
                   shifted: str = "") -> tuple[np.ndarray, np.ndarray, int]:
    """(manifest rows, (K, rows) member probabilities, how many rows choose the threshold): those films first, then
    test's, the row order of assemble's predictions (and so of the robustness step's). shifted: as fit_columns."""
    fit_rows, fit = fit_columns(members, data, folds, tta, shifted)
    test = np.stack([member_probs(m, "test" + shifted, tta) for m in members])
    return np.concatenate([fit_rows, data.indices("test")]), np.concatenate([fit, test], axis=1), len(fit_rows)


def _chosen_rows(data: CxrData, folds: np.ndarray | None) -> np.ndarray:
    """The manifest rows of the films that choose the threshold: val, or the pool (every row with a fold)."""
    return data.indices("val") if folds is None else np.flatnonzero(folds >= 0)


def _member_columns(k: int) -> list[str]:
    return [f"prob_member_{i}" for i in range(k)]


def _chosen_on(folds: np.ndarray | None) -> str:
    return "val" if folds is None else "oof"


def choose_tta(members: list[Member], data: CxrData, folds: np.ndarray | None = None) -> dict:
    """Mirroring is used only if it raises the ensemble's AUROC on the films that choose the threshold (ties keep the cheaper plain pass)."""
    rows, plain = fit_columns(members, data, folds, tta=False)
    _, mirrored = fit_columns(members, data, folds, tta=True)
    labels = data.labels[rows]
    auroc_plain = compute_metrics(labels, np.nanmean(plain, axis=0))["auroc"]
    auroc_tta = compute_metrics(labels, np.nanmean(mirrored, axis=0))["auroc"]
    return {"used": bool(auroc_tta > auroc_plain), "rule": f"used if it raises the ensemble's {_chosen_on(folds)} AUROC",
            "chosen_auroc_plain": auroc_plain, "chosen_auroc_tta": auroc_tta}


def assemble(config: TrainConfig, members: list[Member], data: CxrData, *, folds: np.ndarray | None = None,
             recall_confidence: float | None = None, rule: str | None = None, n_boot: int = N_BOOT,
             seed: int = 0) -> tuple[FinalModel, dict, pd.DataFrame, pd.DataFrame]:
    """(the shippable model, metrics.json (all but its robustness: assess_robustness), predictions of the threshold's
    films and test rows, every member's history). Reads no pixel: the members' scores are given."""
    chosen_on = _chosen_on(folds)
    tta = choose_tta(members, data, folds)
    rows, columns, n_chosen = scored_columns(members, data, folds, tta["used"])
    predictions = data.manifest.iloc[rows][["path", "patient", "split", "label"]].reset_index(drop=True)
    predictions["split"] = [chosen_on] * n_chosen + ["test"] * (len(rows) - n_chosen)
    if folds is not None:
        predictions["fold"] = folds[rows]
    member_columns = _member_columns(len(members))
    for i, column in enumerate(member_columns):
        predictions[column] = columns[i]
    predictions["probability_raw"] = predictions[member_columns].mean(axis=1)  # skips NaN: one member out of fold
    metrics = evaluate(predictions, target_recall=config.target_recall, recall_confidence=recall_confidence,
                       rule=rule, n_boot=n_boot, seed=seed, manifest=data.manifest, chosen_on=chosen_on)
    predictions["probability"] = calibrated(predictions, metrics)
    predictions["prediction"] = (predictions["probability"] >= metrics["threshold"]).astype(int)
    metrics["members"] = [{"seed": m.seed, "best_epoch": m.best_epoch, "fold": m.fold,
                           **_own_threshold(predictions, c, config.target_recall, chosen_on)}
                          for m, c in zip(members, member_columns)]
    metrics["ensemble"] = _own_threshold(predictions, "probability_raw", config.target_recall, chosen_on)
    if folds is not None:
        metrics["folds"] = fold_summary(predictions, metrics, member_columns)
    metrics.update(tta=tta, n_members=len(members), final_epochs=config.epochs,
                   final_kind="seeds" if folds is None else "folds")
    models = [_model(config, m) for m in members]
    model = FinalModel(config, models, [m.seed for m in members], metrics["threshold"], metrics["temperature"], tta["used"],
                       info={"threshold_rule": metrics["threshold_rule"], "target_recall": config.target_recall,
                             "final_kind": metrics["final_kind"], "threshold_chosen_on": chosen_on,
                             "training_precision": training_precision(members)})
    history = pd.concat([pd.DataFrame(m.history).assign(member=i, seed=m.seed, fold=m.fold) for i, m in enumerate(members)],
                        ignore_index=True)
    return model, metrics, predictions, history


def training_precision(members: list[Member]) -> str:
    """The precision the members trained in ("bf16", ...; members on GPUs of two kinds under "auto": both, joined)."""
    # members a driver saved before the engine recorded it have no such column
    used = {m.history[-1].get("training_precision", "unknown") for m in members}
    return ", ".join(sorted(used))


def assess_robustness(members: list[Member], data: CxrData, predictions: pd.DataFrame, metrics: dict,
                      folds: np.ndarray | None = None, bank: tuple[Perturbation, ...] = ROBUSTNESS_BANK) -> dict:
    """metrics.json's "robustness": the ensemble as assembled (its mirroring, temperature, threshold) on the rows of
    assemble's predictions under every perturbation of bank, from the scores the members computed where they trained
    (train_member's bank); reads no pixel."""
    def shifted(perturbation: Perturbation) -> np.ndarray:
        _, columns, _ = scored_columns(members, data, folds, metrics["tta"]["used"], f"@{perturbation.name}")
        return np.nanmean(columns, axis=0)  # NaN: a fold member outside its fold

    return robustness_of_scores(shifted, predictions, metrics, bank)


def fold_summary(predictions: pd.DataFrame, metrics: dict, member_columns: list[str]) -> dict:
    """Per fold, its member's scores on the films it never saw at the ensemble's threshold, and their spread across
    folds; on test, each single member at that threshold against the mean of all (what averaging does to recall)."""
    threshold, temperature = metrics["threshold"], metrics["temperature"]
    oof, test = predictions[predictions["split"] == "oof"], predictions[predictions["split"] == "test"]
    per_fold = []
    for fold, rows in oof.groupby("fold"):
        m = compute_metrics(rows["label"], rows["probability"], threshold)
        per_fold.append({"fold": int(fold), "images": int(len(rows)), "patients": int(rows["patient"].nunique()),
                         **{k: m[k] for k in ("auroc", "recall", "specificity")}})
    spread = {k: {"mean": float(np.nanmean(v)), "sd": float(np.nanstd(v, ddof=1)) if len(v) > 1 else float("nan"),
                  "min": float(np.nanmin(v)), "max": float(np.nanmax(v))}
              for k, v in ((k, [f[k] for f in per_fold]) for k in ("auroc", "recall", "specificity"))}
    single = None
    if len(test):
        single = [{k: compute_metrics(test["label"], apply_temperature(test[c], temperature), threshold)[k]
                   for k in ("auroc", "recall", "specificity")} for c in member_columns]
    return {"per_fold": per_fold, "spread": spread, "test_single_members": single}


def _own_threshold(predictions: pd.DataFrame, column: str, target_recall: float, chosen_on: str = "val") -> dict:
    """Metrics of one probability column on the films that choose its threshold and on test, at the threshold those
    films pick for it (uncalibrated); a fold member's are its own fold."""
    chosen = predictions[(predictions["split"] == chosen_on) & predictions[column].notna()]
    test = predictions[predictions["split"] == "test"]
    threshold = threshold_for_recall(chosen["label"], chosen[column], target_recall)
    out = {"chosen": compute_metrics(chosen["label"], chosen[column], threshold, target_recall), "test": None}
    if len(test):
        out["test"] = compute_metrics(test["label"], test[column], threshold)
    return out


def _model(config: TrainConfig, member: Member):
    model = create_model(config.backbone, pretrained=False, dropout=config.dropout, unfrozen_blocks=config.unfrozen_blocks)
    model.load_state_dict(member.state)
    return model.eval()
