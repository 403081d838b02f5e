"""tune.plan without Ray: the data's fingerprint, ASHA's rungs and the sampler's settings as plan.json holds them
(the demo's whole plan.json is checked in tests/test_run.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from cxr.dataset import CxrData
from tune import search
from tune.plan import fingerprint, search_plan

SETTINGS = search.SearchSettings(metric="val_auroc", num_samples=64, max_epochs=10, trial_scheduler="asha",
                                 cpus_per_trial=1, gpus_per_trial=0, workers_per_trial=1, max_concurrent=3, seed=0,
                                 storage_path="unused", journal_path="unused", study_name="s")


def test_the_fingerprint_counts_films_patients_and_pneumonia_per_split_and_names_the_decode_cache(synthetic_data: CxrData):
    found = json.loads(json.dumps(fingerprint(synthetic_data)))  # plain JSON as it is
    manifest = synthetic_data.manifest
    assert found["films"] == len(manifest) and found["patients"] == manifest["patient"].nunique()
    assert set(found["splits"]) == {"train", "val", "test"} and found["image_size"] == synthetic_data.image_size
    assert sum(s["films"] for s in found["splits"].values()) == len(manifest)
    assert abs(found["splits"]["test"]["pneumonia_share"] - manifest[manifest["split"] == "test"]["label"].mean()) < 1e-4
    assert Path(found["decode_cache"]).is_file()


def test_the_search_plan_holds_the_cap_the_slots_the_sampler_and_asha_s_rungs():
    plan = search_plan(SETTINGS, slots=8)
    assert plan["startup_cap"] == 16 and plan["trial_slots"] == 8 and plan["trials_at_once"] == 3  # --max-concurrent
    assert plan["sampler"]["class"] == "TPESampler" and plan["sampler"]["n_startup_trials"] == search.STARTUP_TRIALS
    assert plan["sampler"]["multivariate"] is True and plan["sampler"]["constant_liar"] is True
    assert plan["trial_scheduler"]["rungs"] == [1, 3, 9] and plan["trial_scheduler"]["reduction_factor"] == 3
    assert search_plan(dataclasses.replace(SETTINGS, trial_scheduler="fifo"), slots=8)["trial_scheduler"]["rungs"] == []
    # --time-budget: --num-samples is only a bound (1000), the searcher caps at a quarter of the trials that fit at
    # once; the plan says the cap the searcher applies
    budgeted = dataclasses.replace(SETTINGS, num_samples=1000, trials_at_once=64)
    assert search_plan(budgeted, slots=64)["startup_cap"] == search.startup_cap(search.planned_trials(budgeted)) == 16
