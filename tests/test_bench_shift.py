"""benchmarks/bench_shift.py without a search: its scoring on a saved final model and made-up films, the banks it
judges on, issue 30's rule for a default, and each arm's tune.run command against tune.run's own parser and checks."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from benchmarks.bench_shift import (ARMS, BACKBONE, BASELINE_ARM, TODAY_SPACE, arm_command, beats, check_banks_disjoint,
                                    run_arm, score_model, summarise)
from cxr.shift import FAMILIES, ROBUSTNESS_BANK, SELECTION_BANK
from search_spaces._levers import OFF

REPO = Path(__file__).resolve().parents[1]


def made_up_films(n: int = 48, size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Textured films at the final_model_folder's size (32 px), half pneumonia, two films per patient."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    return images, np.arange(n) % 2, np.arange(n) // 2


def test_the_score_is_the_shipped_models_at_its_threshold_and_moves_under_the_bank(final_model_folder, tmp_path):
    from cxr import load_model
    from cxr.jsonio import read_json, write_json
    from cxr.metrics import ranking, rates

    images, labels, patients = made_up_films()
    folder = Path(shutil.copytree(final_model_folder, tmp_path / "final"))
    probs = load_model(folder).probabilities(images)
    # a threshold amid the films' probabilities, away from 0.5 (where the temperature would not matter)
    write_json(folder / "model.json", read_json(folder / "model.json") | {"threshold": float(np.quantile(probs, 0.3))})
    scores = score_model(folder, images, labels, patients, n_boot=20)
    model = load_model(folder)
    expected = {**ranking(labels, probs), **rates(labels, probs, model.threshold)}
    assert {k: scores["plain"][k] for k in ("auroc", "recall", "specificity")} == pytest.approx(
        {k: expected[k] for k in ("auroc", "recall", "specificity")})
    shifted = scores["perturbations"]
    assert [(p["family"], p["magnitude"]) for p in shifted] == [(p.family, p.magnitude) for p in ROBUSTNESS_BANK]
    # every family reaches the members: its strong perturbation moves the films' ranking (the mild blur, a fifth of
    # a pixel at 32 px, may not)
    assert all(p["auroc"] != pytest.approx(scores["plain"]["auroc"], abs=1e-9) for p in shifted if p["strength"] == 2)
    assert scores["shifted"]["auroc"] == pytest.approx(np.mean([p["auroc"] for p in shifted]))
    by_family = {f: np.mean([p["specificity"] for p in shifted if p["family"] == f]) for f in FAMILIES}
    assert scores["worst"]["specificity"] == pytest.approx(min(by_family.values()))
    assert by_family[scores["worst"]["family"]] == pytest.approx(min(by_family.values()))


def test_the_pseudo_test_is_judged_on_no_perturbation_of_selection(monkeypatch):
    import cxr.shift

    check_banks_disjoint()
    monkeypatch.setattr(cxr.shift, "ROBUSTNESS_BANK", (*ROBUSTNESS_BANK, SELECTION_BANK[3]))
    with pytest.raises(ValueError, match="contrast=1.4"):
        check_banks_disjoint()


@pytest.mark.parametrize(("arm", "today", "expected"), [
    ([0.80, 0.70, 0.75], [0.79, 0.69, 0.74], True),  # higher in every seed, by less than the spread
    ([0.95, 0.80, 0.95], [0.60, 0.80, 0.60], True),  # a tie in one seed, higher on average by more than the spread
    ([0.80, 0.70, 0.78], [0.79, 0.72, 0.75], False),  # lower in one seed, higher on average by less than the spread
    ([0.70, 0.70, 0.70], [0.70, 0.70, 0.70], False),
])
def test_an_arm_beats_today_in_every_seed_or_by_more_than_the_spread(arm, today, expected):
    assert beats(arm, today) is expected


def test_the_summary_applies_the_rule_to_shifted_specificity_paired_by_seed():
    by_seed = {"today": {0: 0.80, 1: 0.60, 2: 0.60},
               "levers": {0: 0.80, 1: 0.95, 2: 0.95},  # a tie in seed 0, higher by more than the spread
               "levers+shift": {0: 0.81, 1: 0.61, 2: 0.61},  # higher in every seed (not in the rows' order)
               "worse": {0: 0.79, 1: 0.61, 2: 0.61}}
    order = {"today": [2, 0, 1], "levers": [0, 1, 2], "levers+shift": [1, 2, 0], "worse": [0, 1, 2]}
    runs = pd.DataFrame([{"arm": arm, "seed": seed, "auroc": 0.9, "specificity": 0.9, "shifted_auroc": 0.8,
                          "shifted_specificity": by_seed[arm][seed]} for arm in by_seed for seed in order[arm]])
    summary = summarise(runs).set_index("arm")
    assert summary["beats_today"].to_dict() == {"today": None, "levers": True, "levers+shift": True, "worse": False}
    assert summary.loc["levers", ["shifted_specificity_min", "shifted_specificity_max"]].tolist() == [0.80, 0.95]


@pytest.mark.parametrize("arm", list(ARMS))
def test_each_arm_is_a_command_tune_run_accepts(arm, tmp_path, monkeypatch):
    from tune.parser import create_parser
    from tune.settings import RunSettings, check_flags
    from tune.spaces import load_space

    monkeypatch.chdir(REPO)  # the today space is named relative to the repository, where the benchmark runs tune.run
    manifest, weights = tmp_path / "search.csv", tmp_path / "weights"
    manifest.write_text("path,label,patient,split\n")
    weights.mkdir()
    args = create_parser().parse_args(arm_command(arm, 2, manifest, "10m", weights, tmp_path / "results", ["--final-members", "2"]))
    settings = RunSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RunSettings)})
    check_flags(settings)
    load_space(settings.space).with_backbones([BACKBONE])
    assert (settings.seed, settings.time_budget, settings.target_recall) == (2, "10m", 0.98)
    assert (settings.image_size, settings.final_members) == (128, 2)  # the benchmark's sizing, a flag after -- wins
    assert settings.metric == ("val_shift_spec_at_recall" if arm == "levers+shift" else "val_spec_at_recall")


def test_a_finished_run_is_read_back_and_one_of_other_flags_refused_not_removed(tmp_path):
    def command(budget: str) -> list[str]:
        return arm_command("today", 0, tmp_path / "search.csv", budget, tmp_path, tmp_path / "results", [])

    final = tmp_path / "results" / "today-seed0" / "final"
    final.mkdir(parents=True)
    (final / "model.json").write_text("{}")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "today-seed0.json").write_text(json.dumps({"command": command("8m"), "wall_s": 1.5}))
    assert run_arm(command("8m"), tmp_path) == 1.5
    with pytest.raises(SystemExit, match="another command"):
        run_arm(command("9m"), tmp_path)
    assert (final / "model.json").is_file()


def sampled(space_name: str, n: int = 12) -> list[tuple[dict, dict]]:
    """(config, the keys Optuna searched) of n random draws of the space, once validate() has passed it."""
    from tune.spaces import load_space, sample, validate

    space = load_space(space_name)
    validate(space)  # its baselines too
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return [(sample(space, trial), trial.params) for trial in (study.ask() for _ in range(n))]


def test_today_is_the_cpu_space_with_every_lever_off_and_augment_searched():
    today, cpu = sampled(str(TODAY_SPACE)), sampled("cpu")
    assert set().union(*(c for c, _ in today)) == set().union(*(c for c, _ in cpu))  # the same keys (a scheduler's own come with it)
    assert all(config[key] == off for config, _ in today for key, off in OFF.items())
    assert not set(OFF) & set().union(*(searched for _, searched in today))  # fixed, not drawn and then overwritten
    assert all(any(config[key] != off for config, _ in cpu) for key, off in OFF.items())  # cpu searches every lever
    augment = [config["augment"] for config, _ in today]
    assert len(set(augment)) == len(augment) and all(0 <= a <= 0.6 for a in augment)
    assert BASELINE_ARM == "today"
