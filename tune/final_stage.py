"""Driver-side final stage: K members of the best config as parallel Ray tasks (a trial's resources each), with new
seeds on train (seeds) or one per patient fold of train + val (folds), each kept as it finishes so --resume trains
only the missing ones; then the ensemble is assembled, calibrated, evaluated once on test and written to final/ (the
shippable package, metrics, predictions, the fold assignment, model card)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import ray
from safetensors.torch import load_file, save_file

from cxr.cli import DEFAULT_THRESHOLD_RULE
from cxr.config import TrainConfig
from cxr.dataset import CxrData
from cxr.ensemble import Member, assemble, assess_robustness, member_seeds
from cxr.shift import ROBUSTNESS_BANK
from cxr.final_metrics import write_metrics
from cxr.model_card import render_model_card
from cxr.package import FinalModel
from cxr.splits import fold_roles, patient_folds
from cxr.jsonio import folder_in_place, read_json, write_json
from tune.plan import add_to_plan
from tune.results import ExperimentPaths, write_table
from tune.search import SearchSettings
from tune.trainable import member_task


@dataclass(frozen=True)
class FinalSettings:
    n_members: int = 3  # K ensemble members (folds: K folds)
    epochs: int | None = None  # None: the best config's own epochs
    recall_confidence: float | None = None  # of the exact and bootstrap rules; None: cxr.evaluation's default
    seed: int = 0
    kind: str = "seeds"  # or "folds" (tune.settings.FINAL_KINDS)
    inner_fraction: float = 0.2  # folds: share of a member's training patients held out to choose its epoch
    threshold_rule: str = DEFAULT_THRESHOLD_RULE
    robustness: bool = True  # score the model under cxr.shift's robustness bank (--no-robustness: skip)


def run_final_stage(best: dict, trials: pd.DataFrame, data: CxrData, data_ref, weight_refs: dict,
                    search: SearchSettings, final: FinalSettings, paths: ExperimentPaths) -> dict:
    started = time.monotonic()
    config = TrainConfig.from_dict(best["config"])
    if final.epochs:
        config = config.replace(epochs=final.epochs)
    taken = {int(s) for s in trials["seed"].dropna()} if "seed" in trials else set()
    seeds = member_seeds(final.seed, final.n_members, taken)
    folds = patient_folds(data.manifest, final.n_members, final.seed) if final.kind == "folds" else None
    fold_of = dict(zip(seeds, range(len(seeds)))) if folds is not None else dict.fromkeys(seeds)
    add_to_plan(paths, final={"kind": final.kind, "n_members": len(seeds), "seeds": seeds, "epochs": config.epochs,
                              "trial_id": best["trial_id"], "threshold_rule": final.threshold_rule,
                              "recall_confidence": final.recall_confidence})
    members = _load_members(paths.member_checkpoints, seeds, fold_of)
    pending = [s for s in seeds if s not in members]
    what = f"{len(seeds)} member(s)" if folds is None else f"{len(seeds)} patient folds of train + val, one member each,"
    print(f"\nfinal stage: {what} of trial {best['trial_id']}'s config, {config.epochs} epochs, seeds "
          f"{seeds}" + (f" ({len(seeds) - len(pending)} already trained)" if len(pending) < len(seeds) else ""), flush=True)
    task = member_task.options(num_cpus=search.cpus_per_trial, num_gpus=search.gpus_per_trial)
    roles = {} if folds is None else {k: fold_roles(data.manifest, folds, k, final.inner_fraction, final.seed)
                                      for k in range(final.n_members)}  # what each member is sent, and what is saved
    bank = ROBUSTNESS_BANK if final.robustness else ()  # scored by each member where it trains
    running = {task.remote(config.replace(seed=s), data_ref, weight_refs, fold_of[s], roles.get(fold_of[s]), bank): s
               for s in pending}
    while running:
        (done,), _ = ray.wait(list(running), num_returns=1)
        member = ray.get(done)
        _save_member(paths.member_checkpoints, member)
        members[member.seed] = member
        del running[done]
    members_s = time.monotonic() - started
    ordered = [members[s] for s in seeds]
    model, metrics, predictions, history = assemble(config, ordered, data, folds=folds,
                                                    recall_confidence=final.recall_confidence,
                                                    rule=final.threshold_rule, seed=final.seed)
    if final.robustness:
        metrics["robustness"] = assess_robustness(ordered, data, predictions, metrics, folds)
    metrics["final_stage_s"] = time.monotonic() - started  # this session's part when resumed
    metrics["members_s"] = members_s
    tables = {paths.predictions: predictions, paths.history: history}
    if folds is not None:
        tables[paths.folds] = _fold_table(data, folds, roles)
    write_final(paths, model, metrics, tables, render_model_card(metrics, config, best))
    shutil.rmtree(paths.member_checkpoints)  # the package in final/ holds every member now
    return metrics


def write_final(paths: ExperimentPaths, model: FinalModel, metrics: dict, tables: dict[Path, pd.DataFrame],
                card: str) -> None:
    """final/ built beside and renamed into place: its rename marks the experiment finished (ExperimentPaths.finished),
    so a driver killed between two of its files leaves an experiment that --resume finishes and the report reads."""
    with folder_in_place(paths.final) as tmp:
        def inside(path: Path) -> Path:
            return tmp / path.relative_to(paths.final)

        model.save(tmp)
        write_metrics(inside(paths.metrics), metrics)
        for path, table in tables.items():
            write_table(inside(path), table)
        inside(paths.model_card).write_text(card)


def _fold_table(data: CxrData, folds: np.ndarray, roles: dict[int, np.ndarray]) -> pd.DataFrame:
    """final/folds.parquet: every film's fold and the split column each member was sent (train, val: the inner
    hold-out that chose its epoch, oof: scored out of fold, test), so anyone can check that no film was scored by a
    member that saw it."""
    table = data.manifest[["path", "patient", "label", "split"]].assign(fold=folds)
    for k, sent in roles.items():
        table[f"member_{k}"] = sent
    return table


def _save_member(folder: Path, member: Member) -> None:
    with folder_in_place(folder / f"seed-{member.seed}") as tmp:  # a killed driver never leaves half a member
        save_file({k: v.contiguous() for k, v in member.state.items()}, str(tmp / "weights.safetensors"))
        np.savez(tmp / "probabilities.npz", **member.probs)
        write_table(tmp / "history.parquet", pd.DataFrame(member.history))
        write_json(tmp / "member.json", {"seed": member.seed, "best_epoch": member.best_epoch, "fold": member.fold})


def _load_members(folder: Path, seeds: list[int], fold_of: dict[int, int | None]) -> dict[int, Member]:
    """Members a killed driver left complete; one trained for another fold (or none) is trained again."""
    members = {}
    for seed in seeds:
        source = folder / f"seed-{seed}"
        if not (source / "member.json").is_file():
            continue
        saved = read_json(source / "member.json")
        if saved.get("fold") != fold_of[seed]:
            continue
        with np.load(source / "probabilities.npz", allow_pickle=False) as probs:
            members[seed] = Member(seed, saved["best_epoch"], load_file(str(source / "weights.safetensors")),
                                   pd.read_parquet(source / "history.parquet").to_dict("records"), dict(probs), saved["fold"])
    return members
