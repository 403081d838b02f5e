"""Private attributes of Ray and Optuna that tune/ relies on (no public API gives them): each check fails naming
what changed, so a new release that moves them is caught here, not in a user's search. pyproject.toml pins the
releases known to work; when one of these fails after an upgrade, adapt the named code, then widen the pin."""

from __future__ import annotations

import inspect
from pathlib import Path

import ray
from ray._common import utils as ray_utils
from ray.tune.search.optuna import OptunaSearch

from tune import search
from tune.spaces import load_space, validate


def test_ray_optuna_searcher_keeps_the_attributes_journal_optuna_search_reads(tmp_path):
    settings = search.SearchSettings(metric="val_auroc", num_samples=1, max_epochs=1, trial_scheduler="fifo",
                                     cpus_per_trial=1, gpus_per_trial=0, workers_per_trial=1, max_concurrent=0, seed=0,
                                     storage_path=str(tmp_path), journal_path=str(tmp_path / "j"), study_name="s")
    space = load_space("smoke")
    searcher = search.make_searcher(settings, space, validate(space))
    searcher.suggest("t")
    missing = [name for name in search.RAY_SEARCHER_INTERNALS if not hasattr(searcher, name)]
    assert not missing, (f"Ray {ray.__version__}'s OptunaSearch no longer has {missing}: adapt "
                         "tune.search.JournalOptunaSearch (and the ray pin in pyproject.toml)")
    assert "t" in searcher._ot_trials and hasattr(searcher._ot_study, "tell"), (
        f"Ray {ray.__version__}'s OptunaSearch keeps its trials or study differently: adapt tune.search.JournalOptunaSearch")
    for hook in ("on_trial_result", "on_trial_complete"):
        assert list(inspect.signature(getattr(OptunaSearch, hook)).parameters)[:2] == ["self", "trial_id"], (
            f"Ray {ray.__version__} changed OptunaSearch.{hook}: adapt tune.search.JournalOptunaSearch")


def test_ray_records_the_last_started_cluster_where_tune_cluster_looks():
    assert hasattr(ray_utils, "get_ray_address_file"), (
        f"Ray {ray.__version__} moved get_ray_address_file: adapt tune.cluster.check_reachable (--address auto)")
    assert Path(ray_utils.get_ray_address_file(None)).name == "ray_current_cluster", (
        f"Ray {ray.__version__} records the started cluster elsewhere: adapt tune.cluster.check_reachable")


def test_ray_counts_a_trial_s_failures_where_retries_since_progress_resets_them():
    from ray.tune.experiment import Trial

    trial = Trial("__stub", stub=True, max_failures=search.TRIAL_RETRIES)
    reset = search.RetriesSinceProgress()
    for _ in range(3 * (search.TRIAL_RETRIES + 1)):  # lost again and again, an epoch reported after each restart
        trial.run_metadata.num_failures += 1  # what Trial.handle_error counts for a lost node's trial
        assert trial.should_recover(), f"Ray {ray.__version__} counts trial failures elsewhere: adapt RetriesSinceProgress"
        reset.on_trial_result(iteration=0, trials=[trial], trial=trial, result={})
    for _ in range(search.TRIAL_RETRIES):  # failures in a row, no epoch between: the budget runs out
        trial.run_metadata.num_failures += 1
    assert trial.should_recover()
    trial.run_metadata.num_failures += 1
    assert not trial.should_recover()
