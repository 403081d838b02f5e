"""End to end: python -m tune.run as a user runs it (subprocesses, a private local Ray cluster each)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import json
import re

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from tune.results import load
from tune.search import open_study_storage

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tune.run", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def assert_input_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2, no traceback, and the last stderr line is our one-line message naming the problem."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr[-2000:]
    for word in words:
        assert word in last, last


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The README's demo command (smoke space, synthetic data, ASHA, 8 trials) into a temporary results dir."""
    results = tmp_path_factory.mktemp("results")
    env_cache = tmp_path_factory.mktemp("cache")
    os.environ["CXR_CACHE_DIR"] = str(env_cache)
    start = time.monotonic()
    proc = run_cli("--space", "smoke", "--dataset", "synthetic", "--results-dir", str(results), "--name", "demo")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert time.monotonic() - start < 300, "the demo must finish within 5 minutes"
    assert "leaderboard" in proc.stdout and "test: recall" in proc.stdout
    return results / "demo"


@pytest.mark.slow
def test_demo_writes_every_result_file(demo: Path):
    for name in ["run.json", "splits.parquet", "trials.parquet", "epochs.parquet", "best.json", "optuna.journal",
                 "final/metrics.json", "final/predictions.parquet", "final/model.json", "final/member-0.safetensors",
                 "final/history.parquet", "final/model_card.md"]:
        assert (demo / name).is_file(), name
    results = load(demo)
    assert len(results.trials) == 8 and results.trials["trial_id"].is_unique
    for column in ["backbone", "lr", "scheduler", "dropout", "unfrozen_blocks", "epochs_run", "status",
                   "best_val_auroc", "last_val_auroc", "best_val_spec_at_recall", "time_s", "node_id"]:
        assert column in results.trials, column
    assert set(results.epochs["trial_id"]) == set(results.trials["trial_id"])
    assert results.epochs.groupby("trial_id").size().sum() == results.trials["epochs_run"].sum()
    test = results.test["test"]
    assert test["tp"] + test["fn"] + test["tn"] + test["fp"] == (results.splits["split"] == "test").sum()
    assert 0.0 <= results.test["threshold"] <= 1.0
    for name in ("recall", "specificity", "ppv", "npv", "auroc"):
        low, high = test[f"{name}_ci95"]
        assert low <= test[name] <= high, name
    assert results.best["trial_id"] == results.trials.iloc[0]["trial_id"]
    val = results.best["val"]  # all from the best epoch, so the confusion counts add up to the val split
    assert val["val_tp"] + val["val_fn"] + val["val_tn"] + val["val_fp"] == (results.splits["split"] == "val").sum()
    assert val["val_spec_at_recall"] == results.best["value"]


@pytest.mark.slow
def test_optuna_journal_matches_the_trials_table(demo: Path):
    """Optuna's own study (what optuna-dashboard opens): one trial per Ray trial, in creation order, with its
    state, its best epoch's value and every epoch as an intermediate value."""
    study = optuna.load_study(study_name="demo", storage=open_study_storage(demo / "optuna.journal"))
    results = load(demo)
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
def test_final_stage_trains_new_seeds_and_keeps_every_member(demo: Path):
    results = load(demo)
    metrics, model = results.test, json.loads((demo / "final" / "model.json").read_text())
    seeds = [m["seed"] for m in model["members"]]
    assert len(seeds) == 3 == len(set(seeds)) == metrics["k"]
    assert not set(seeds) & set(results.trials["seed"]), "a member repeats a (config, seed) a trial trained"
    assert [m["seed"] for m in metrics["members"]] == seeds
    assert all(m["val"]["auroc"] > 0 and m["test"] is not None for m in metrics["members"])
    predictions = results.predictions
    members = predictions[[f"prob_member_{i}" for i in range(3)]].mean(axis=1)
    assert np.allclose(predictions["probability_raw"], members)
    assert ((predictions["probability"] >= metrics["threshold"]).astype(int) == predictions["prediction"]).all()
    history = pd.read_parquet(demo / "final" / "history.parquet")
    assert sorted(history["seed"].unique()) == sorted(seeds)
    assert not (demo / "final-members").exists()


@pytest.mark.slow
def test_report_has_every_section_and_is_self_contained(demo: Path):
    page = (demo / "report" / "report.html").read_text()
    for section in ["Read this first", "Headline", "ROC and precision-recall", "Confusion matrix", "Threshold sweep",
                    "Calibration", "Members vs ensemble", "Subgroups", "Data audit", "The search", "Leaderboard",
                    "Optimisation history", "Parameter importances", "Learning curves"]:
        assert section in page, section
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) >= 8 and all(s.startswith("data:image/png;base64,") for s in sources)
    report = json.loads((demo / "report" / "report.json").read_text())
    assert {"metrics", "audit", "search", "best", "run", "figures"} <= set(report)
    assert report["metrics"]["test"]["recall_ci95"] and report["search"]["trials"] == 8
    assert all((demo / "report" / name).is_file() for name in report["figures"])


@pytest.mark.slow
def test_checkpoints_of_finished_trials_are_dropped(demo: Path):
    assert not list((demo / "tune").glob("trial_*/checkpoint_*"))


@pytest.mark.slow
def test_asha_stops_some_trials_early(demo: Path):
    trials = load(demo).trials
    assert (trials["status"] == "pruned").any(), trials[["trial_id", "status", "epochs_run"]]
    assert (trials.loc[trials["status"] == "pruned", "epochs_run"] < 2).all()
    assert (trials["epochs_run"] == 2).any()


@pytest.mark.slow
def test_splits_keep_patients_apart_and_test_unseen(demo: Path):
    results = load(demo)
    splits = results.splits
    train = set(splits.loc[splits["split"] == "train", "patient"])
    val = set(splits.loc[splits["split"] == "val", "patient"])
    assert not train & val
    test_paths = set(splits.loc[splits["split"] == "test", "path"])
    assert test_paths and all("/test/" in p for p in test_paths)
    assert (splits.loc[splits["source_split"] == "test", "split"] == "test").all()
    predicted = results.predictions
    assert set(predicted.loc[predicted["split"] == "test", "path"]) == test_paths


@pytest.mark.slow
def test_full_space_runs_baselines_first(tmp_path):
    proc = run_cli("--space", "full", "--dataset", "synthetic", "--no-pretrained", "--max-epochs", "1", "--final-seeds", "1",
                   "--num-samples", "3", "--image-size", "32", "--results-dir", str(tmp_path), "--name", "full")
    assert proc.returncode == 0, proc.stderr[-4000:]
    trials = load(tmp_path / "full").trials.sort_values("trial_index")
    first, second = trials.iloc[0], trials.iloc[1]
    assert (first["backbone"], first["scheduler"], first["lr"], first["step_size"]) == ("tf_efficientnetv2_s", "step", 1e-4, 5)
    assert (second["backbone"], second["scheduler"], second["dropout"], second["unfrozen_blocks"]) == ("densenet121", "plateau", 0.3, 2)
    assert trials["backbone"].nunique() >= 2 and trials["scheduler"].nunique() >= 2
    assert (trials["image_size"] == 32).all() and not trials["pretrained"].any()


def _finished_trials(tune_dir: Path, epochs: int) -> dict[str, int]:
    """Trial folder -> result lines, for trials that reported all their epochs."""
    done = {}
    for result in tune_dir.glob("trial_*/result.json"):
        lines = result.read_text().count("\n")
        if lines >= epochs:
            done[result.parent.name] = lines
    return done


@pytest.mark.slow
def test_killed_driver_resumes_without_rerunning_finished_trials(tmp_path):
    # two at a time: the kill lands when 2 trials are done and the last 2 are running
    args = ["--space", "smoke", "--dataset", "synthetic", "--num-samples", "4", "--scheduler", "fifo", "--final-seeds", "1",
            "--max-concurrent", "2", "--results-dir", str(tmp_path), "--name", "killed"]
    driver = subprocess.Popen([sys.executable, "-m", "tune.run", *args], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tune_dir = tmp_path / "killed" / "tune"
    deadline = time.monotonic() + 300
    while len(_finished_trials(tune_dir, 2)) < 2 and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.5)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = _finished_trials(tune_dir, 2)
    assert 2 <= len(before) < 4, "the kill must land mid-search"
    proc = run_cli(*args, "--resume")
    assert proc.returncode == 0, proc.stderr[-4000:]
    trials = load(tmp_path / "killed").trials
    assert len(trials) == 4 and trials["trial_id"].is_unique
    after = _finished_trials(tune_dir, 2)
    assert all(after[name] == lines for name, lines in before.items()), "a finished trial ran again"


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
def test_existing_name_is_refused_and_untouched(demo: Path):
    before = _digest(demo)
    proc = run_cli("--space", "smoke", "--dataset", "synthetic", "--results-dir", str(demo.parent), "--name", "demo")
    assert_input_error(proc, "demo", "--resume")
    assert _digest(demo) == before


def test_unknown_space_lists_available(tmp_path):
    assert_input_error(run_cli("--space", "nope", "--dataset", "synthetic", "--results-dir", str(tmp_path)), "nope", "smoke", "full")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flags, words", [
    (["--max-epochs", "0"], ["--max-epochs", "0"]),
    (["--num-samples", "0"], ["--num-samples"]),
    (["--final-seeds", "0"], ["--final-seeds"]),
    (["--recall-confidence", "1.5"], ["--recall-confidence"]),
    (["--target-recall", "0"], ["--target-recall"]),
    (["--cpus-per-trial", "0"], ["--cpus-per-trial"]),
    (["--extend", "-1"], ["--extend"]),
])
def test_bad_flag_values_fail_in_one_line(tmp_path, flags, words):
    assert_input_error(run_cli("--dataset", "synthetic", "--results-dir", str(tmp_path / "r"), *flags, timeout=60), *words)
    assert not (tmp_path / "r").exists()


def test_results_dir_under_a_file_fails_before_anything_is_written(tmp_path):
    (tmp_path / "file").write_text("x")
    assert_input_error(run_cli("--dataset", "synthetic", "--results-dir", str(tmp_path / "file" / "r"), timeout=60),
                       "--results-dir", "is a file")


def test_extend_and_resume_need_an_existing_experiment(tmp_path):
    assert_input_error(run_cli("--results-dir", str(tmp_path), "--name", "nope", "--extend", "2", timeout=60), "nope")
    assert_input_error(run_cli("--results-dir", str(tmp_path), "--extend", "2", timeout=60), "--name")


def test_help_imports_no_heavy_library():
    code = "import sys, tune.run; print(sorted(m for m in ('torch', 'ray', 'optuna', 'pandas') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True).stdout.strip() == "[]"


def test_flags_are_judged_without_torch_ray_or_optuna():
    # a bad flag must answer before the search stack is imported (about a second, not ten)
    code = ("import sys\nfrom tune.run import main\nrc = main(['--dataset', 'synthetic', '--max-epochs', '0'])\n"
            "print(rc, sorted(m for m in ('torch', 'ray', 'optuna') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.stdout.strip() == "2 []", done.stderr


@pytest.mark.slow
def test_an_address_where_no_cluster_answers_fails_naming_it(tmp_path):
    start = time.monotonic()
    assert_input_error(run_cli("--address", "127.0.0.1:1", "--dataset", "synthetic", "--results-dir", str(tmp_path), timeout=60),
                       "127.0.0.1:1")
    assert time.monotonic() - start < 30 and not any(tmp_path.iterdir())


def test_missing_data_dir(tmp_path):
    assert_input_error(run_cli("--data-dir", str(tmp_path / "absent"), "--results-dir", str(tmp_path)), "absent", "does not exist")


@pytest.mark.parametrize(
    "body, words",
    [
        ("def space(trial):\n    trial.suggest_float('lr', 1e-4, 1e-2)\n    return {'learning_rate': 1}\n", ["learning_rate"]),
        ("def space(trial):\n    trial.suggest_float('dropout', 0.0, 1.5)\n    return {}\n", ["dropout"]),
    ],
)
def test_bad_space_file(tmp_path, body, words):
    space = tmp_path / "myspace.py"
    space.write_text(body)
    proc = run_cli("--space", str(space), "--dataset", "synthetic", "--results-dir", str(tmp_path / "r"))
    assert_input_error(proc, *words)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_more_gpus_than_the_cluster_fails_fast(tmp_path):
    start = time.monotonic()
    proc = run_cli("--dataset", "synthetic", "--gpus-per-trial", "1", "--results-dir", str(tmp_path), timeout=120)
    assert_input_error(proc, "--gpus-per-trial", "GPU")
    assert time.monotonic() - start < 90
    assert not any(tmp_path.iterdir()), "nothing is written for a run that cannot start"


@pytest.mark.slow
def test_data_parallel_trial_reports_like_a_single_process_one(demo: Path, tmp_path):
    proc = run_cli("--space", "smoke", "--dataset", "synthetic", "--num-samples", "1", "--workers-per-trial", "2",
                   "--cpus-per-trial", "0.5", "--scheduler", "fifo", "--image-size", "32", "--final-seeds", "1", "--final-epochs", "1",
                   "--results-dir", str(tmp_path), "--name", "ddp")
    assert proc.returncode == 0, proc.stderr[-4000:]
    parallel = load(tmp_path / "ddp")
    trial = parallel.trials.iloc[0]
    assert (trial["status"], trial["epochs_run"]) == ("completed", 2)
    single = load(demo).epochs
    metric_columns = {c for c in single.columns if c.startswith(("val_", "train_")) or c in ("epoch", "lr", "best_epoch")}
    assert metric_columns <= set(parallel.epochs.columns)
    assert list(parallel.epochs["epoch"]) == [1, 2]
    assert parallel.epochs[sorted(metric_columns)].notna().all().all()


@pytest.mark.slow
def test_pretrained_weights_come_from_the_driver(tmp_path):
    """--weights-dir is read once by the driver; trials start from exactly those weights (frozen stem unchanged)."""
    import timm
    import torch
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "weights"
    weights.mkdir()
    torch.manual_seed(123)
    reference = timm.create_model("test_efficientnet").state_dict()
    save_file(reference, str(weights / "test_efficientnet.safetensors"))
    space = tmp_path / "frozen.py"
    space.write_text("def space(trial):\n    trial.suggest_float('lr', 1e-3, 1e-2, log=True)\n"
                     "    return {'backbone': 'test_efficientnet', 'pretrained': True, 'unfrozen_blocks': 0,\n"
                     "            'image_size': 64, 'epochs': 1}\n")
    proc = run_cli("--space", str(space), "--dataset", "synthetic", "--num-samples", "2", "--weights-dir", str(weights), "--final-seeds", "1",
                   "--results-dir", str(tmp_path / "r"), "--name", "pre")
    assert proc.returncode == 0, proc.stderr[-4000:]
    final = load_file(str(tmp_path / "r" / "pre" / "final" / "member-0.safetensors"))
    assert torch.equal(final["backbone.conv_stem.weight"], reference["conv_stem.weight"])
    assert final["backbone.classifier.weight"].shape[0] == 1  # the new one-logit head, not the file's


def test_missing_weights_fail_before_ray(tmp_path):
    space = tmp_path / "pre.py"
    space.write_text("def space(trial):\n    trial.suggest_float('lr', 1e-3, 1e-2)\n"
                     "    return {'backbone': 'test_efficientnet', 'pretrained': True, 'image_size': 64}\n")
    proc = run_cli("--space", str(space), "--dataset", "synthetic", "--weights-dir", str(tmp_path), "--results-dir", str(tmp_path / "r"))
    assert_input_error(proc, "test_efficientnet", "--no-pretrained")
    assert not (tmp_path / "r").exists()


def test_unknown_backbones_flag_fails_before_ray(tmp_path):
    proc = run_cli("--space", "cpu", "--backbones", "resnet50", "--dataset", "synthetic", "--results-dir", str(tmp_path / "r"))
    assert_input_error(proc, "--backbones resnet50", "tf_efficientnet_lite0")
    assert not (tmp_path / "r").exists()


def test_cpu_space_without_backbones_names_the_missing_weights_file(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    proc = run_cli("--space", "cpu", "--dataset", "synthetic", "--weights-dir", str(weights), "--results-dir", str(tmp_path / "r"))
    assert_input_error(proc, "mobilenetv3_large_100", "safetensors")
    assert not (tmp_path / "r").exists()
