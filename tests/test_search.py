"""tune.search without a cluster: the searcher and its journal, TPE's start-up, the trial scheduler, the live table."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import SearchGenerator, Searcher

from tune import search
from tune.budget import Budget
from tune.spaces import load_space, validate


def _settings(tmp_path, **changes) -> search.SearchSettings:
    values = dict(metric="val_spec_at_recall", num_samples=8, max_epochs=4, trial_scheduler="asha", cpus_per_trial=1,
                  gpus_per_trial=0, workers_per_trial=1, max_concurrent=0, seed=0, storage_path=str(tmp_path),
                  journal_path=str(tmp_path / "optuna.journal"), study_name="x")
    return search.SearchSettings(**{**values, **changes})


def test_baselines_are_the_first_suggestions_with_the_pinned_keys(tmp_path):
    space = load_space("full").with_overrides({"epochs": 1, "image_size": 32, "pretrained": False})
    searcher = search.create_searcher(_settings(tmp_path), space, validate(space))
    first, second, third = (searcher.suggest(f"t{i}") for i in range(3))
    assert (first["backbone"], first["scheduler"], first["lr"], first["step_size"]) == ("tf_efficientnetv2_s", "step", 1e-4, 5)
    assert (second["backbone"], second["scheduler"], second["dropout"], second["unfrozen_blocks"]) == ("densenet121", "plateau", 0.3, 2)
    assert all((c["epochs"], c["image_size"], c["pretrained"]) == (1, 32, False) for c in (first, second, third))


def _suggested(sampler: optuna.samplers.BaseSampler, n: int) -> list[dict]:
    study = optuna.create_study(sampler=sampler, direction="maximize")
    for _ in range(n):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        study.tell(trial, -((x - 0.3) ** 2))
    return [t.params for t in study.trials]


def test_tpe_draws_its_first_ten_trials_at_random_then_steers(tmp_path):
    # measured in BENCHMARKS.md (issue 10): at ~12 trials, TPE started earlier did no better than random under ASHA
    product = _suggested(search.create_sampler(_settings(tmp_path)), 12)
    random = _suggested(optuna.samplers.RandomSampler(seed=0), 12)
    assert product[:10] == random[:10] and product[10] != random[10]


def test_each_extend_round_draws_with_its_own_seed(tmp_path):
    first, extend = (_suggested(search.create_sampler(_settings(tmp_path, first_index=i)), 3) for i in (1, 9))
    assert first != extend


def test_the_sampler_of_an_extend_round_sees_every_earlier_trial(tmp_path):
    """Ray's OptunaSearch asks the study in the journal: an --extend round's sampler sees the earlier rounds' trials."""
    seen = []

    class Recording(optuna.samplers.RandomSampler):
        def infer_relative_search_space(self, study, trial):
            seen.append(len(study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])))
            return {}

    space = load_space("smoke")
    checked = validate(space)
    earlier = search.create_searcher(_settings(tmp_path), space, checked)
    for i in range(3):
        earlier.suggest(f"a{i}")
        earlier.on_trial_result(f"a{i}", {"val_spec_at_recall": 0.5 + i / 10, "training_iteration": 1})
        earlier.on_trial_complete(f"a{i}", {"val_spec_at_recall": 0.5 + i / 10, "epoch": 2, "config/epochs": 2})
    extend = search.create_searcher(_settings(tmp_path, first_index=4, enqueue_baselines=False), space, checked,
                                  sampler=Recording(seed=0))
    extend.suggest("b0")
    assert seen == [3]


def test_trial_scheduler_choice():
    assert isinstance(search.create_trial_scheduler(_settings(Path("unused"), trial_scheduler="fifo")), FIFOScheduler)
    assert isinstance(search.create_trial_scheduler(_settings(Path("unused"))), ASHAScheduler)


def test_the_journal_holds_each_trials_best_epoch_and_its_state(tmp_path):
    space = load_space("smoke")
    searcher = search.create_searcher(_settings(tmp_path), space, validate(space))
    runs = {"done": ([0.7, 0.5], {"epoch": 2}), "pruned": ([0.4, 0.6], {"epoch": 2, "config/epochs": 4}),
            "patience": ([0.3, 0.2], {"epoch": 2, "config/epochs": 4, "stopped_early": True}), "failed": ([0.1], None),
            "pruned_falling": ([0.6, 0.4], {"epoch": 2, "config/epochs": 4})}
    for trial_id, (values, last) in runs.items():
        searcher.suggest(trial_id)
        for step, value in enumerate(values, start=1):
            searcher.on_trial_result(trial_id, {"val_spec_at_recall": value, "training_iteration": step})
        searcher.on_trial_complete(trial_id, last and {"val_spec_at_recall": values[-1], "config/epochs": 2, **last},
                                   error=last is None)
    study = optuna.load_study(study_name="x", storage=search.open_study_storage(tmp_path / "optuna.journal"))
    states = [(t.state.name, t.value, t.intermediate_values) for t in study.trials]
    assert states == [("COMPLETE", 0.7, {1: 0.7, 2: 0.5}), ("PRUNED", 0.6, {1: 0.4, 2: 0.6}),
                      ("COMPLETE", 0.3, {1: 0.3, 2: 0.2}), ("FAIL", None, {1: 0.1}),
                      ("PRUNED", 0.6, {1: 0.6, 2: 0.4})]  # a pruned trial's value is its best epoch, not its last


def test_a_minimised_metric_is_minimised_by_the_study_and_by_tune_s_mode(tmp_path):
    """--metric val_loss: each trial's value is its lowest epoch, TPE minimises, Tune (and so ASHA and the live
    table) gets mode min."""
    space = load_space("smoke")
    settings, checked = _settings(tmp_path, metric="val_loss"), validate(space)
    searcher = search.create_searcher(settings, space, checked)
    for trial_id, losses in (("high", [0.5, 0.6]), ("low", [0.3, 0.4])):
        searcher.suggest(trial_id)
        for step, loss in enumerate(losses, start=1):
            searcher.on_trial_result(trial_id, {"val_loss": loss, "training_iteration": step})
        searcher.on_trial_complete(trial_id, {"val_loss": losses[-1], "epoch": 2, "config/epochs": 2})
    study = optuna.load_study(study_name="x", storage=search.open_study_storage(tmp_path / "optuna.journal"))
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert [(t.state.name, t.value) for t in study.trials] == [("COMPLETE", 0.5), ("COMPLETE", 0.3)]
    assert study.best_trial.number == 1
    config = search._tune_config(settings, space, checked, None)
    assert (config.metric, config.mode) == ("val_loss", "min")
    assert search._tune_config(_settings(tmp_path, study_name="y"), space, checked, None).mode == "max"


def test_a_restored_searcher_continues_its_trials_in_the_journal_and_its_snapshot_stays_small(tmp_path):
    space = load_space("smoke")
    checked = validate(space)
    searcher = search.create_searcher(_settings(tmp_path), space, checked)
    for i in range(3):
        searcher.suggest(f"t{i}")
        searcher.on_trial_result(f"t{i}", {"val_spec_at_recall": 0.1 * i, "training_iteration": 1})
    searcher.on_trial_complete("t0", {"val_spec_at_recall": 0.0, "epoch": 2, "config/epochs": 2})
    searcher.save(str(tmp_path / "searcher.pkl"))
    snapshot = (tmp_path / "searcher.pkl").stat().st_size
    restored = search.create_searcher(_settings(tmp_path), space, checked)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_result("t2", {"val_spec_at_recall": 0.9, "training_iteration": 2})
    restored.on_trial_complete("t2", {"val_spec_at_recall": 0.9, "epoch": 2, "config/epochs": 2})
    restored.suggest("t3")
    study = optuna.load_study(study_name="x", storage=search.open_study_storage(tmp_path / "optuna.journal"))
    assert [(t.state.name, t.value) for t in study.trials] == [("COMPLETE", 0.0), ("RUNNING", None), ("COMPLETE", 0.9),
                                                                ("RUNNING", None)]
    assert study.trials[2].intermediate_values == {1: 0.2, 2: 0.9}
    for i in range(4, 40):  # the snapshot holds trial numbers, not Optuna trials: it barely grows
        restored.suggest(f"t{i}")
    restored.save(str(tmp_path / "later.pkl"))
    assert (tmp_path / "later.pkl").stat().st_size < snapshot + 40 * 60


def test_the_wrapped_searcher_saves_and_restores_as_tune_does_it_every_epoch(tmp_path):
    """Tune's SearchGenerator saves the innermost searcher and asks each wrapper for its state."""
    space = load_space("smoke")
    settings = _settings(tmp_path, num_samples=48)
    searcher = SearchGenerator(search.create_searcher(settings, space, validate(space)))
    assert isinstance(searcher.searcher, search.StartupCap)
    assert searcher.searcher.suggest("t0") is not None
    searcher.searcher.on_trial_result("t0", {"val_spec_at_recall": 0.5, "training_iteration": 1})
    searcher.save_to_dir(str(tmp_path), session_str="s")
    restored = SearchGenerator(search.create_searcher(settings, space, validate(space)))
    restored.restore_from_dir(str(tmp_path))
    restored.searcher.on_trial_complete("t0", {"val_spec_at_recall": 0.4, "training_iteration": 2, "epoch": 2,
                                              "config/epochs": 2})
    study = optuna.load_study(study_name="x", storage=search.open_study_storage(tmp_path / "optuna.journal"))
    assert [(t.state.name, t.value, t.intermediate_values) for t in study.trials] == [("COMPLETE", 0.5, {1: 0.5, 2: 0.4})]


def test_at_most_a_quarter_of_the_search_starts_before_tpe_can_steer(tmp_path):
    """Ray asks whenever a slot is free: with 48 free slots and --num-samples 48, 12 random trials start, then the
    searcher answers None (Ray asks again later) until 10 have finished; trials that all failed never block it."""
    space = load_space("smoke")
    searcher = search.create_searcher(_settings(tmp_path, num_samples=48), space, validate(space))
    assert search.startup_cap(48) == 12 and search.startup_cap(8) == search.STARTUP_TRIALS
    started = [f"t{i}" for i in range(12)]
    assert all(searcher.suggest(t) is not None for t in started)
    assert searcher.suggest("t12") is None and searcher.suggest("t12") is None
    for i, t in enumerate(started[:10]):
        searcher.on_trial_result(t, {"val_spec_at_recall": 0.5, "training_iteration": 1})
        if i < 9:
            searcher.on_trial_complete(t, {"val_spec_at_recall": 0.5, "epoch": 1, "config/epochs": 2})
    assert searcher.suggest("t12") is None  # 9 finished: still random
    searcher.on_trial_complete(started[9], {"val_spec_at_recall": 0.5, "epoch": 1, "config/epochs": 2})
    assert searcher.suggest("t12") is not None  # the 10th finished (pruned): TPE steers from here on
    assert all(searcher.suggest(f"u{i}") is not None for i in range(20))

    failing = search.create_searcher(_settings(tmp_path, num_samples=48, journal_path=str(tmp_path / "f.journal")),
                                   space, validate(space))
    for t in started:
        failing.suggest(t)
        failing.on_trial_complete(t, error=True)
    assert failing.suggest("t12") is not None  # nothing running: no wait (it would never end)


def test_with_a_time_budget_the_cap_is_a_quarter_of_the_trials_that_fit_at_once(tmp_path):
    """--time-budget makes --num-samples an upper bound (1000 by default): the cap plans with what can start at once,
    not with 1000 (a quarter of which, 250, would cap nothing)."""
    wide, narrow = (_settings(tmp_path, num_samples=1000, trials_at_once=n) for n in (64, 2))
    assert search.startup_cap(search.planned_trials(wide)) == 16
    assert search.startup_cap(search.planned_trials(narrow)) == search.STARTUP_TRIALS
    assert search.planned_trials(_settings(tmp_path, num_samples=48)) == 48  # no budget: the search's own size


@pytest.mark.parametrize("cap, until", [(10, "at most 8 start"), (None, "any number start")])
def test_the_start_line_says_how_many_trials_start_before_tpe_steers_capped_or_not(tmp_path, monkeypatch, capsys, cap, until):
    """None is bench_scale.py --startup's ungated arm (the searcher as Ray's OptunaSearch runs it); no Ray starts."""
    class Tuner:
        def __init__(self, *args, **kwargs):
            pass

        def fit(self):
            return []

    monkeypatch.setattr(search, "startup_cap", lambda num_samples: cap)
    monkeypatch.setattr(search, "_trainable", lambda *args: None)
    monkeypatch.setattr(search.ray_tune, "Tuner", Tuner)
    space = load_space("smoke")
    assert search.run_search(_settings(tmp_path), space, validate(space), None, {}, resume=False) == []
    assert f"TPE steers once {search.STARTUP_TRIALS} have finished, and until then {until}" in capsys.readouterr().out


def test_a_trial_in_flight_when_the_budget_decides_stops_at_its_next_epoch_and_stays_complete(tmp_path):
    """--time-budget with a stand-in clock (the wall-clock run is load-dependent): two trials run; once what is left
    only covers the final stage, the searcher starts no more trials, the stopper ends a trial at its next epoch
    boundary, and the journal keeps it COMPLETE with its best epoch (stopped by the clock, not judged weak)."""
    now = [0.0]
    budget = Budget(total_s=100, final_members=1, final_epochs=1, member_slots=1, clock=lambda: now[0])
    space = load_space("smoke")
    searcher = search.create_searcher(_settings(tmp_path), space, validate(space), budget=budget)
    stopper = search.BudgetStopper(budget, "val_spec_at_recall")
    for trial_id in ("a", "b"):
        assert searcher.suggest(trial_id) is not None

    def epoch(trial_id: str, step: int, value: float, at: float) -> bool:
        now[0] = at
        result = {"val_spec_at_recall": value, "training_iteration": step, "epoch": step, "time_this_iter_s": 10.0,
                  "config": {"epochs": 3}}
        searcher.on_trial_result(trial_id, result)
        return stopper(trial_id, result)

    assert not epoch("a", 1, 0.6, 10) and not epoch("b", 1, 0.5, 11)  # 89 s left: the final stage needs 22.5 s
    assert searcher.suggest("c") is not None
    # 30 s left <= 22.5 s + a new trial's start and epoch: no new trials; one more epoch of "a" no longer fits
    assert epoch("a", 2, 0.4, 70) and budget.stopped == {"a"}
    assert searcher.suggest("d") is Searcher.FINISHED
    searcher.on_trial_complete("a", {"val_spec_at_recall": 0.4, "epoch": 2, "config/epochs": 3})
    study = optuna.load_study(study_name="x", storage=search.open_study_storage(tmp_path / "optuna.journal"))
    assert (study.trials[0].state.name, study.trials[0].value) == ("COMPLETE", 0.6)


def test_a_resumed_session_s_searcher_and_stopper_get_its_budget_not_a_copy(tmp_path):
    """Ray pickles the searcher and the stopper with the Tune experiment and unpickles them on --resume: the budget
    they hold is then the one the resuming session opened (what it spent, what it decided), never a stale copy."""
    import pickle

    settings = dict(total_s=100, final_members=1, final_epochs=1, member_slots=1)
    first = Budget(path=tmp_path / "budget.json", **settings)
    first.open()
    space = load_space("smoke")
    pickled = pickle.dumps((search.create_searcher(_settings(tmp_path), space, validate(space), budget=first),
                            search.BudgetStopper(first, "val_spec_at_recall")))
    first.close()
    resumed = Budget(path=tmp_path / "budget.json", spent_before_s=90, **settings)
    resumed.note_epoch(10)  # the final stage needs 32.5 s of the 10 s left
    resumed.open()
    try:
        searcher, stopper = pickle.loads(pickled)
    finally:
        resumed.close()
    assert searcher.budget is resumed and stopper.budget is resumed
    assert searcher.suggest("a") is Searcher.FINISHED  # the resumed budget decides, not the first one
