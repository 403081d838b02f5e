"""tune.tracking: the demo's MLflow store (the session's demo runs with --mlflow): one parent run, one child run per
trial with its state and per-epoch history, the final model on the parent; and the answers before Ray starts.
(A driver killed mid-search, resumed, with --register: tests/test_faults.py.)"""

from __future__ import annotations

import sys
from collections import Counter

import pytest

from tune.results import load
from tune.tracking import MLFLOW_EXPERIMENT, RUN_STATUS

pytestmark = pytest.mark.slow


def _runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def test_demo_has_one_parent_run_and_one_child_run_per_trial_with_its_state_and_history(demo):
    client, parents, children = _runs(f"sqlite:///{demo.folder.parent / 'mlflow.db'}")
    trials = load(demo.folder).trials.set_index("trial_id")
    assert [p.info.run_name for p in parents] == ["demo"] and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.params["space"] == "smoke" and parent.data.params["metric"] == "val_spec_at_recall"
    assert parent.data.tags["project_version"]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    # one child per trial, none twice (test_run's --extend of a copy continues the same parent: its trials are there too)
    counts = Counter(c.data.tags["trial_id"] for c in children)
    assert set(trials.index) <= set(counts) and max(counts.values()) == 1, counts
    children = [c for c in children if c.data.tags["trial_id"] in trials.index]
    assert {c.data.tags["state"] for c in children} >= {"completed", "pruned"}  # ASHA stopped some
    for child in children:
        row = trials.loc[child.data.tags["trial_id"]]
        assert child.data.tags["state"] == row["status"] and child.info.status == RUN_STATUS[row["status"]]
        assert child.data.params["backbone"] == row["backbone"]
        history = client.get_metric_history(child.info.run_id, "val_auroc")
        assert [m.step for m in history] == list(range(1, row["epochs_run"] + 1))
    artifacts = {a.path for folder in ("final", "report") for a in client.list_artifacts(parent.info.run_id, folder)}
    assert {"final/model.json", "final/metrics.json", "report/report.html", "report/report.json"} <= artifacts
    assert "plan.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    test = load(demo.folder).metrics["test"]
    assert parent.data.metrics["test_recall"] == pytest.approx(test["recall"])
    assert parent.data.metrics["test_recall_ci95_low"] == pytest.approx(test["recall_ci95"][0])


def test_an_unreachable_tracking_server_stops_the_run_before_ray_in_one_line(main_in_process, assert_input_error,
                                                                           tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # --mlflow without a URI takes it
    code, err = main_in_process("--space", "smoke", "--dataset", "synthetic", "--mlflow", "--results-dir", str(tmp_path / "r"))
    assert_input_error(code, err, uri, "cannot be reached")
    import ray

    assert not (tmp_path / "r").exists() and not ray.is_initialized()


def test_mlflow_without_the_extra_and_register_without_mlflow_are_refused(main_in_process, assert_input_error,
                                                                       tmp_path, monkeypatch):
    args = ("--space", "smoke", "--dataset", "synthetic", "--results-dir", str(tmp_path))
    code, err = main_in_process(*args, "--register", "cxr")
    assert_input_error(code, err, "--register cxr needs --mlflow")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    code, err = main_in_process(*args, "--mlflow")
    assert_input_error(code, err, 'pip install -e ".[mlflow]"')


def test_register_logs_the_onnx_graph_only_of_a_model_cxr_export_can_carry(tmp_path, final_model_with):
    """--register: a CLAHE model's version gets no graph (cxr.export refuses it), an equalising model's gets one."""
    from pathlib import Path

    from tune.results import ExperimentPaths
    from tune.tracking import Tracker, _log_onnx

    logged = []

    class Client:
        def log_artifact(self, run_id: str, path: str, folder: str) -> None:
            logged.append((run_id, Path(path).name, folder))

    tracker = Tracker("sqlite:///unused.db", "0", parent_id="parent")
    for contrast_norm, graph in (("clahe", False), ("equalize", True)):
        final_model_with(tmp_path / contrast_norm / "final", contrast_norm=contrast_norm)
        assert _log_onnx(Client(), tracker, ExperimentPaths(tmp_path / contrast_norm)) is graph, contrast_norm
    assert logged == [("parent", "model.onnx", "final")]
