"""Driver-side final stage: K members of the best config as parallel Ray tasks (a trial's resources each), each
kept as it finishes so --resume trains only the missing ones; then the ensemble is assembled, calibrated,
evaluated once on test and written to final/ (the shippable package, metrics, predictions, model card)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import ray
from safetensors.torch import load_file, save_file

from cxr.config import TrainConfig
from cxr.dataset import CxrData
from cxr.ensemble import Member, assemble, member_seeds
from cxr.model_card import render_model_card
from cxr.jsonio import read_json, write_json
from tune.results import ExperimentPaths, write_table
from tune.search import SearchSettings
from tune.trainable import member_task


@dataclass(frozen=True)
class FinalSettings:
    seeds: int = 3  # K ensemble members
    epochs: int | None = None  # None: the best config's own epochs
    recall_confidence: float | None = None  # None: the point rule
    seed: int = 0


def run_final_stage(best: dict, trials: pd.DataFrame, data: CxrData, data_ref, weight_refs: dict,
                    search: SearchSettings, final: FinalSettings, paths: ExperimentPaths) -> dict:
    config = TrainConfig.from_dict(best["config"])
    if final.epochs:
        config = config.replace(epochs=final.epochs)
    taken = {int(s) for s in trials["seed"].dropna()} if "seed" in trials else set()
    seeds = member_seeds(final.seed, final.seeds, taken)
    members = _load_members(paths.members, seeds)
    pending = [s for s in seeds if s not in members]
    print(f"\nfinal stage: {len(seeds)} member(s) of trial {best['trial_id']}'s config, {config.epochs} epochs, seeds "
          f"{seeds}" + (f" ({len(seeds) - len(pending)} already trained)" if len(pending) < len(seeds) else ""), flush=True)
    task = member_task.options(num_cpus=search.cpus_per_trial, num_gpus=search.gpus_per_trial)
    running = {task.remote(config.replace(seed=s), data_ref, weight_refs): s for s in pending}
    while running:
        (done,), _ = ray.wait(list(running), num_returns=1)
        member = ray.get(done)
        _save_member(paths.members, member)
        members[member.seed] = member
        del running[done]
    model, metrics, predictions, history = assemble(config, [members[s] for s in seeds], data,
                                                    recall_confidence=final.recall_confidence, seed=final.seed)
    model.save(paths.final)
    write_json(paths.metrics, metrics)
    write_table(paths.predictions, predictions)
    write_table(paths.history, history)
    paths.model_card.write_text(render_model_card(metrics, config, best))
    shutil.rmtree(paths.members)  # the package in final/ holds every member now
    return metrics


def _save_member(folder: Path, member: Member) -> None:
    target = folder / f"seed-{member.seed}"
    tmp = folder / f".seed-{member.seed}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in member.state.items()}, str(tmp / "weights.safetensors"))
    np.savez(tmp / "probabilities.npz", **member.probs)
    write_table(tmp / "history.parquet", pd.DataFrame(member.history))
    write_json(tmp / "member.json", {"seed": member.seed, "best_epoch": member.best_epoch})
    tmp.rename(target)  # complete or absent: a killed driver never leaves half a member


def _load_members(folder: Path, seeds: list[int]) -> dict[int, Member]:
    members = {}
    for seed in seeds:
        source = folder / f"seed-{seed}"
        if (source / "member.json").is_file():
            with np.load(source / "probabilities.npz", allow_pickle=False) as probs:
                members[seed] = Member(seed, read_json(source / "member.json")["best_epoch"],
                                       load_file(str(source / "weights.safetensors")),
                                       pd.read_parquet(source / "history.parquet").to_dict("records"), dict(probs))
    return members
