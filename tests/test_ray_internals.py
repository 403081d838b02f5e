"""What tune/ still takes from Ray beyond its public API (each check fails naming what changed, so a new release
that moves it is caught here, not in a user's search): tune.cluster's ray._common.utils.get_ray_address_file
(--address auto) and RetriesSinceProgress's Trial.run_metadata (failures counted since the last epoch). The
searcher is on public interfaces only, checked here too. When one of these fails after an upgrade, adapt the named
code."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import ray
from ray._common import utils as ray_utils

from tune import search


def test_the_searcher_and_its_wrappers_touch_no_private_attribute():
    """tune.search's searcher is on the public interfaces of Ray's Searcher and Optuna's study and storage: no
    attribute whose name starts with _ is read or written there, so no release can move it from under a search."""
    source = inspect.getsource(search)
    searchers = [inspect.getsource(c) for c in (search.JournalSearch, search.SearcherWrapper, search.StartupCap,
                                                search.BudgetGate)]
    private = sorted({m for text in searchers for m in re.findall(r"\.(_[A-Za-z]\w*)", text)})
    assert not private, f"tune.search's searcher reads private attributes {private}: use a public interface"
    assert "import _" not in source and "._common" not in source


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
