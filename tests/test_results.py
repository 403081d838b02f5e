"""Result tables and files: trial status, best/last columns, the leaderboard, JSON without NaN, load() round trip."""

from __future__ import annotations

import math

import pandas as pd

import pytest

from cxr.jsonio import read_json, write_json
from tune.results import (ExperimentPaths, TrialRecord, create_tables, leaderboard, load, create_trial_record, trial_status,
                          write_table)


def _epochs(aurocs, stopped_early=False):
    n = len(aurocs)
    return pd.DataFrame({"epoch": range(1, n + 1), "val_auroc": aurocs, "val_loss": [1.0 / (i + 1) for i in range(n)],
                         "stopped_early": [False] * (n - 1) + [stopped_early], "time_total_s": [float(i + 1) for i in range(n)],
                         "node_ip": ["127.0.0.1"] * n})


def _records():
    return [
        TrialRecord("a", 1, {"lr": 1e-3, "epochs": 3}, _epochs([0.6, 0.7, 0.65]), None),
        TrialRecord("b", 2, {"lr": 1e-2, "epochs": 3}, _epochs([0.5]), None),
        TrialRecord("c", 3, {"lr": 1e-4, "epochs": 3}, _epochs([0.8, 0.9], stopped_early=True), None),
        TrialRecord("d", 4, {"lr": 1e-1, "epochs": 3}, pd.DataFrame(), "RuntimeError: boom"),
    ]


def test_a_trial_the_budget_stopped_is_recorded_so_once_and_tabled_as_budget():
    """--time-budget: whether the budget stopped a trial is set when its record is made; the tables read the record."""
    records = [create_trial_record(f"trial_{i}_{trial_id}", {"epochs": 3}, _epochs([0.6, 0.7]), None, {"s"})
               for i, trial_id in ((1, "s"), (2, "o"))]
    assert [r.stopped_by_budget for r in records] == [True, False]
    trials, _ = create_tables(records, "val_auroc")
    assert dict(zip(trials["trial_id"], trials["status"])) == {"s": "budget", "o": "pruned"}


def test_statuses_and_best_first():
    trials, epochs = create_tables(_records(), "val_auroc")
    assert list(trials["trial_id"]) == ["c", "a", "b", "d"]
    assert dict(zip(trials["trial_id"], trials["status"])) == {"a": "completed", "b": "pruned", "c": "early_stopped", "d": "error"}
    a = trials.set_index("trial_id").loc["a"]
    assert (a["best_val_auroc"], a["last_val_auroc"], a["epochs_run"], a["lr"]) == (0.7, 0.65, 3, 1e-3)
    assert a["best_val_loss"] == min(_epochs([0, 0, 0])["val_loss"])
    assert (a["best_epoch"], a["at_best_val_auroc"], a["at_best_val_loss"]) == (2, 0.7, 0.5)  # one epoch's row
    assert len(epochs) == 6 and set(epochs["trial_id"]) == {"a", "b", "c"}


def test_a_minimised_metric_ranks_the_lowest_first_at_its_lowest_epoch_and_is_the_best_trial():
    from tune.experiment import _best

    records = _records()
    trials, _ = create_tables(records, "val_loss")
    assert list(trials["trial_id"]) == ["a", "c", "b", "d"]  # by val_auroc c leads (above)
    a = trials.iloc[0]
    assert (a["best_val_loss"], a["best_epoch"], a["at_best_val_auroc"]) == (pytest.approx(1 / 3), 3, 0.65)
    assert list(leaderboard(trials, "val_loss", rows=2)["trial_id"]) == ["a", "c"]
    assert _best(trials, records, "val_loss")["trial_id"] == "a"


@pytest.mark.parametrize("errored, epochs_run, planned, stopped_early, status", [
    (True, 3, 3, False, "error"), (False, 3, 3, False, "completed"), (False, 3, 3, True, "completed"),
    (False, 2, 3, True, "early_stopped"), (False, 1, 3, False, "pruned"), (False, 0, 3, False, "pruned"),
])
def test_trial_status(errored, epochs_run, planned, stopped_early, status):
    assert trial_status(errored, epochs_run, planned, stopped_early) == status


def test_a_config_without_epochs_plans_the_configs_default():
    record = TrialRecord("e", 5, {"lr": 1e-3}, _epochs([0.5, 0.6]), None)  # TrainConfig trains 10 epochs by default
    trials, _ = create_tables([record], "val_auroc")
    assert trials["status"].iloc[0] == "pruned"


def test_leaderboard_keeps_the_rank_and_the_columns_a_reader_compares():
    trials, _ = create_tables(_records(), "val_auroc")
    top = leaderboard(trials, "val_auroc", rows=2)
    assert list(top["trial_id"]) == ["c", "a"]
    assert list(top.columns) == ["trial_index", "trial_id", "status", "epochs_run", "best_val_auroc", "lr"]


def test_json_writes_nan_as_null(tmp_path):
    write_json(tmp_path / "x.json", {"a": math.nan, "b": [1.5, float("nan")]})
    assert read_json(tmp_path / "x.json") == {"a": None, "b": [1.5, None]}


def test_load_round_trip(tmp_path):
    paths = ExperimentPaths(tmp_path)
    trials, epochs = create_tables(_records(), "val_auroc")
    write_table(paths.trials, trials)
    write_table(paths.epochs, epochs)
    write_table(paths.splits, pd.DataFrame({"path": ["x"], "label": [1], "patient": ["p1"], "split": ["train"]}))
    write_json(paths.best, {"trial_id": "c"})
    results = load(tmp_path)
    assert results.best == {"trial_id": "c"} and results.metrics is None and results.predictions is None
    pd.testing.assert_frame_equal(results.trials, trials)


def test_a_data_parallel_trial_s_error_is_its_first_failed_worker_s_without_colour_codes():
    from ray.exceptions import RayTaskError
    from ray.train import WorkerGroupError

    from cxr.errors import InputError
    from tune.results import error_text

    group = WorkerGroupError("2 workers failed", {1: ValueError("rank 1"), 0: InputError("\x1b[36munknown\x1b[39m model")})
    as_ray_raises_it = RayTaskError("ImplicitFunc.train", "Traceback ...", group).as_instanceof_cause()
    assert error_text(as_ray_raises_it) == error_text(group) == "InputError: unknown model"
    assert error_text(ValueError("x" * 5000)) == "ValueError: " + "x" * 1988  # a single process's, cut at 2,000
