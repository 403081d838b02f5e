"""Faults injected with real processes (no test-only switches in product code): a trial that always fails, a
trial's worker killed, the driver killed during the final stage; and --extend of a finished study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from test_run import REPO, run_cli
from tune.results import load
from tune.search import open_study_storage

pytestmark = pytest.mark.slow
TINY = ["--dataset", "synthetic", "--image-size", "32", "--max-epochs", "2", "--scheduler", "fifo"]

# The baseline trial draws a model only this driver knows (registered when the space file is imported): on the
# Ray workers it does not exist, so that trial fails on every attempt; the others train normally.
FAILING_SPACE = '''
import timm
from timm.models import register_model

@register_model
def cxr_fault_net(pretrained=False, **kwargs):
    return timm.create_model("test_efficientnet", **kwargs)

BASELINES = [{"backbone": "cxr_fault_net", "lr": 0.003}]

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


def test_failing_trial_errors_and_killed_trial_workers_continue_from_their_checkpoints(tmp_path):
    """Two faults in one search (each costs a Ray start-up): the baseline trial always fails, and the workers of the
    trials that train are SIGKILLed once one has reported 2 of its 4 epochs."""
    space = tmp_path / "faulty.py"
    space.write_text(FAILING_SPACE)
    args = ["--space", str(space), *TINY, "--max-epochs", "4", "--num-samples", "3", "--final-seeds", "1",
            "--final-epochs", "1", "--results-dir", str(tmp_path / "r"), "--name", "f"]
    driver = subprocess.Popen([sys.executable, "-m", "tune.run", *args], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    tune_dir = tmp_path / "r" / "f" / "tune"
    _wait(lambda: any(len(_epochs_reported(d)) >= 2 for d in tune_dir.glob("trial_*")), 300, driver)
    # the trials' actor processes (Ray titles them ray::ImplicitFunc) in the session of this driver's private cluster
    pids = subprocess.run(["pgrep", "-s", str(driver.pid), "-f", "ray::ImplicitFunc"], capture_output=True, text=True).stdout.split()
    assert pids, "no trial worker process found"
    for pid in pids:
        os.kill(int(pid), signal.SIGKILL)
    out, _ = driver.communicate(timeout=500)
    assert driver.returncode == 0, out[-4000:]
    results = load(tmp_path / "r" / "f")
    failing = results.trials["backbone"] == "cxr_fault_net"
    failed, trained = results.trials[failing], results.trials[~failing]
    assert len(failed) >= 1 and (failed["status"] == "error").all() and failed["error"].str.contains("InputError").all()
    assert len(trained) >= 1 and (trained["status"] == "completed").all() and (trained["epochs_run"] == 4).all()
    epochs = results.epochs[results.epochs["trial_id"].isin(trained["trial_id"])].groupby("trial_id")
    assert all(sorted(e["epoch"]) == [1, 2, 3, 4] for _, e in epochs), "an epoch was repeated or lost"
    assert max(e["pid"].nunique() for _, e in epochs) == 2, "no killed trial continued in a new process"
    assert results.best["config"]["backbone"] == "test_efficientnet" and results.test["test"] is not None
    study = optuna.load_study(study_name="f", storage=open_study_storage(tmp_path / "r" / "f" / "optuna.journal"))
    assert [t.state.name for t in study.trials].count("FAIL") == len(failed)


def test_driver_killed_in_the_final_stage_resumes_without_searching_again(tmp_path):
    # one member at a time (2 CPUs per task on a 2-CPU machine), so the kill lands between two members
    args = ["--space", "smoke", *TINY, "--num-samples", "2", "--final-seeds", "2", "--final-epochs", "3",
            "--cpus-per-trial", "2", "--results-dir", str(tmp_path), "--name", "d"]
    driver = subprocess.Popen([sys.executable, "-m", "tune.run", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    members = tmp_path / "d" / "final-members"
    _wait(lambda: any(members.glob("seed-*/member.json")), 400, driver)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    trained = {p.name for p in members.glob("seed-*")}
    search_files = {p: p.stat().st_mtime_ns for p in (tmp_path / "d" / "tune").rglob("result.json")}
    assert len(trained) == 1 and not (tmp_path / "d" / "final" / "metrics.json").exists()
    proc = run_cli(*args, "--resume")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "(1 already trained)" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in search_files} == search_files, "the search ran again"
    results = load(tmp_path / "d")
    assert results.test["k"] == 2 and f"seed-{results.test['members'][0]['seed']}" in trained | {f"seed-{m['seed']}" for m in results.test["members"]}


def test_extend_adds_trials_the_sampler_sees_and_keeps_the_previous_final(tmp_path):
    args = ["--space", "smoke", *TINY, "--max-epochs", "1", "--final-seeds", "1", "--results-dir", str(tmp_path), "--name", "x"]
    first = run_cli(*args, "--num-samples", "2")
    assert first.returncode == 0, first.stderr[-4000:]
    before = load(tmp_path / "x")
    extended = run_cli("--results-dir", str(tmp_path), "--name", "x", "--extend", "2")
    assert extended.returncode == 0, extended.stderr[-4000:]
    after = load(tmp_path / "x")
    assert len(after.trials) == 4 and sorted(after.trials["trial_index"]) == [1, 2, 3, 4]
    assert set(before.trials["trial_id"]) < set(after.trials["trial_id"])
    study = optuna.load_study(study_name="x", storage=open_study_storage(tmp_path / "x" / "optuna.journal"))
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert (tmp_path / "x" / "report-1" / "report.html").is_file() and (tmp_path / "x" / "report" / "report.html").is_file()
    if after.best["trial_id"] != before.best["trial_id"]:
        assert (tmp_path / "x" / "final-1" / "model.json").is_file()
    assert (tmp_path / "x" / "final" / "model.json").is_file()
