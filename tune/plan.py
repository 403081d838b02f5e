"""results/<name>/plan.json: what the run decided, and from what, before its first trial (as nnU-Net's plans file):
the trials that fit at once, the start-up cap, the sampler and the trial scheduler with their settings, the library
versions and the data's fingerprint; the final stage adds what it decides (its members' seeds). run.json says what
the user asked; this says what the run made of it. The report shows it, MLflow logs it."""

from __future__ import annotations

import platform
import re
from importlib import metadata

from cxr.dataset import CxrData
from cxr.jsonio import read_json, write_json
from tune import cluster, search
from tune.results import ExperimentPaths

LIBRARIES = ("torch", "torchvision", "timm", "ray", "optuna", "numpy", "pandas", "scikit-learn", "pillow", "pydicom",
             "mlflow")


def write_data_plan(paths: ExperimentPaths, data: CxrData) -> dict:
    """Each session, once its data is loaded (a resumed one may run with other libraries: its plan replaces the last)."""
    return add_to_plan(paths, data=fingerprint(data), versions=versions())


def write_search_plan(paths: ExperimentPaths, settings: search.SearchSettings) -> dict:
    """Before a search round's first trial (or its resumption, on whatever cluster that runs)."""
    slots = cluster.trial_slots(settings.cpus_per_trial, settings.gpus_per_trial)
    return add_to_plan(paths, search=search_plan(settings, slots))


def add_to_plan(paths: ExperimentPaths, **sections: dict) -> dict:
    """plan.json with sections added or replaced (a later stage's decisions); the others kept."""
    plan = (read_json(paths.plan) if paths.plan.is_file() else {}) | sections
    write_json(paths.plan, plan)
    return plan


def search_plan(settings: search.SearchSettings, slots: int) -> dict:
    """plan.json's search section: what a round of settings does on a cluster of that many trial slots."""
    at_once = min(slots, settings.max_concurrent) if settings.max_concurrent else slots
    scheduler = search.create_trial_scheduler(settings)
    cap = search.startup_cap(search.planned_trials(settings))  # what the searcher's StartupCap applies
    return {"round": settings.tune_dir_name, "num_samples": settings.num_samples, "trial_slots": slots, "trials_at_once": at_once,
            "startup_trials": search.STARTUP_TRIALS, "startup_cap": cap,
            "sampler": _settings_of(search.create_sampler(settings)),
            "trial_scheduler": _settings_of(scheduler) | {"rungs": rungs(scheduler)}}


def _settings_of(thing) -> dict:
    """An Optuna sampler's or a Ray scheduler's own settings, as the object holds them (its plain values)."""
    held = {name.lstrip("_"): value for name, value in vars(thing).items()
            if isinstance(value, (bool, int, float, str)) or value is None}
    return {"class": type(thing).__name__, **held}


def rungs(scheduler) -> list[int]:
    """The epochs at which ASHA compares trials (from its debug_string: Ray gives them no other public way); none
    for FIFO."""
    return sorted(int(float(r)) for r in re.findall(r"Iter ([\d.]+)", scheduler.debug_string()))


def fingerprint(data: CxrData) -> dict:
    """What the search trained and chose on: films, patients and pneumonia share per split, the decoded image size
    and the decode cache file the trials read."""
    manifest = data.manifest
    splits = {split: {"films": int(len(rows)), "patients": int(rows["patient"].nunique()),
                      "pneumonia_share": round(float(rows["label"].mean()), 4)}
              for split, rows in manifest.groupby("split", sort=True)}
    return {"films": int(len(manifest)), "patients": int(manifest["patient"].nunique()), "splits": splits,
            "image_size": data.image_size, "decode_cache": _file_of(data.images)}


def _file_of(images) -> str | None:
    """The cache file a memory-mapped array reads (None for films held in memory)."""
    filename = getattr(images, "filename", None)
    return None if filename is None else str(filename)


def versions() -> dict:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), **{name: version(name) for name in LIBRARIES}}
