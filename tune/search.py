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

from cxr.monitors import direction, improves
from tune.budget import Budget
from tune.cluster import COORDINATOR_CPU
from tune.results import TrialRecord, error_text, create_trial_record, planned_epochs, trial_folder_name, trial_status
from tune.settings import is_uri
from tune.spaces import CheckedSpace, Space
from tune.trainable import TrialContext, train_trial

TUNE_DIR_NAME = "tune"
STARTUP_TRIALS = 10  # random trials before TPE steers: Optuna's default, kept after measuring (BENCHMARKS.md)
STARTUP_SHARE = 4  # at most a quarter of a search (or STARTUP_TRIALS) starts before TPE can steer (BENCHMARKS.md)
TRIAL_RETRIES = 2  # failures in a row (no new epoch between) a trial survives, restarting from its last checkpoint
STUDY_DIRECTIONS = {"min": "minimize", "max": "maximize"}  # cxr.monitors' directions in Optuna's words


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
    trials_at_once: int | None = None  # --time-budget: the trials that fit at once (what the start-up cap plans with)


def run_search(settings: SearchSettings, space: Space, checked: CheckedSpace, data_ref: ray.ObjectRef,
               weight_refs: dict[str, ray.ObjectRef], resume: bool, train_fn=train_trial,
               callbacks: tuple[Callback, ...] = (), budget: Budget | None = None) -> list[TrialRecord]:
    """Run (or resume) one Tune experiment; every trial's config, per-epoch metrics and error. train_fn(config,
    context) is what each trial runs (tune.trainable.train_trial; benchmarks/bench_scale.py hands in a stand-in
    that reports a synthetic learning curve, to measure everything but the training). callbacks: driver-side Tune
    callbacks besides the product's own (tune.tracking's child runs). budget: --time-budget's, which the searcher
    and the stopper consult and the records read their status from."""
    context = TrialContext(data_ref, weight_refs, settings.workers_per_trial,
                           settings.cpus_per_trial, settings.gpus_per_trial, settings.storage_path)
    trainable = _trainable(context, settings, train_fn)
    if settings.first_index == 1 and not resume:
        size = f"up to {settings.num_samples} trials in the time budget" if budget else f"{settings.num_samples} trials"
        cap = startup_cap(planned_trials(settings))  # None: no cap (bench_scale.py's ungated arm)
        until = "any number" if cap is None else f"at most {min(cap, settings.num_samples)}"
        print(f"search: {size}; TPE steers once {STARTUP_TRIALS} have finished, and until then "
              f"{until} start (baselines, then random)", flush=True)
    if resume:
        tuner = ray_tune.Tuner.restore(tune_dir(settings), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = ray_tune.Tuner(trainable, tune_config=_tune_config(settings, space, checked, budget),
                               run_config=_run_config(settings, callbacks, budget))
    stopped = budget.stopped if budget else set()
    return [_record(result, stopped=stopped) for result in tuner.fit()]


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


def finished_records(settings: SearchSettings, stopped: set[str]) -> list[TrialRecord]:
    """The trials of a finished Tune experiment, read back without running anything (stopped: the trials the
    budget stopped)."""
    analysis = ray_tune.ExperimentAnalysis(tune_dir(settings))
    configs = {Path(t.path).name: t.config for t in analysis.trials}  # ResultGrid drops errored trials' configs
    return [_record(result, configs.get(Path(result.path).name), stopped) for result in ray_tune.ResultGrid(analysis)]


def _trainable(context: TrialContext, settings: SearchSettings, train_fn):
    # with several workers the Train worker group holds the resources; the Tune trial only coordinates
    single = settings.workers_per_trial == 1
    resources = {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial} if single else {"cpu": COORDINATOR_CPU}
    return ray_tune.with_resources(ray_tune.with_parameters(train_fn, context=context), resources)


def open_study_storage(journal_path: str | Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(journal_path)))


class JournalSearch(Searcher):
    """TPE on an Optuna study kept in a journal file, through Optuna's public ask/tell: each Ray trial is one asked
    Optuna trial (its number kept here), every epoch an intermediate value, a trial's value its best epoch's metric
    (best in the metric's direction, cxr.monitors: what the leaderboard ranks), a trial the trial scheduler stopped
    PRUNED, one the budget stopped COMPLETE and an errored one FAIL. Trials are addressed by number through the
    storage, so a restored searcher needs no Optuna trial objects: the journal is the state, the snapshot only the map
    (save)."""

    def __init__(self, space_fn, metric: str, sampler: optuna.samplers.BaseSampler, study_name: str,
                 journal_path: str | Path, baselines: list[dict] = ()):
        super().__init__(metric=metric, mode=direction(metric))
        self.space_fn, self.sampler, self.study_name, self.journal_path = space_fn, sampler, study_name, str(journal_path)
        self.numbers: dict[str, int] = {}  # Ray trial id -> Optuna trial number
        self.told: set[str] = set()  # trials whose end the study has
        self.best: dict[str, float] = {}
        self.open_study(create=True)
        for point in baselines:  # asked first, in order (Optuna's queue)
            self.study.enqueue_trial(point)

    def open_study(self, create: bool = False) -> None:
        # no pruner: ASHA (Ray's trial scheduler) decides which trials stop
        self.storage = open_study_storage(self.journal_path)
        options = dict(study_name=self.study_name, storage=self.storage, sampler=self.sampler,
                       pruner=optuna.pruners.NopPruner())
        study_direction = STUDY_DIRECTIONS[direction(self.metric)]
        self.study = (optuna.create_study(direction=study_direction, load_if_exists=True, **options) if create
                      else optuna.load_study(**options))

    def suggest(self, trial_id: str) -> dict | None:
        trial = self.study.ask()
        fixed = self.space_fn(trial) or {}
        self.numbers[trial_id] = trial.number
        return {**trial.params, **fixed}

    def save(self, checkpoint_path: str) -> None:
        """Ray snapshots the searcher with the experiment state after every trial checkpoint (CheckpointConfig
        num_to_keep=1), i.e. every epoch of every trial. The study lives in the journal, so the snapshot is plain
        JSON: each Ray trial's Optuna trial number and what this searcher noted, not a pickle of the Optuna trials,
        which grew with every trial (BENCHMARKS.md, scale) and would be code to load."""
        state = {"trials": self.numbers, "told": sorted(self.told), "best": self.best}
        Path(checkpoint_path).write_text(json.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.sampler.reseed_rng()  # no sampler state in the snapshot: fresh draws, not the first ones again
        self.open_study()
        self.numbers, self.told, self.best = state["trials"], set(state["told"]), state["best"]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.note(trial_id, result)

    def storage_id(self, trial_id: str) -> int:
        study_id = self.storage.get_study_id_from_name(self.study_name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, self.numbers[trial_id])

    def stored(self, trial_id: str) -> optuna.trial.FrozenTrial | None:
        return self.storage.get_trial(self.storage_id(trial_id)) if trial_id in self.numbers else None

    def note(self, trial_id: str, result: dict) -> None:
        value, step, stored = result.get(self.metric), result.get("training_iteration"), self.stored(trial_id)
        if value is None or step is None or math.isnan(value) or stored is None or stored.state.is_finished() or step in stored.intermediate_values:
            return
        self.storage.set_trial_intermediate_value(self.storage_id(trial_id), step, value)
        if improves(self.metric, value, self.best.get(trial_id, math.nan)):
            self.best[trial_id] = value

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        stored = self.stored(trial_id)
        # after --resume the journal may already hold the end of a trial that this restored searcher never saw
        if trial_id in self.told or stored is None or stored.state.is_finished():
            self.told.add(trial_id)
            return
        if result and not error:
            self.note(trial_id, result)
        number, best = self.numbers[trial_id], self.best.get(trial_id)
        if error or best is None:
            self.study.tell(number, state=TrialState.FAIL)
        elif _status_of_last(result or {}) == "pruned":
            # tell(state=PRUNED) would set the value to the last intermediate value, not the best one
            self.storage.set_trial_state_values(self.storage_id(trial_id), TrialState.PRUNED, [best])
        else:
            self.study.tell(number, best, state=TrialState.COMPLETE)
        self.told.add(trial_id)


class SearcherWrapper(Searcher):
    """A searcher around another, as Ray's ConcurrencyLimiter wraps one: everything is passed on; subclasses
    change what they gate. Ray's SearchGenerator saves and restores the innermost searcher (save/restore) and asks
    each wrapper for its own state (get_state/set_state): the wrappers keep none, the study is their state."""

    def __init__(self, searcher: Searcher):
        self.searcher = searcher
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    @property
    def study(self) -> optuna.Study:
        return self.searcher.study

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | None:
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict:
        return {}

    def set_state(self, state: dict) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


class StartupCap(SearcherWrapper):
    """Ray asks whenever a slot is free; on a wide cluster every slot would get a random trial while TPE waits for
    STARTUP_TRIALS trials to finish (ray issue 52535). Until then at most `cap` trials are handed out (None: Ray
    asks again later), unless none is running (failed trials never open the gate). Whether TPE steers is read
    from the study, so a restored searcher gates the same way."""

    def __init__(self, searcher: Searcher, cap: int):
        super().__init__(searcher)
        self.cap, self.steering = cap, False

    def suggest(self, trial_id: str) -> dict | None:
        if not self.steering and self.waits():
            return None
        return self.searcher.suggest(trial_id)

    def waits(self) -> bool:
        trials = self.study.get_trials(deepcopy=False)
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        self.steering = finished >= STARTUP_TRIALS  # from then on TPE steers every new trial
        running = any(t.state == TrialState.RUNNING for t in trials)
        return not self.steering and running and len(trials) >= self.cap


class BudgetGate(SearcherWrapper):
    """--time-budget: no new trials once the budget has decided so, and a trial the budget stopped is told as
    such (COMPLETE with its best epoch: stopped by the clock, not judged weak)."""

    def __init__(self, searcher: Searcher, budget: Budget):
        super().__init__(searcher)
        self.budget = budget

    def suggest(self, trial_id: str) -> dict | None:
        return Searcher.FINISHED if self.budget and end_trial_starts(self.budget) else self.searcher.suggest(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self.budget and self.budget.was_stopped(trial_id):
            result = {**(result or {}), STOPPED_BY_BUDGET: True}
        self.searcher.on_trial_complete(trial_id, result=result, error=error)


STOPPED_BY_BUDGET = "stopped_by_budget"  # BudgetGate's mark on the last result of a trial the budget stopped


def _status_of_last(last: dict) -> str:
    """tune.results.trial_status from a trial's last result, or budget where BudgetGate marked it. (Ray hands the
    searcher flattened results: the config's keys arrive as config/<key>.)"""
    if last.get(STOPPED_BY_BUDGET):
        return "budget"
    config = {k.removeprefix("config/"): v for k, v in last.items() if k.startswith("config/")} or last.get("config") or {}
    return trial_status(False, last.get("epoch", 0), planned_epochs(config), bool(last.get("stopped_early", False)))


def _tune_config(settings: SearchSettings, space: Space, checked: CheckedSpace, budget: Budget | None) -> ray_tune.TuneConfig:
    name = functools.partial(_trial_name, first=settings.first_index)
    return ray_tune.TuneConfig(metric=settings.metric, mode=direction(settings.metric),
                               search_alg=create_searcher(settings, space, checked, budget=budget),
                               scheduler=create_trial_scheduler(settings), num_samples=settings.num_samples,
                               max_concurrent_trials=settings.max_concurrent, trial_name_creator=name,
                               trial_dirname_creator=name,
                               reuse_actors=reuse_processes(settings))


def reuse_processes(settings: SearchSettings) -> bool:
    """CPU-only, single-process trials on the run's own local cluster reuse their worker processes (no torch import
    per trial: the demo ran 1.36x faster, BENCHMARKS.md). Trials on GPUs get a fresh process each, so a trial's CUDA
    memory is freed when it ends; so do trials on a shared cluster (--address), where a fresh process per trial keeps
    Ray's placement and node-loss recovery as they were measured."""
    return settings.local_cluster and settings.gpus_per_trial == 0 and settings.workers_per_trial == 1


def create_sampler(settings: SearchSettings) -> optuna.samplers.TPESampler:
    """TPE as benchmarks/bench_search_efficiency.py measured it (BENCHMARKS.md, issue 10): Optuna's 10 random
    start-up trials (at ~12 trials per search, TPE started after 6 did no better than random under ASHA);
    multivariate + group because spaces are conditional (a scheduler's own parameters); constant_liar so parallel
    trials do not all propose the same point. Each --extend round gets its own seed (the study's earlier trials
    already steer it)."""
    return optuna.samplers.TPESampler(seed=settings.seed + settings.first_index - 1, n_startup_trials=STARTUP_TRIALS,
                                      multivariate=True, group=True, constant_liar=True)


def create_searcher(settings: SearchSettings, space: Space, checked: CheckedSpace,
                  sampler: optuna.samplers.BaseSampler | None = None, budget: Budget | None = None) -> Searcher:
    """The product's searcher: TPE on the study kept in the experiment's journal file, behind the start-up cap and,
    with --time-budget, the budget's gate."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    baselines = checked.points_to_evaluate if settings.enqueue_baselines else []
    searcher = JournalSearch(space.fn, settings.metric, sampler or create_sampler(settings), settings.study_name,
                             settings.journal_path, baselines)
    cap = startup_cap(planned_trials(settings))
    if cap is not None:
        searcher = StartupCap(searcher, cap)
    return BudgetGate(searcher, budget) if budget else searcher


def planned_trials(settings: SearchSettings) -> int:
    """The search's size the start-up cap is a share of: --num-samples; with --time-budget, where --num-samples only
    bounds the search (MAX_TRIALS when not given), the trials that fit at once, so the cap binds on a wide cluster."""
    return min(settings.num_samples, settings.trials_at_once or settings.num_samples)


def startup_cap(num_samples: int) -> int:
    """How many trials may start before STARTUP_TRIALS have finished and TPE can steer: a quarter of the search
    (planned_trials), at least STARTUP_TRIALS. Concurrency beyond it waits (about one epoch under ASHA, which stops
    most trials at the first rung) instead of filling every free slot with a random trial."""
    return max(STARTUP_TRIALS, num_samples // STARTUP_SHARE)


def create_trial_scheduler(settings: SearchSettings) -> ASHAScheduler | FIFOScheduler:
    if settings.trial_scheduler == "fifo":
        return FIFOScheduler()
    # every trial gets one epoch (the cheapest signal that separates lr/unfrozen settings), a third go on at each rung
    return ASHAScheduler(time_attr="training_iteration", max_t=settings.max_epochs, grace_period=1, reduction_factor=3)


def _trial_name(trial, first: int = 1) -> str:
    """The index (1 = first created in the study) from the tag Ray numbers trials with."""
    return trial_folder_name(int(trial.experiment_tag.split("_", 1)[0]) + first - 1, trial.trial_id)


def _run_config(settings: SearchSettings, callbacks: tuple[Callback, ...] = (),
                budget: Budget | None = None) -> ray_tune.RunConfig:
    return ray_tune.RunConfig(
        name=settings.tune_dir_name,
        storage_path=settings.storage_path,
        checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=1),
        failure_config=ray_tune.FailureConfig(max_failures=TRIAL_RETRIES),
        callbacks=[RetriesSinceProgress(), *callbacks],
        stop=BudgetStopper(budget, settings.metric) if budget else None,
        progress_reporter=create_reporter(settings.metric, settings.config_keys),
        verbose=1,
    )


def end_trial_starts(budget: Budget) -> bool:
    """--time-budget: decide whether trials may still start; True once the time left only covers the final stage
    (printed and saved once, when it is decided)."""
    if budget.starts_trials() and budget.decide_no_more_trials():
        print(budget.decision_text(), flush=True)
        budget.save()
    return not budget.starts_trials()


class BudgetStopper(Stopper):
    """--time-budget, at each epoch boundary: measure the epoch, decide whether trials may still start, and stop a
    trial once one more epoch of it would no longer fit (tune.budget.Budget.decide_stop). (budget None: a --resume
    without the budget this stopper was pickled with.)"""

    def __init__(self, budget: Budget, metric: str):
        self.budget, self.metric = budget, metric

    def __call__(self, trial_id: str, result: dict) -> bool:
        if self.budget is None:
            return False
        self.budget.note_epoch(result.get("time_this_iter_s"), trial_id, result.get(self.metric),
                               result.get("shift_time_s"), result.get("cpu_run_share"))
        end_trial_starts(self.budget)
        planned = planned_epochs(result.get("config") or {})
        if result.get("stopped_early") or result.get("epoch", 0) >= planned or not self.budget.decide_stop(trial_id):
            return False
        self.budget.save()
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


def create_reporter(metric: str, keys: frozenset[str] = frozenset(REPORTED_PARAMETERS)) -> CLIReporter:
    """The live table: per trial its epoch, the search metric and val AUROC, so the leading trial is visible
    (shown when RAY_AIR_NEW_OUTPUT=0, which python -m tune.run sets unless the user chose otherwise)."""
    return CLIReporter(
        metric_columns={"training_iteration": "epoch", metric: metric, "val_auroc": "val_auroc", "val_loss": "val_loss"},
        parameter_columns=[k for k in REPORTED_PARAMETERS if k in keys],  # Ray fails on a key a trial lacks
        sort_by_metric=True, max_report_frequency=30, max_column_length=24,  # metric and mode come from TuneConfig
    )


def tune_dir(settings: SearchSettings) -> str:
    return f"{settings.storage_path.rstrip('/')}/{settings.tune_dir_name}"


def _record(result, config: dict | None = None, stopped: set[str] = frozenset()) -> TrialRecord:
    epochs = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
    error = None if result.error is None else error_text(result.error)
    return create_trial_record(result.path, config or result.config, epochs, error, stopped)
