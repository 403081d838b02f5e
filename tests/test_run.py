"""python -m tune.run end to end: the README's demo (run once, shared) and what it writes; --extend of a copy of it;
and the answers the CLI gives before Ray starts (in this process: no Python start-up each). The data-parallel trial
runs in tests/test_predict.py's manifest run."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from tune.budget import FINISH_S
from tune.loopback import is_loopback
from tune.results import load
from tune.search import open_study_storage

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_writes_every_result_file(demo):
    for name in ["run.json", "splits.parquet", "trials.parquet", "epochs.parquet", "best.json", "optuna.journal",
                 "final/metrics.json", "final/predictions.parquet", "final/model.json", "final/member-0.safetensors",
                 "final/history.parquet", "final/model_card.md", "plan.json"]:
        assert (demo.folder / name).is_file(), name
    results = load(demo.folder)
    assert len(results.trials) == 8 and results.trials["trial_id"].is_unique
    for column in ["backbone", "lr", "scheduler", "dropout", "unfrozen_blocks", "epochs_run", "status",
                   "best_val_auroc", "last_val_auroc", "best_val_spec_at_recall", "time_s", "node_id"]:
        assert column in results.trials, column
    assert set(results.epochs["trial_id"]) == set(results.trials["trial_id"])
    assert results.epochs.groupby("trial_id").size().sum() == results.trials["epochs_run"].sum()
    test = results.metrics["test"]
    assert test["tp"] + test["fn"] + test["tn"] + test["fp"] == (results.splits["split"] == "test").sum()
    assert 0.0 <= results.metrics["threshold"] <= 1.0
    # the product's default rule, the one that keeps recall on the next films (cxr.cli.DEFAULT_THRESHOLD_RULE)
    assert results.metrics["rule"] == "exact" and results.metrics["recall_confidence"] == 0.95
    assert results.metrics["out_of_sample"]["rule"] == "exact"
    for name in ("recall", "specificity", "ppv", "npv", "auroc"):
        low, high = test[f"{name}_ci95"]
        assert low <= test[name] <= high, name
    assert results.best["trial_id"] == results.trials.iloc[0]["trial_id"]
    val = results.best["val"]  # all from the best epoch, so the confusion counts add up to the val split
    assert val["val_tp"] + val["val_fn"] + val["val_tn"] + val["val_fp"] == (results.splits["split"] == "val").sum()
    assert val["val_spec_at_recall"] == results.best["value"]
    _assert_the_plan_holds_what_the_run_decided(json.loads((demo.folder / "plan.json").read_text()), results)


def _assert_the_plan_holds_what_the_run_decided(plan: dict, results) -> None:
    """plan.json: the start-up cap (8 trials: at least STARTUP_TRIALS, 10), the sampler, ASHA's rungs (2 epochs: after
    the first), the members' seeds and the data's fingerprint."""
    search, data = plan["search"], plan["data"]
    assert search["startup_cap"] == 10 and search["num_samples"] == 8 and search["trials_at_once"] >= 1
    assert search["sampler"]["class"] == "TPESampler" and search["sampler"]["n_startup_trials"] == 10
    assert search["trial_scheduler"]["rungs"] == [1] and plan["versions"]["ray"] and plan["versions"]["optuna"]
    assert plan["final"]["seeds"] == [m["seed"] for m in results.metrics["members"]]
    splits = results.splits
    assert data["films"] == len(splits) and data["patients"] == splits["patient"].nunique() and data["image_size"] == 64
    for split, rows in splits.groupby("split"):
        assert data["splits"][split]["films"] == len(rows), split
        assert data["splits"][split]["pneumonia_share"] == pytest.approx(rows["label"].mean(), abs=1e-4), split
    assert Path(data["decode_cache"]).is_file() and data["decode_cache"].endswith("-64px.npy")


@pytest.mark.slow
def test_local_run_listens_on_loopback_only_and_keeps_its_token_private(demo):
    names = {name for name, _ in demo.listening}
    assert {"gcs_server", "raylet"} <= names, demo.listening  # the watch saw Ray's own servers
    exposed = sorted(s for s in demo.listening if not is_loopback(s[1].rsplit(":", 1)[0].strip("[]")))
    assert exposed == []
    token = demo.home / ".ray" / "auth_token"
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text()) == 64


@pytest.mark.slow
def test_demo_prints_the_live_table_the_leaderboard_and_the_headline(demo):
    header = next(line for line in demo.stdout.splitlines() if "val_spec_at_recall" in line and "trial_id" not in line
                  and "epoch" in line)  # the live table's header row (Ray's CLIReporter)
    assert "val_auroc" in header and "backbone" in header
    assert "leaderboard (top 8 of 8 trials" in demo.stdout and "test: recall" in demo.stdout


@pytest.mark.slow
def test_optuna_journal_matches_the_trials_table(demo):
    """Optuna's own study (what optuna-dashboard opens): one trial per Ray trial, in creation order, with its
    state, its best epoch's value and every epoch as an intermediate value."""
    study = optuna.load_study(study_name="demo", storage=open_study_storage(demo.folder / "optuna.journal"))
    results = load(demo.folder)
    trials = results.trials.set_index("trial_index")
    assert len(study.trials) == len(trials)
    states = {"completed": TrialState.COMPLETE, "early_stopped": TrialState.COMPLETE, "pruned": TrialState.PRUNED,
              "error": TrialState.FAIL}
    for trial in study.trials:
        row = trials.loc[trial.number + 1]
        assert trial.state == states[row["status"]], (trial.number, row["status"])
        assert trial.value == pytest.approx(row["best_val_spec_at_recall"])
        epochs = results.epochs[results.epochs["trial_id"] == row["trial_id"]]
        assert trial.intermediate_values == pytest.approx(dict(zip(epochs["training_iteration"], epochs["val_spec_at_recall"])))
    assert {t.state for t in study.trials} >= {TrialState.COMPLETE, TrialState.PRUNED}


@pytest.mark.slow
def test_final_stage_trains_new_seeds_and_keeps_every_member(demo):
    results = load(demo.folder)
    metrics, model = results.metrics, json.loads((demo.folder / "final" / "model.json").read_text())
    seeds = [m["seed"] for m in model["members"]]
    assert len(seeds) == 3 == len(set(seeds)) == metrics["n_members"]
    assert not set(seeds) & set(results.trials["seed"]), "a member repeats a (config, seed) a trial trained"
    assert [m["seed"] for m in metrics["members"]] == seeds
    assert all(m["chosen"]["auroc"] > 0 and m["test"] is not None for m in metrics["members"])
    predictions = results.predictions
    members = predictions[[f"prob_member_{i}" for i in range(3)]].mean(axis=1)
    assert np.allclose(predictions["probability_raw"], members)
    assert ((predictions["probability"] >= metrics["threshold"]).astype(int) == predictions["prediction"]).all()
    history = pd.read_parquet(demo.folder / "final" / "history.parquet")
    assert sorted(history["seed"].unique()) == sorted(seeds)
    assert not (demo.folder / "member-checkpoints").exists()
    assert 0 < metrics["members_s"] < metrics["final_stage_s"]  # the members, then the driver's part
    if sys.platform.startswith("linux"):  # cxr.run_share reads Linux's schedstat
        assert history["cpu_run_share"].between(0, 1, inclusive="right").all()


@pytest.mark.slow
def test_report_has_every_section_and_is_self_contained(demo):
    page = (demo.folder / "report" / "report.html").read_text()
    for section in ["Read this first", "Headline", "ROC and precision-recall", "Confusion matrix", "Threshold sweep",
                    "Calibration", "Members vs ensemble", "Subgroups", "Data audit", "The search", "Leaderboard", "Plan",
                    "Optimisation history", "Parameter importances", "Learning curves"]:
        assert section in page, section
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) >= 8 and all(s.startswith("data:image/png;base64,") for s in sources)
    report = json.loads((demo.folder / "report" / "report.json").read_text())
    assert {"metrics", "audit", "search", "best", "run", "plan", "figures"} <= set(report)
    assert report["metrics"]["test"]["recall_ci95"] and report["search"]["trials"] == 8
    assert all((demo.folder / "report" / name).is_file() for name in report["figures"])


@pytest.mark.slow
def test_checkpoints_of_finished_trials_are_dropped(demo):
    trial_dirs = list((demo.folder / "tune").glob("trial_*"))
    assert len(trial_dirs) == 8 and all((d / "result.json").is_file() for d in trial_dirs)
    assert not [c for d in trial_dirs for c in d.glob("checkpoint_*")]


@pytest.mark.slow
def test_asha_stops_some_trials_after_one_epoch(demo):
    trials = load(demo.folder).trials
    assert (trials["status"] == "pruned").any(), trials[["trial_id", "status", "epochs_run"]]
    assert (trials.loc[trials["status"] == "pruned", "epochs_run"] == 1).all()  # grace period 1
    assert (trials["epochs_run"] == 2).any()


@pytest.mark.slow
def test_splits_keep_patients_apart_and_test_unseen(demo):
    results = load(demo.folder)
    splits = results.splits
    train = set(splits.loc[splits["split"] == "train", "patient"])
    val = set(splits.loc[splits["split"] == "val", "patient"])
    assert train and val and not train & val
    test_paths = set(splits.loc[splits["split"] == "test", "path"])
    assert test_paths and all("/test/" in p for p in test_paths)
    assert (splits.loc[splits["source_split"] == "test", "split"] == "test").all()
    predicted = results.predictions
    assert set(predicted.loc[predicted["split"] == "test", "path"]) == test_paths


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
def test_existing_name_is_refused_and_untouched(demo, main_in_process, assert_input_error):
    before = _digest(demo.folder)
    assert_input_error(*main_in_process("--dataset", "synthetic", "--results-dir", str(demo.folder.parent), "--name", "demo"),
                       "demo", "--resume")
    assert _digest(demo.folder) == before


@pytest.mark.slow
def test_extend_adds_trials_the_study_keeps_and_archives_the_previous_report_within_a_time_budget(demo, copy_experiment,
                                                                                                 run_cli):
    """--extend 60 --time-budget 45s on the demo's copy (an --extend round has a budget of its own): the round stops
    starting trials when what is left is the final stage's estimate; run.json and the report say how the time was
    spent. Which trials were in flight at that moment depends on the machine's load, so the stop of a trial in flight
    is checked with a stand-in clock (tests/test_search.py); the wall time against the budget in BENCHMARKS.md."""
    folder = copy_experiment(demo)
    before = load(folder)
    started = time.monotonic()
    extended = run_cli("--results-dir", str(folder.parent), "--name", "demo", "--extend", "60", "--time-budget", "45s")
    wall = time.monotonic() - started
    assert extended.returncode == 0, extended.stderr[-4000:]
    assert "no new trials" in extended.stdout and "time budget:" in extended.stdout
    after = load(folder)
    n = len(after.trials)
    assert 8 < n < 68 and sorted(after.trials["trial_index"]) == list(range(1, n + 1)) and wall < 150
    assert set(before.trials["trial_id"]) < set(after.trials["trial_id"])
    study = optuna.load_study(study_name="demo", storage=open_study_storage(folder / "optuna.journal"))
    assert [t.number for t in study.trials] == list(range(n)) and all(t.state.is_finished() for t in study.trials)
    states = {t.number + 1: t.state.name for t in study.trials}
    stopped = after.trials[after.trials["status"] == "budget"]
    saved = json.loads((folder / "budget.json").read_text())
    spent, plan = saved["spending"], saved["final_plan"]
    assert len(stopped) == spent["trials_stopped_by_budget"]
    assert all(states[i] == "COMPLETE" for i in stopped["trial_index"])  # stopped by the clock, not judged weak
    parts = spent["search_s"] + spent["final_stage_s"] + spent["other_s"]
    assert spent["budget_s"] == 45 and parts == pytest.approx(spent["total_s"], abs=0.2)
    planned = plan["estimate_s"] if plan else saved["decision"]["final_estimate_s"]
    if planned is None:  # a loaded machine: the 45 s were spent before the round's first epoch, and no final stage ran
        assert "final_estimate_s" not in spent and not plan and "before any trial finished an epoch" in extended.stdout
    else:
        assert spent["final_estimate_s"] > 0
        assert spent["final_estimate_s"] == pytest.approx(planned - FINISH_S, abs=0.11)  # what final_stage_s measures
    assert (folder / "report-1" / "report.html").is_file() and "Time budget" in (folder / "report" / "report.html").read_text()
    best_changed = after.best["trial_id"] != before.best["trial_id"]
    assert (folder / "final-1" / "model.json").is_file() == best_changed  # kept only when a new final/ replaced it
    assert (plan is not None) == best_changed and (plan is None or plan["epochs"] >= 1)  # the final stage's own plan
    assert (folder / "final" / "model.json").is_file() and after.metrics is not None
    assert _digest(demo.folder / "final") == _digest(folder / ("final-1" if best_changed else "final"))


def test_help_and_bad_flags_import_no_heavy_library():
    """--help answers without pandas, and a bad flag before torch, Ray or Optuna load (about a second, not ten)."""
    code = ("import sys\nimport tune.run\nhelp_time = sorted(m for m in ('torch', 'ray', 'optuna', 'pandas') if m in sys.modules)\n"
            "rc = tune.run.main(['--dataset', 'synthetic', '--max-epochs', '0'])\n"
            "print(help_time, rc, sorted(m for m in ('torch', 'ray', 'optuna') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[] 2 []", done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: --max-epochs 0 is out of range")


@pytest.mark.parametrize("flags, words", [
    (["--max-epochs", "0"], ["--max-epochs", "0"]),
    (["--num-samples", "0"], ["--num-samples"]),
    (["--final-seeds", "0"], ["--final-members"]),  # the old name still works, and the error names the new one
    (["--final", "folds", "--final-members", "1"], ["--final folds", "2 or more"]),
    (["--recall-confidence", "1.5"], ["--recall-confidence"]),
    (["--target-recall", "0"], ["--target-recall"]),
    (["--cpus-per-trial", "0"], ["--cpus-per-trial"]),
    (["--extend", "-1"], ["--extend"]),
    (["--space", "nope"], ["nope", "smoke", "full"]),
    (["--backbones", "resnet50", "--space", "cpu"], ["--backbones resnet50", "tf_efficientnet_lite0"]),
])
def test_bad_flags_fail_in_one_line_before_anything_is_written(tmp_path, main_in_process, assert_input_error, flags, words):
    assert_input_error(*main_in_process("--dataset", "synthetic", "--results-dir", str(tmp_path / "r"), *flags), *words)
    assert not (tmp_path / "r").exists()


def test_bad_paths_fail_in_one_line(tmp_path, main_in_process, assert_input_error):
    (tmp_path / "file").write_text("x")
    assert_input_error(*main_in_process("--dataset", "synthetic", "--results-dir", str(tmp_path / "file" / "r")),
                       "--results-dir", "is a file")
    assert_input_error(*main_in_process("--data-dir", str(tmp_path / "absent"), "--results-dir", str(tmp_path)),
                       "absent", "does not exist")
    assert_input_error(*main_in_process("--results-dir", str(tmp_path), "--name", "nope", "--extend", "2"), "nope")
    assert_input_error(*main_in_process("--results-dir", str(tmp_path), "--extend", "2"), "--name")


def test_bad_space_file_fails_before_ray(tmp_path, main_in_process, assert_input_error):
    space = tmp_path / "myspace.py"
    space.write_text("def space(trial):\n    trial.suggest_float('lr', 1e-4, 1e-2)\n    return {'learning_rate': 1}\n")
    assert_input_error(*main_in_process("--space", str(space), "--dataset", "synthetic", "--results-dir", str(tmp_path / "r")),
                       "learning_rate")
    assert not (tmp_path / "r").exists()


def test_missing_weights_and_a_dead_address_fail_before_any_film_is_decoded(tmp_path, main_in_process, assert_input_error):
    weights, cache = tmp_path / "weights", tmp_path / "cache"
    weights.mkdir()
    assert_input_error(*main_in_process("--space", "cpu", "--dataset", "synthetic", "--weights-dir", str(weights),
                                        "--cache-dir", str(cache), "--results-dir", str(tmp_path / "r")),
                       "mobilenetv3_large_100", "safetensors", "--no-pretrained")
    with socket.socket() as s:  # free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert_input_error(*main_in_process("--address", f"127.0.0.1:{port}", "--dataset", "synthetic", "--cache-dir",
                                        str(cache), "--results-dir", str(tmp_path / "r")), f"127.0.0.1:{port}")
    assert not (tmp_path / "r").exists() and not list(cache.rglob("images-*.npy")), "films were decoded first"


def test_deprecated_scheduler_flag_still_works_and_says_so(tmp_path, main_in_process):
    code, err = main_in_process("--scheduler", "fifo", "--num-samples", "0", "--dataset", "synthetic",
                                "--results-dir", str(tmp_path))
    assert code == 2 and "--scheduler is deprecated: use --trial-scheduler" in err
