"""The experiment folder results/<name>/: paths, DataFrame and JSON writers, and load() for readers."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxr.config import TrainConfig
from cxr.final_metrics import FinalMetrics, read_metrics
from cxr.monitors import minimised
from cxr.jsonio import read_json

# what the console and the report show of each trial, after its id, status and scores (keys a space may not search are skipped)
LEADERBOARD_KEYS = ["backbone", "image_size", "lr", "scheduler", "dropout", "unfrozen_blocks", "ema_decay", "batch_size"]


@dataclass(frozen=True)
class ExperimentPaths:
    root: Path

    run = property(lambda self: self.root / "run.json")
    splits = property(lambda self: self.root / "splits.parquet")
    trials = property(lambda self: self.root / "trials.parquet")
    epochs = property(lambda self: self.root / "epochs.parquet")
    best = property(lambda self: self.root / "best.json")
    journal = property(lambda self: self.root / "optuna.journal")
    searches = property(lambda self: self.root / "searches.json")
    plan = property(lambda self: self.root / "plan.json")  # what the run decided (tune.plan)
    final = property(lambda self: self.root / "final")
    metrics = property(lambda self: self.root / "final" / "metrics.json")
    predictions = property(lambda self: self.root / "final" / "predictions.parquet")
    history = property(lambda self: self.root / "final" / "history.parquet")
    folds = property(lambda self: self.root / "final" / "folds.parquet")  # --final folds: every film's fold and roles
    model = property(lambda self: self.root / "final" / "model.json")
    model_card = property(lambda self: self.root / "final" / "model_card.md")
    member_checkpoints = property(lambda self: self.root / "member-checkpoints")  # members trained so far, until final/
    report = property(lambda self: self.root / "report")
    tracking = property(lambda self: self.root / "mlflow.json")  # --mlflow: the store and the parent run's id
    budget = property(lambda self: self.root / "budget.json")  # --time-budget: spent so far, stopped trials

    @property
    def finished(self) -> bool:
        """final/ appears whole, by one rename (tune.final_stage.write_final): it marks the experiment finished."""
        return self.final.is_dir()

    @property
    def study_name(self) -> str:
        """The Optuna study keeps the name the experiment was created with, also in a renamed or copied folder."""
        return read_json(self.run)["name"] if self.run.is_file() else self.root.name


@dataclass
class Results:
    trials: pd.DataFrame
    epochs: pd.DataFrame
    splits: pd.DataFrame
    predictions: pd.DataFrame | None
    best: dict
    metrics: FinalMetrics | None  # final/metrics.json: threshold and how it was chosen, metrics with intervals, ...


def load(path: str | Path) -> Results:
    """Read an experiment folder written by tune.run."""
    p = ExperimentPaths(Path(path))
    return Results(
        trials=pd.read_parquet(p.trials),
        epochs=pd.read_parquet(p.epochs),
        splits=pd.read_parquet(p.splits),
        predictions=pd.read_parquet(p.predictions) if p.predictions.exists() else None,
        best=read_json(p.best),
        metrics=read_metrics(p.metrics) if p.finished else None,
    )


def write_table(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)


@dataclass
class TrialRecord:
    """What the search left of one trial, free of Ray types."""

    trial_id: str
    trial_index: int  # creation order, 1 = first (the baselines come first)
    config: dict
    epochs: pd.DataFrame  # one row per reported epoch
    error: str | None
    stopped_by_budget: bool = False  # --time-budget stopped it at an epoch boundary


def trial_folder_name(index: int, trial_id: str) -> str:
    """trial_<index>_<id>: what Ray names a trial's folder (and the live table's row) in every Tune experiment."""
    return f"trial_{index:04d}_{trial_id}"


def error_text(error: BaseException, limit: int = 2000) -> str:
    """A trial's error as the trials table keeps it: a data-parallel trial's is its first failed worker's (Ray Train's
    WorkerGroupError only wraps them), without the terminal's colour codes."""
    failures = getattr(error, "worker_failures", None)  # ray.train.WorkerGroupError: {rank: exception}
    if failures:
        error = failures[min(failures)]
    return re.sub(r"\x1b\[[0-9;]*m", "", f"{type(error).__name__}: {error}")[:limit]


def create_trial_record(folder: str | Path, config: dict, epochs: pd.DataFrame, error: str | None,
                      stopped_by_budget: Collection[str] = ()) -> TrialRecord:
    """A trial's record from its folder (trial_folder_name: index and id), config, reported rows (an epoch Ray
    trained twice counts once; the flattened config/<key> columns dropped), error and whether it is among the
    trials --time-budget stopped: the one place a trial's budget status is recorded; the tables, MLflow and the
    report read it from the record."""
    _, index, trial_id = Path(folder).name.split("_", 2)
    epochs = epochs.drop(columns=[c for c in epochs.columns if c.startswith("config/")])
    return TrialRecord(trial_id, int(index), dict(config), one_row_per_epoch(epochs), error,
                       trial_id in stopped_by_budget)


def create_tables(records: list[TrialRecord], metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """trials (one row per trial: status, config keys, best/last val metrics; best first, in the metric's direction,
    cxr.monitors) and epochs (one row per epoch)."""
    rows, frames = [], []
    for record in records:
        epochs = record.epochs
        frames.append(epochs.assign(trial_id=record.trial_id, trial_index=record.trial_index))
        row = {"trial_id": record.trial_id, "trial_index": record.trial_index, "status": record_status(record),
               "epochs_run": len(epochs),
               "time_s": float(epochs["time_total_s"].iloc[-1]) if len(epochs) else 0.0,
               "node_id": _last(epochs, "node_id"), "node_ip": _last(epochs, "node_ip"), "error": record.error}
        row.update(record.config)
        scored = [c for c in epochs.columns if c.startswith("val_") or c == "gpu_peak_mem_mb"]
        for column in scored:
            if column not in _NOT_RANKED:  # the best of a count or a threshold means nothing
                row[f"best_{column}"] = epochs[column].min() if minimised(column) else epochs[column].max()
            row[f"last_{column}"] = epochs[column].iloc[-1]
        if metric in epochs and epochs[metric].notna().any():
            at_best = epochs.loc[epochs[metric].idxmin() if minimised(metric) else epochs[metric].idxmax()]
            row["best_epoch"] = int(at_best["epoch"])
            row.update({f"at_best_{c}": at_best[c] for c in scored})
        rows.append(row)
    trials = pd.DataFrame(rows)
    if f"best_{metric}" in trials:
        trials = trials.sort_values(f"best_{metric}", ascending=minimised(metric), na_position="last", kind="stable")
    epochs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return trials.reset_index(drop=True), epochs


_NOT_RANKED = {"val_tp", "val_fp", "val_tn", "val_fn", "val_threshold", "val_threshold_at_recall"}


def planned_epochs(config: dict) -> int:
    """The epochs a trial's config asks for (TrainConfig's default where the space leaves the key out)."""
    return int(config.get("epochs", TrainConfig.epochs))


def one_row_per_epoch(epochs: pd.DataFrame) -> pd.DataFrame:
    """An epoch Ray trained twice (a lost node whose checkpoint it had not committed) counts once: the later report."""
    if "epoch" not in epochs:
        return epochs
    return epochs.drop_duplicates("epoch", keep="last").reset_index(drop=True)


def record_status(record: TrialRecord) -> str:
    if record.stopped_by_budget and record.error is None:
        return "budget"
    epochs = record.epochs
    stopped_early = bool(len(epochs) and "stopped_early" in epochs and epochs["stopped_early"].iloc[-1])
    return trial_status(record.error is not None, len(epochs), planned_epochs(record.config), stopped_early)


def trial_status(errored: bool, epochs_run: int, planned: int, stopped_early: bool) -> str:
    """error | completed (all planned epochs) | early_stopped (its own patience ran out) | pruned (the trial
    scheduler, ASHA, stopped it): the one rule for the tables and the Optuna journal (record_status adds budget:
    stopped by --time-budget)."""
    if errored:
        return "error"
    if epochs_run >= planned:
        return "completed"
    return "early_stopped" if stopped_early else "pruned"


def leaderboard(trials: pd.DataFrame, metric: str, rows: int) -> pd.DataFrame:
    """The top rows of the trials table (already ranked by best metric) with the columns a reader compares."""
    columns = dict.fromkeys(["trial_index", "trial_id", "status", "epochs_run", f"best_{metric}", "best_val_auroc",
                             "best_val_shift_auroc", *LEADERBOARD_KEYS])
    return trials[[c for c in columns if c in trials]].head(rows)  # (dict: the metric may be val_auroc itself)


def _last(frame: pd.DataFrame, column: str):
    return frame[column].iloc[-1] if column in frame and len(frame) else None
