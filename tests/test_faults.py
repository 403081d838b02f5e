"""Faults injected with real processes (no test-only switches in product code): a trial that fails on every attempt;
a trial's worker killed, then the driver killed mid-search and again in the final stage, each time resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from safetensors.torch import load_file

from tune.results import load
from tune.search import open_study_storage

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
TINY = ["--dataset", "synthetic", "--image-size", "32", "--max-epochs", "2", "--trial-scheduler", "fifo"]


# The first baseline draws a model only this driver knows (registered when the space file is imported): on the
# Ray workers it does not exist, so that trial fails on every attempt; the others train normally.
FAILING_SPACE = '''
import timm
from timm.models import register_model

@register_model
def cxr_fault_net(pretrained=False, **kwargs):
    return timm.create_model("test_efficientnet", **kwargs)

BASELINES = [{"backbone": "cxr_fault_net", "lr": 0.003}, {"backbone": "test_efficientnet", "lr": 0.003}]

def space(trial):
    trial.suggest_categorical("backbone", ["cxr_fault_net", "test_efficientnet"])
    trial.suggest_float("lr", 1e-3, 1e-2, log=True)
    return {"pretrained": False, "batch_size": 32}
'''


def _wait(condition, timeout: float, driver: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert driver.poll() is None, "the run ended before the fault could be injected"
        assert time.monotonic() < deadline, "timed out waiting to inject the fault"
        time.sleep(0.3)


def _epochs_reported(trial_dir: Path) -> list[int]:
    result = trial_dir / "result.json"
    return [json.loads(line)["epoch"] for line in result.read_text().splitlines()] if result.exists() else []


def test_a_trial_that_fails_on_every_attempt_is_an_error_row_and_a_fail_in_the_journal(tmp_path, run_cli):
    """The baseline whose model the workers cannot build errors (after its retries), named; the search goes on and
    the final model is built from the other trial (with --no-robustness: without the robustness bank's scores)."""
    space = tmp_path / "faulty.py"
    space.write_text(FAILING_SPACE)
    proc = run_cli("--space", str(space), *TINY, "--max-epochs", "1", "--num-samples", "2", "--final-members", "1",
                   "--final-epochs", "1", "--no-robustness", "--results-dir", str(tmp_path / "r"), "--name", "f")
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = load(tmp_path / "r" / "f")
    failing = results.trials["backbone"] == "cxr_fault_net"
    failed, trained = results.trials[failing], results.trials[~failing]
    assert len(failed) == 1 and (failed["status"] == "error").all() and failed["error"].str.contains("InputError").all()
    assert len(trained) == 1 and (trained["status"] == "completed").all()
    assert results.best["config"]["backbone"] == "test_efficientnet" and results.metrics["test"] is not None
    assert "robustness" not in results.metrics
    study = optuna.load_study(study_name="f", storage=open_study_storage(tmp_path / "r" / "f" / "optuna.journal"))
    assert [t.state.name for t in study.trials].count("FAIL") == len(failed)


def _finished_trials(tune_dir: Path, epochs: int) -> dict[str, int]:
    """Trial folder -> result lines, for trials that reported all their epochs (an epoch reported twice, by a trial
    restarted before Ray committed its checkpoint, counts once)."""
    return {d.name: len(reported) for d in tune_dir.glob("trial_*")
            if len(set(reported := _epochs_reported(d))) >= epochs}


def _kill_trial_workers(driver: subprocess.Popen) -> None:
    """SIGKILL the trials' actor processes (Ray titles them ray::ImplicitFunc) in the session of this driver's
    private cluster."""
    pids = subprocess.run(["pgrep", "-s", str(driver.pid), "-f", "ray::ImplicitFunc"], capture_output=True, text=True).stdout.split()
    assert pids, "no trial worker process found"
    for pid in pids:
        os.kill(int(pid), signal.SIGKILL)


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tune.run", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _kill(driver: subprocess.Popen) -> None:
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its private Ray cluster
    driver.wait()


def test_driver_killed_mid_search_and_in_the_final_stage_resumes_without_repeating_work(tmp_path, run_cli, run_module):
    """The first trial's worker process killed after its first epoch: it continues from its checkpoint in a new
    process. Then kill, resume, kill, resume: finished trials never run again, the search does not run again once it
    has finished, and a fold member trained before the kill is kept as it was (not retrained). Then the fold ensemble
    itself: every out-of-fold prediction comes from the member that never saw that film (final/folds.parquet)."""
    # one trial or member at a time (2 CPUs each on a 2-CPU machine), so each kill lands between two of them
    store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    args = ["--space", "smoke", *TINY, "--num-samples", "2", "--cpus-per-trial", "2", "--final", "folds",
            "--final-members", "2", "--no-robustness", "--final-epochs", "2", "--results-dir", str(tmp_path), "--name", "k",
            "--mlflow", store, "--register", "cxr-k"]
    tune_dir, members = tmp_path / "k" / "tune", tmp_path / "k" / "member-checkpoints"
    driver = _start(args)
    # its first epoch reported and checkpointed, so it can continue from there
    _wait(lambda: any(_epochs_reported(d) and any(d.glob("checkpoint_*")) for d in tune_dir.glob("trial_*")), 300, driver)
    [killed] = [d.name for d in tune_dir.glob("trial_*") if _epochs_reported(d)]
    _kill_trial_workers(driver)
    # the first done, the second running and checkpointed (a trial Ray created but had not yet saved in its experiment
    # state is not restored)
    _wait(lambda: len(_finished_trials(tune_dir, 2)) >= 1 and sum(any(d.glob("checkpoint_*")) for d in
                                                                  tune_dir.glob("trial_*")) == 2, 300, driver)
    _kill(driver)
    finished = _finished_trials(tune_dir, 2)
    assert len(finished) == 1, "the first kill must land mid-search"

    driver = _start([*args, "--resume"])
    _wait(lambda: any(members.glob("seed-*/member.json")), 400, driver)
    _kill(driver)
    trained = {p.name: load_file(str(p / "weights.safetensors")) for p in members.glob("seed-*")}
    searched = {p: p.stat().st_mtime_ns for p in tune_dir.rglob("result.json")}
    assert len(trained) == 1 and not (tmp_path / "k" / "final" / "metrics.json").exists()
    assert all(_finished_trials(tune_dir, 2)[name] == lines for name, lines in finished.items()), "a finished trial ran again"
    report = run_module("tune.report", str(tmp_path / "k"))  # the killed experiment reads meanwhile
    assert report.returncode == 0 and "No final model yet" in (tmp_path / "k" / "report" / "report.html").read_text()

    proc = run_cli(*args, "--resume")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"({len(trained)} already trained)" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in searched} == searched, "the search ran again"
    assert not list((tmp_path / "k").glob(".*.tmp")), "final/ is renamed into place whole"
    results = load(tmp_path / "k")
    assert len(results.trials) == 2 and results.trials["trial_id"].is_unique and results.metrics["n_members"] == 2
    assert (results.trials["status"] == "completed").all() and (results.trials["epochs_run"] == 2).all()
    _assert_continued_in_a_new_process(results, killed)
    final_seeds = [m["seed"] for m in results.metrics["members"]]
    for name, weights in trained.items():  # the members trained before the kill are in final/ as they were
        i = final_seeds.index(int(name.removeprefix("seed-")))
        shipped = load_file(str(tmp_path / "k" / "final" / f"member-{i}.safetensors"))
        assert shipped.keys() == weights.keys() and all(torch.equal(shipped[k], v) for k, v in weights.items()), name
    _assert_out_of_fold(tmp_path / "k", results)
    _assert_tracked_once(store, results)


def _assert_continued_in_a_new_process(results, folder: str) -> None:
    """The trial whose worker was killed: each epoch once, from two processes (it continued from its checkpoint)."""
    epochs = results.epochs[results.epochs["trial_id"] == folder.split("_", 2)[2]]
    assert sorted(epochs["epoch"]) == [1, 2], "an epoch was repeated or lost"
    assert epochs["pid"].nunique() == 2, "the killed trial did not continue in a new process"


def _assert_tracked_once(store: str, results) -> None:
    """Three driver sessions, one parent run, one child run per trial (none written twice), a registered version."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("cxr-tune").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = sorted(r.data.tags["trial_id"] for r in runs if "mlflow.parentRunId" in r.data.tags)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert children == sorted(results.trials["trial_id"]), children
    version = client.get_model_version("cxr-k", "1")
    assert version.run_id == parents[0].info.run_id and "Decision threshold" in version.description
    assert "final/model.onnx" in {a.path for a in client.list_artifacts(parents[0].info.run_id, "final")}


def _assert_out_of_fold(experiment: Path, results) -> None:
    folds, predictions = pd.read_parquet(experiment / "final" / "folds.parquet"), results.predictions
    members = results.metrics["members"]
    assert len({m["seed"] for m in members}) == len(members) == 2 and [m["fold"] for m in members] == [0, 1]
    pool = folds[folds["split"].isin(["train", "val"])]
    assert set(pool["fold"]) == {0, 1} and (folds[folds["split"] == "test"]["fold"] == -1).all()
    assert pool.groupby("patient")["fold"].nunique().max() == 1  # patient-disjoint
    oof = predictions[predictions["split"] == "oof"].merge(folds, on="path", suffixes=("", "_saved"))
    assert len(oof) == len(pool) and oof["path"].is_unique and (oof["fold"] == oof["fold_saved"]).all()  # each once
    for k in range(2):
        scored = oof[oof[f"prob_member_{k}"].notna()]
        assert (scored[f"member_{k}"] == "oof").all() and (scored["fold"] == k).all()  # never trained on them
        assert set(oof.loc[oof[f"member_{k}"] != "oof", f"member_{k}"]) <= {"train", "val"}
    assert "Cross-validation" in (experiment / "report" / "report.html").read_text()
