"""Driver-side MLflow tracking (--mlflow, the optional extra [mlflow]): one parent run per experiment, one nested child
run per trial written as each trial ends (a Tune callback on the driver) and again, where missing, after the search,
the final model on the parent run and, with --register, a registered model version.

Every write goes through MlflowClient with explicit run ids (no global active run); a child run is found again by its
trial_id tag, so --resume and --extend never write a trial twice. Imported only when --mlflow is asked for.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from ray.tune import Callback

from cxr.errors import InputError
from cxr.jsonio import read_json, write_json
from tune.budget import Budget
from tune.results import ExperimentPaths, TrialRecord, create_trial_record, record_status
from tune.settings import RUN_PARAMETERS

MLFLOW_EXPERIMENT = "cxr-tune"  # every experiment of a tracking store is a parent run in this MLflow experiment
# a trial's end state -> the MLflow run status (the tag "state" keeps the state itself)
RUN_STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "pruned": "KILLED", "budget": "KILLED",
              "error": "FAILED"}
EPOCH_METRICS = ("lr", "time_this_iter_s")  # besides train_* and val_*


@dataclass(frozen=True)
class Tracker:
    """Where an experiment's runs go: the store, the MLflow experiment and the parent run (None until started)."""

    uri: str
    experiment_id: str
    parent_id: str | None = None

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)


def connect(uri: str) -> Tracker:
    """Reach the store (and create the MLflow experiment) before Ray starts; a store that cannot be reached stops the
    run here, in one line naming the URI."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail in seconds, not after minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
        if found is not None:
            return Tracker(uri, found.experiment_id)
        # an embedded store keeps its artifacts beside it (MLflow's default would be ./mlruns of wherever it runs)
        db = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
        artifacts = (Path(db).resolve().parent / "mlflow-artifacts").as_uri() if db else None
        return Tracker(uri, client.create_experiment(MLFLOW_EXPERIMENT, artifact_location=artifacts))
    except Exception as exc:  # MLflow raises its own, requests' and SQLAlchemy's errors here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(f"--mlflow {uri}: the tracking store cannot be reached ({first}): start the server, "
                         "fix the URI, or leave --mlflow out") from None


def start_parent(tracker: Tracker, paths: ExperimentPaths, run: dict) -> Tracker:
    """The experiment's parent run: created once (its id kept in mlflow.json), continued by --resume and --extend."""
    client = tracker.client()
    if paths.tracking.is_file():
        saved = read_json(paths.tracking)
        client.update_run(saved["parent_id"], status="RUNNING")
        return Tracker(tracker.uri, saved["experiment_id"], saved["parent_id"])
    tags = {"project_version": _version(), **({"git_commit": commit} if (commit := _git_commit()) else {})}
    parent = client.create_run(tracker.experiment_id, run_name=paths.root.name, tags=tags).info.run_id
    from mlflow.entities import Param

    client.log_batch(parent, params=[Param(k, str(run.get(k))) for k in RUN_PARAMETERS if k in run])
    write_json(paths.tracking, {"uri": tracker.uri, "experiment_id": tracker.experiment_id, "parent_id": parent})
    return Tracker(tracker.uri, tracker.experiment_id, parent)


def log_trials(tracker: Tracker, records: list[TrialRecord]) -> int:
    """After the search: a child run for every trial that has none (or an unfinished one); returns how many were
    written."""
    client = tracker.client()
    children = _children(client, tracker)
    return sum(_log_trial(client, tracker, record, children.get(record.trial_id)) for record in records)


class TrialRunsCallback(Callback):
    """Writes a trial's child run when it ends, from the driver (single-process and data-parallel trials alike,
    on any node): a driver killed later leaves the runs of the trials that ended before. Picklable (Ray keeps
    the callbacks with the experiment for --resume): the client is made anew where it is needed; the budget (whose
    stopped trials get the state budget) unpickles as the resuming session's (tune.budget.Budget.__reduce__)."""

    def __init__(self, tracker: Tracker, budget: Budget | None = None):
        self.tracker, self.budget = tracker, budget

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._log(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._log(trial, errored=True)

    def _log(self, trial, errored: bool = False) -> None:
        record = _record_of(trial, errored, self.budget.stopped if self.budget else ())
        client = self.tracker.client()
        _log_trial(client, self.tracker, record, _children(client, self.tracker, record.trial_id).get(record.trial_id))


def log_final(tracker: Tracker, paths: ExperimentPaths, metrics: dict, report: Path) -> None:
    """The final model on the parent run: final/ as an artifact, the report, plan.json, the headline metrics with
    intervals."""
    from mlflow.entities import Metric

    client, now = tracker.client(), int(time.time() * 1000)
    client.log_artifacts(tracker.parent_id, str(paths.final), "final")
    client.log_artifact(tracker.parent_id, str(report), "report")
    client.log_artifact(tracker.parent_id, str(report.with_name("report.json")), "report")
    client.log_artifact(tracker.parent_id, str(paths.plan))  # what the run decided, the final stage's seeds included
    values = {"threshold": metrics["threshold"], "temperature": metrics["temperature"]}
    for split in (metrics["threshold_chosen_on"], "test"):
        for key, value in (metrics.get(split) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[f"{split}_{key}"] = value
            elif key.endswith("_ci95") and isinstance(value, (list, tuple)) and len(value) == 2:
                values[f"{split}_{key}_low"], values[f"{split}_{key}_high"] = value
    client.log_batch(tracker.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()
                                                 if v is not None and v == v])


def register(tracker: Tracker, paths: ExperimentPaths, name: str, metrics: dict) -> int:
    """A version of the registered model `name` whose source is the parent run's final/ artifact; its description
    holds the threshold rule and the model card. With the [export] extra the ONNX graph is logged in final/ first."""
    client = tracker.client()
    onnx = _log_onnx(client, tracker, paths)
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="cxr-tune pneumonia detection models")
    source = f"{client.get_run(tracker.parent_id).info.artifact_uri}/final"
    description = (f"Decision threshold {metrics['threshold']:.4f} on the calibrated probability: "
                   f"{metrics['threshold_rule']}\n\n" + paths.model_card.read_text())
    version = client.create_model_version(name, source, run_id=tracker.parent_id, description=description,
                                          tags={"onnx": str(onnx)})
    return int(version.version)


def finish(tracker: Tracker, status: str = "FINISHED") -> None:
    tracker.client().set_terminated(tracker.parent_id, status=status)


def _log_trial(client, tracker: Tracker, record: TrialRecord, existing) -> int:
    """Write or complete the child run of one trial; 0 when it is already complete."""
    from mlflow.entities import Metric, Param, RunTag

    state = record_status(record)
    logged = int(existing.data.tags.get("epochs_logged", 0)) if existing else 0
    if existing and existing.data.tags.get("state") == state and logged >= len(record.epochs):
        return 0
    if existing is None:
        tags = {"mlflow.parentRunId": tracker.parent_id, "trial_id": record.trial_id, "trial_index": str(record.trial_index)}
        run_id = client.create_run(tracker.experiment_id, run_name=f"trial_{record.trial_index:04d}", tags=tags).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in sorted(record.config.items())]
        for start in range(0, len(params), 100):  # MLflow's batch limit
            client.log_batch(run_id, params=params[start:start + 100])
    else:
        run_id = existing.info.run_id
    metrics = [Metric(key, float(value), int(row.get("timestamp", time.time()) * 1000), int(row["epoch"]))
               for row in record.epochs.iloc[logged:].to_dict("records") for key, value in row.items()
               if _epoch_metric(key, value)]
    tags = [RunTag("state", state), RunTag("epochs_logged", str(len(record.epochs)))]
    if record.error:
        tags.append(RunTag("error", record.error.strip().splitlines()[0][:500]))
    for start in range(0, max(len(metrics), 1), 900):  # metrics and tags in one batch: a killed driver leaves both or neither
        client.log_batch(run_id, metrics=metrics[start:start + 900], tags=tags if start + 900 >= len(metrics) else [])
    client.set_terminated(run_id, status=RUN_STATUS[state])
    return 1


def _epoch_metric(key: str, value) -> bool:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    return numeric and (key.startswith(("train_", "val_")) or key in EPOCH_METRICS)


def _children(client, tracker: Tracker, trial_id: str | None = None) -> dict:
    """trial_id -> the child run of the parent that has that tag (one query, all pages)."""
    where = f"tags.mlflow.parentRunId = '{tracker.parent_id}'" + (f" and tags.trial_id = '{trial_id}'" if trial_id else "")
    found, token = {}, None
    while True:
        page = client.search_runs([tracker.experiment_id], filter_string=where, max_results=1000, page_token=token)
        found.update({run.data.tags["trial_id"]: run for run in page if "trial_id" in run.data.tags})
        token = page.token
        if not token:
            return found


def _record_of(trial, errored: bool, stopped_by_budget: Collection[str] = ()) -> TrialRecord:
    """What the driver has of a trial that just ended: its config, every epoch it reported (the trial's result.json,
    which holds the epochs before a --resume too) and its error's first line."""
    folder = Path(trial.local_path)
    lines = (folder / "result.json").read_text().splitlines() if (folder / "result.json").is_file() else []
    epochs = pd.DataFrame([json.loads(line) for line in lines if line.strip()])
    error = None
    if errored:
        text = Path(trial.error_file).read_text() if trial.error_file and Path(trial.error_file).is_file() else ""
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("Failure # ")]
        error = lines[-1] if lines else "the trial failed"
    return create_trial_record(folder, trial.config, epochs, error, stopped_by_budget)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cxr-tune")
    except PackageNotFoundError:
        return "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _log_onnx(client, tracker: Tracker, paths: ExperimentPaths) -> bool:
    """final/model.onnx as an artifact when the [export] extra is installed (checked against PyTorch as
    cxr.export checks it); False without the extra."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return False
    from cxr.export import TOLERANCE, check_exportable, export_checked
    from cxr.package import load_model

    model = load_model(paths.final)
    try:
        check_exportable(model)
    except InputError:
        return False  # cxr.export refuses it (CLAHE): the registered version has no graph, its tag says so
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "model.onnx"
        if not export_checked(model, target) <= TOLERANCE:
            return False
        client.log_artifact(tracker.parent_id, str(target), "final")
    return True
