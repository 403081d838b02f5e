"""Driver-side search: the Ray Tune experiment (Optuna searcher with its journal, the ASHA/FIFO trial scheduler,
checkpoints). The code that runs inside trials is tune/trainable.py; cluster setup is tune/cluster.py; the final
stage is tune/final_stage.py."""

from __future__ import annotations

import functools
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
import pandas as pd
import ray
from ray import tune as ray_tune
from ray.tune import Callback, CLIReporter
from ray.tune.search import Searcher
from ray.tune.stopper import Stopper
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from tune.budget import active
from tune.cluster import COORDINATOR_CPU
from tune.results import TrialRecord, error_text, make_trial_record, planned_epochs, trial_folder_name, trial_status
from tune.settings import is_uri
from tune.spaces import CheckedSpace, Space
from tune.trainable import TrialContext, train_trial

TUNE_DIR_NAME = "tune"
STARTUP_TRIALS = 10  # random trials before TPE steers: Optuna's default, kept after measuring (BENCHMARKS.md)
STARTUP_SHARE = 4  # at most a quarter of a search (or STARTUP_TRIALS) starts before TPE can steer (BENCHMARKS.md)
TRIAL_RETRIES = 2  # failures in a row (no new epoch between) a trial survives, restarting from its last checkpoint


@dataclass(frozen=True)
class SearchSettings:
    metric: str
    num_samples: int
    max_epochs: int
    trial_scheduler: str  # asha | fifo (the LR schedule is the config key "scheduler")
    cpus_per_trial: float  # per worker with workers_per_trial > 1
    gpus_per_trial: float
    workers_per_trial: int
    max_concurrent: int
    seed: int
    storage_path: str  # folder or URI holding the Ray Tune experiments
    journal_path: str  # the Optuna study (a journal file on the driver's machine)
    study_name: str
    tune_dir_name: str = TUNE_DIR_NAME  # tune/ for the first search, tune-extend-<k>/ for each --extend
    first_index: int = 1  # trial_index of this search's first trial (after the trials of earlier searches)
    enqueue_baselines: bool = True  # the space's BASELINES run first, once per study
    config_keys: frozenset[str] = frozenset()  # keys every trial's config has (the live table shows some of them)
    local_cluster: bool = True  # the run started its own Ray cluster (no --address)
    budget_key: str | None = None  # --time-budget: the tune.budget.active key of this run's budget


def run_search(settings: SearchSettings, space: Space, checked: CheckedSpace, data_ref: ray.ObjectRef,
               weight_refs: dict[str, ray.ObjectRef], resume: bool, train_fn=train_trial,
               callbacks: tuple[Callback, ...] = ()) -> list[TrialRecord]:
    """Run (or resume) one Tune experiment; every trial's config, per-epoch metrics and error. train_fn(config,
    context) is what each trial runs (tune.trainable.train_trial; benchmarks/bench_scale.py hands in a stand-in
    that reports a synthetic learning curve, to measure everything but the training). callbacks: driver-side Tune
    callbacks besides the product's own (tune.tracking's child runs)."""
    context = TrialContext(data_ref, weight_refs, settings.workers_per_trial,
                           settings.cpus_per_trial, settings.gpus_per_trial, settings.storage_path)
    trainable = _trainable(context, settings, train_fn)
    if settings.first_index == 1 and not resume:
        size = f"up to {settings.num_samples} trials in the time budget" if settings.budget_key else f"{settings.num_samples} trials"
        cap = startup_cap(settings.num_samples)  # None: no cap (bench_scale.py's ungated arm)
        until = "any number" if cap is None else f"at most {min(cap, settings.num_samples)}"
        print(f"search: {size}; TPE steers once {STARTUP_TRIALS} have finished, and until then "
              f"{until} start (baselines, then random)", flush=True)
    if resume:
        tuner = ray_tune.Tuner.restore(tune_dir(settings), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = ray_tune.Tuner(trainable, tune_config=_tune_config(settings, space, checked),
                               run_config=_run_config(settings, callbacks))
    return [_record(result) for result in tuner.fit()]


def drop_finished_checkpoints(settings: SearchSettings, records: list[TrialRecord]) -> None:
    """Finished trials need no checkpoint (resume skips them, the final stage trains from scratch): only errored
    trials keep theirs, for --resume. Local storage only; on URIs CheckpointConfig(num_to_keep=1) bounds them."""
    if is_uri(settings.storage_path):
        return
    root = Path(tune_dir(settings))
    for record in records:
        if record.error is None:
            for folder in root.glob(f"trial_*_{record.trial_id}/checkpoint_*"):
                shutil.rmtree(folder, ignore_errors=True)


def can_restore(settings: SearchSettings) -> bool:
    return ray_tune.Tuner.can_restore(tune_dir(settings))


def finished_records(settings: SearchSettings) -> list[TrialRecord]:
    """The trials of a finished Tune experiment, read back without running anything."""
    analysis = ray_tune.ExperimentAnalysis(tune_dir(settings))
    configs = {Path(t.path).name: t.config for t in analysis.trials}  # ResultGrid drops errored trials' configs
    return [_record(result, configs.get(Path(result.path).name)) for result in ray_tune.ResultGrid(analysis)]


def _trainable(context: TrialContext, settings: SearchSettings, train_fn):
    # with several workers the Train worker group holds the resources; the Tune trial only coordinates
    single = settings.workers_per_trial == 1
    resources = {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial} if single else {"cpu": COORDINATOR_CPU}
    return ray_tune.with_resources(ray_tune.with_parameters(train_fn, context=context), resources)


def open_study_storage(journal_path: str | Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(journal_path)))


# Ray's OptunaSearch keeps these as private attributes and no public API gives them: the Optuna trial asked for each
# Ray trial, the study, and the Ray trials already told. tests/test_ray_internals.py fails naming them when a release
# changes them (pyproject.toml pins the releases known to work).
RAY_SEARCHER_INTERNALS = ("_ot_trials", "_ot_study", "_completed_trials", "_storage", "_sampler", "_study_name")


class JournalOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch with the study kept in a journal file. Ray tells Optuna the last epoch's value as
    COMPLETE and never passes the epoch at which a trial is stopped through on_trial_result; here every epoch is an
    intermediate value, a trial's value is its best epoch's metric (what the leaderboard ranks), a trial the
    trial scheduler stopped is PRUNED and an errored one FAIL."""

    def __init__(self, *args, study_name: str, journal_path: str | Path, startup_cap: int | None = None,
                 budget_key: str | None = None, **kwargs):
        storage = open_study_storage(journal_path)
        super().__init__(*args, study_name=study_name, storage=storage, **kwargs)
        self._journal, self._study_name, self._journal_path = storage, study_name, str(journal_path)
        self._best: dict[str, float] = {}
        self._startup_cap, self._steering = startup_cap, startup_cap is None
        self._budget_key = budget_key

    def suggest(self, trial_id: str) -> dict | None:
        """Ray asks whenever a slot is free; on a wide cluster every slot would get a random trial while TPE waits
        for STARTUP_TRIALS trials to finish (ray issue 52535). Until then at most startup_cap trials are handed out
        (None: Ray asks again later), unless none is running (failed trials never open the gate)."""
        if trial_id not in self._ot_trials:
            if budget_allows_no_trials(self._budget_key):
                return Searcher.FINISHED
            if not self._steering and self._waits_for_startup():
                return None
        return super().suggest(trial_id)

    def _waits_for_startup(self) -> bool:
        trials = self._ot_study.get_trials(deepcopy=False)
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        self._steering = finished >= STARTUP_TRIALS  # from then on TPE steers every new trial
        running = any(t.state == TrialState.RUNNING for t in trials)
        return not self._steering and running and len(trials) >= self._startup_cap

    def save(self, checkpoint_path: str) -> None:
        """Ray snapshots the searcher with the experiment state after every trial checkpoint (CheckpointConfig
        num_to_keep=1), i.e. every epoch of every trial. The study lives in the journal, so the snapshot is plain
        JSON: each Ray trial's Optuna trial number and what this searcher noted, not Ray's pickle of the Optuna
        trials, which grew with every trial (BENCHMARKS.md, scale) and would be code to load."""
        state = {"ot_trials": {trial_id: trial.number for trial_id, trial in self._ot_trials.items()},
                 "completed": sorted(self._completed_trials), "best": self._best}
        Path(checkpoint_path).write_text(json.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self._journal = self._storage = open_study_storage(self._journal_path)
        self._sampler.reseed_rng()  # no sampler state in the snapshot: fresh draws, not the first ones again
        self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage, sampler=self._sampler,
                                           pruner=optuna.pruners.NopPruner())  # Ray's own choice: ASHA prunes
        study_id = self._journal.get_study_id_from_name(self._study_name)
        self._ot_trials = {trial_id: optuna.trial.Trial(self._ot_study, self._journal.get_trial_id_from_study_id_trial_number(study_id, number))
                           for trial_id, number in state["ot_trials"].items()}
        self._completed_trials, self._best = set(state["completed"]), state["best"]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._note(trial_id, result)

    def _journal_id(self, trial: optuna.Trial) -> int:
        study_id = self._journal.get_study_id_from_name(self._study_name)
        return self._journal.get_trial_id_from_study_id_trial_number(study_id, trial.number)

    def _stored(self, trial_id: str) -> optuna.trial.FrozenTrial | None:
        trial = self._ot_trials.get(trial_id)
        return None if trial is None else self._journal.get_trial(self._journal_id(trial))

    def _note(self, trial_id: str, result: dict) -> None:
        value, step, stored = result.get(self.metric), result.get("training_iteration"), self._stored(trial_id)
        if value is None or step is None or math.isnan(value) or stored is None or stored.state.is_finished() or step in stored.intermediate_values:
            return
        self._ot_trials[trial_id].report(value, step)
        self._best[trial_id] = max(self._best.get(trial_id, -math.inf), value)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        stored = self._stored(trial_id)
        # after --resume the journal may already hold the end of a trial that this restored searcher never saw
        if trial_id in self._completed_trials or stored is None or stored.state.is_finished():
            self._completed_trials.add(trial_id)
            return
        if result and not error:
            self._note(trial_id, result)
        trial, best = self._ot_trials[trial_id], self._best.get(trial_id)
        budget = active(self._budget_key)
        if error or best is None:
            self._ot_study.tell(trial, None, state=TrialState.FAIL)
        elif budget and trial_id in budget.stopped:
            self._ot_study.tell(trial, best, state=TrialState.COMPLETE)  # stopped by the clock, not judged weak
        elif _status_of_last(result or {}) == "pruned":
            # tell() would set a pruned trial's value to its last intermediate value, not its best
            self._journal.set_trial_state_values(self._journal_id(trial), TrialState.PRUNED, [best])
        else:
            self._ot_study.tell(trial, best, state=TrialState.COMPLETE)
        self._completed_trials.add(trial_id)


def _status_of_last(last: dict) -> str:
    """tune.results.trial_status from a trial's last result. (Ray hands the searcher flattened results: the
    config's keys arrive as config/<key>.)"""
    config = {k.removeprefix("config/"): v for k, v in last.items() if k.startswith("config/")} or last.get("config") or {}
    return trial_status(False, last.get("epoch", 0), planned_epochs(config), bool(last.get("stopped_early", False)))


def _tune_config(settings: SearchSettings, space: Space, checked: CheckedSpace) -> ray_tune.TuneConfig:
    name = functools.partial(_trial_name, first=settings.first_index)
    return ray_tune.TuneConfig(metric=settings.metric, mode="max", search_alg=make_searcher(settings, space, checked),
                               scheduler=make_trial_scheduler(settings), num_samples=settings.num_samples,
                               max_concurrent_trials=settings.max_concurrent, trial_name_creator=name,
                               trial_dirname_creator=name,
                               reuse_actors=reuse_processes(settings))


def reuse_processes(settings: SearchSettings) -> bool:
    """CPU-only, single-process trials on the run's own local cluster reuse their worker processes (no torch import
    per trial: the demo ran 1.36x faster, BENCHMARKS.md). Trials on GPUs get a fresh process each, so a trial's CUDA
    memory is freed when it ends; so do trials on a shared cluster (--address), where a fresh process per trial keeps
    Ray's placement and node-loss recovery as they were measured."""
    return settings.local_cluster and settings.gpus_per_trial == 0 and settings.workers_per_trial == 1


def make_sampler(settings: SearchSettings) -> optuna.samplers.TPESampler:
    """TPE as benchmarks/bench_search_efficiency.py measured it (BENCHMARKS.md, issue 10): Optuna's 10 random
    start-up trials (at ~12 trials per search, TPE started after 6 did no better than random under ASHA);
    multivariate + group because spaces are conditional (a scheduler's own parameters); constant_liar so parallel
    trials do not all propose the same point. Each --extend round gets its own seed (the study's earlier trials
    already steer it)."""
    return optuna.samplers.TPESampler(seed=settings.seed + settings.first_index - 1, n_startup_trials=STARTUP_TRIALS,
                                      multivariate=True, group=True, constant_liar=True)


def make_searcher(settings: SearchSettings, space: Space, checked: CheckedSpace,
                  sampler: optuna.samplers.BaseSampler | None = None) -> OptunaSearch:
    """The product's searcher: TPE on the study kept in the experiment's journal file."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    baselines = checked.points_to_evaluate if settings.enqueue_baselines else []
    return JournalOptunaSearch(space=space.fn, metric=settings.metric, mode="max", points_to_evaluate=baselines or None,
                               sampler=sampler or make_sampler(settings), study_name=settings.study_name,
                               journal_path=settings.journal_path, startup_cap=startup_cap(settings.num_samples),
                               budget_key=settings.budget_key)


def startup_cap(num_samples: int) -> int:
    """How many trials may start before STARTUP_TRIALS have finished and TPE can steer: a quarter of the search, at
    least STARTUP_TRIALS. Concurrency beyond it waits (about one epoch under ASHA, which stops most trials at
    the first rung) instead of filling every free slot with a random trial."""
    return max(STARTUP_TRIALS, num_samples // STARTUP_SHARE)


def make_trial_scheduler(settings: SearchSettings) -> ASHAScheduler | FIFOScheduler:
    if settings.trial_scheduler == "fifo":
        return FIFOScheduler()
    # every trial gets one epoch (the cheapest signal that separates lr/unfrozen settings), a third go on at each rung
    return ASHAScheduler(time_attr="training_iteration", max_t=settings.max_epochs, grace_period=1, reduction_factor=3)


def _trial_name(trial, first: int = 1) -> str:
    """The index (1 = first created in the study) from the tag Ray numbers trials with."""
    return trial_folder_name(int(trial.experiment_tag.split("_", 1)[0]) + first - 1, trial.trial_id)


def _run_config(settings: SearchSettings, callbacks: tuple[Callback, ...] = ()) -> ray_tune.RunConfig:
    return ray_tune.RunConfig(
        name=settings.tune_dir_name,
        storage_path=settings.storage_path,
        checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=1),
        failure_config=ray_tune.FailureConfig(max_failures=TRIAL_RETRIES),
        callbacks=[RetriesSinceProgress(), *callbacks],
        stop=BudgetStopper(settings.budget_key) if settings.budget_key else None,
        progress_reporter=make_reporter(settings.metric, settings.config_keys),
        verbose=1,
    )


def budget_allows_no_trials(key: str | None) -> bool:
    """--time-budget: True once the time left only covers the final stage (printed once, when it is decided)."""
    budget = active(key)
    if budget is None:
        return False
    decided = budget.decision is not None
    if budget.starts_no_more_trials() and not decided:
        print(budget.decision_text(), flush=True)
        budget.save()
    return budget.decision is not None


class BudgetStopper(Stopper):
    """--time-budget, at each epoch boundary: measure the epoch, decide whether trials may still start, and stop a
    trial once one more epoch of it would no longer fit (tune.budget.Budget.stops_trial)."""

    def __init__(self, key: str):
        self.key = key

    def __call__(self, trial_id: str, result: dict) -> bool:
        budget = active(self.key)
        if budget is None:
            return False
        budget.note_epoch(result.get("time_this_iter_s"))
        budget_allows_no_trials(self.key)
        planned = planned_epochs(result.get("config") or {})
        if result.get("stopped_early") or result.get("epoch", 0) >= planned or not budget.stops_trial(trial_id):
            return False
        budget.save()
        return True

    def stop_all(self) -> bool:
        return False


class RetriesSinceProgress(Callback):
    """The retry budget counts failures since a trial's last reported epoch, not over its life. A lost node costs
    each of its trials one retry, which it earns back with its next epoch on another node, so node losses spread
    over a search never use the budget up; a trial that fails TRIAL_RETRIES + 1 times without finishing an epoch
    between (a bug, a config that runs out of memory, a node lost again and again at once) errors as before.
    (Ray's FailureConfig counts every failure of a trial's life: run_metadata is guarded by test_ray_internals.)"""

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if trial.run_metadata.num_failures:
            trial.run_metadata.num_failures = 0
            trial.run_metadata.invalidate_cache()


REPORTED_PARAMETERS = ("backbone", "lr", "scheduler", "unfrozen_blocks")


def make_reporter(metric: str, keys: frozenset[str] = frozenset(REPORTED_PARAMETERS)) -> CLIReporter:
    """The live table: per trial its epoch, the search metric and val AUROC, so the leading trial is visible
    (shown when RAY_AIR_NEW_OUTPUT=0, which python -m tune.run sets unless the user chose otherwise)."""
    return CLIReporter(
        metric_columns={"training_iteration": "epoch", metric: metric, "val_auroc": "val_auroc", "val_loss": "val_loss"},
        parameter_columns=[k for k in REPORTED_PARAMETERS if k in keys],  # Ray fails on a key a trial lacks
        sort_by_metric=True, max_report_frequency=30, max_column_length=24,  # metric and mode come from TuneConfig
    )


def tune_dir(settings: SearchSettings) -> str:
    return f"{settings.storage_path.rstrip('/')}/{settings.tune_dir_name}"


def _record(result, config: dict | None = None) -> TrialRecord:
    epochs = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
    error = None if result.error is None else error_text(result.error)
    return make_trial_record(result.path, config or result.config, epochs, error)
