"""The run a command line asks for: RunSettings declares every flag once (name, default, help), tune.run builds its
parser from it, and resolve() checks the values and paths before data is read or Ray starts.

Only light imports at the top: tune.run answers --help and judges every flag before torch, Ray or Optuna load.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cxr.cli import DEFAULT_THRESHOLD_RULE, SHARED_RULES, THRESHOLD_RULES, range_problem
from cxr.config import PRECISIONS
from cxr.monitors import DEFAULT_METRIC, MONITORS
from cxr.errors import InputError
from tune.budget import MAX_TRIALS, parse_duration

TRIAL_SCHEDULERS = ("asha", "fifo")
FINAL_KINDS = ("seeds", "folds")
DEFAULT_TRIALS = 8


# the groups of --help and of the flag reference, in this order
SECTIONS = ("data", "search", "resources", "final model", "tracking", "cluster", "output")


def _flag(default, help: str, *, section: str, into: tuple[str, ...] | dict[str, str] = (), place: bool = False,
          **argparse: object):
    """A RunSettings field and its command-line flag (--<field-name> unless argparse names another). section: its
    group in --help (one of SECTIONS); into: the parts of the run it sets ("search", "final", "budget"), under its own
    name or {part: name there}; place: where things are on this machine, not how the run runs (not logged as a
    parameter of the run); exclusive: one of the flags that name the data (at most one is given); renamed_from: the
    flag's old names, still accepted with a note."""
    assert section in SECTIONS, section
    return dataclasses.field(default=default, metadata={"help": help, "section": section, "into": into, "place": place,
                                                        **argparse})


@dataclass(frozen=True)
class RunSettings:
    """Everything a run was asked for; saved as run.json so --resume repeats it exactly."""

    space: str = _flag("smoke", "search space: a name in search_spaces/ or a path to a .py file defining space(trial)", section="search")
    backbones: str | None = _flag(None, "comma-separated subset of the space's backbones to search (only these need weights)", section="search")
    data_dir: str | None = _flag(None, "Kaggle chest_xray folder (<dir>/{train,val,test}/{NORMAL,PNEUMONIA}, JPEG/PNG/DICOM) "
                                 "or a CSV/parquet manifest (path, label[, patient, split])", exclusive=True, section="data")
    dataset: str | None = _flag(None, "use a generated CXR-like data set (made once in the cache folder)",
                                choices=["synthetic"], exclusive=True, section="data")
    num_samples: int | None = _flag(None, into=("search",), help="number of trials (default 8; with --time-budget an upper bound, and "
                                    "when not given as many as fit, at most 1000)", section="search")
    time_budget: str | None = _flag(None, "the whole command aims to end within this (e.g. 45m, 2h, 90s): trials stop "
                                    "starting when what is left is what the final stage needs", metavar="DURATION", section="search")
    max_epochs: int | None = _flag(None, "epoch budget per trial (ASHA's max_t); default: the space's epochs",
                                   config_key="epochs", section="search")
    image_size: int | None = _flag(None, "override the space's image size (e.g. small for a CPU check)", config_key="image_size", section="search")
    precision: str | None = _flag(None, "arithmetic of training and inference (config key precision): auto = bf16 on "
                                  "GPUs with native bfloat16 (compute capability 8.0+), fp16 with loss scaling on "
                                  "older GPUs, fp32 on CPU; default: the space's, else auto", config_key="precision",
                                  choices=list(PRECISIONS), section="resources")
    metric: str = _flag(DEFAULT_METRIC, into=("search", "budget"), help="trial score: val_loss (log-loss) is minimised, every other "
                        "maximised; val_spec_at_recall = val specificity at the threshold reaching --target-recall; "
                        "val_shift_* = the same val films under fixed acquisition perturbations (cxr.shift)",
                        choices=list(MONITORS), section="search")
    target_recall: float = _flag(0.98, "pneumonia recall the decision threshold must reach on val", config_key="target_recall",
                                  section="final model")
    trial_scheduler: str = _flag("asha", into=("search",), help="asha stops weak trials early; fifo runs all to the end (not the LR schedule: "
                                 "that is the config key 'scheduler')", choices=list(TRIAL_SCHEDULERS),
                                 renamed_from=["--scheduler"], section="search")
    cpus_per_trial: float = _flag(1.0, "CPUs reserved per trial", into=("search",), section="resources")
    gpus_per_trial: float = _flag(0.0, "GPUs per trial; fractions pack trials on one GPU (0.25 = four per GPU)",
                                  into=("search",), section="resources")
    workers_per_trial: int = _flag(1, into=("search",), help="data-parallel processes per trial (Ray Train, NCCL on GPUs, gloo on CPU); "
                                   "--cpus/--gpus-per-trial are then per worker", section="resources")
    max_concurrent: int = _flag(0, "trials running at once (0: as many as resources allow)", into=("search",), section="resources")
    results_dir: str = _flag("results", "experiment folders are created here", place=True, section="output")
    name: str | None = _flag(None, "experiment name (default: <space>-<timestamp>); an existing name needs --resume",
                             place=True, section="output")
    seed: int = _flag(0, "seed of the sampler, the train/val split and training", config_key="seed",
                      into=("search", "final"), section="search")
    val_fraction: float = _flag(0.2, "share of train patients held out for validation",
                                into={"final": "inner_fraction"}, section="data")
    weights_dir: str | None = _flag(None, "folder of <backbone>.safetensors files used instead of the timm hub",
                                    place=True, section="search")
    pretrained: bool = _flag(True, "train from random initialisation", flag="--no-pretrained", action="store_false", section="search")
    cache_dir: str | None = _flag(None, "decoded-image cache (default: $CXR_CACHE_DIR or ~/.cache/cxr)", place=True, section="data")
    max_pixels: int | None = _flag(None, "a film whose header claims more pixels stops the run, unread (default: "
                                   "cxr.images.MAX_PIXELS, 60 million)", section="data")
    address: str | None = _flag(None, place=True, help="join an existing Ray cluster (e.g. auto or ray://host:10001); default: start a local one", section="cluster")
    storage_path: str | None = _flag(None, place=True, help="where Ray Tune keeps trials and checkpoints (local path, NFS, s3://, gs://); "
                                     "default: the experiment folder", section="cluster")
    final_kind: str = _flag("seeds", into={"final": "kind"}, flag="--final", help="final model: seeds = K members of the best config with new seeds on train, operating "
                       "point fitted on val; folds = one member per patient fold of train + val, operating point fitted "
                       "on their out-of-fold predictions", choices=list(FINAL_KINDS), section="final model")
    final_members: int = _flag(3, into={"final": "n_members", "budget": "final_members"}, help="ensemble members K of the final model, trained in parallel (folds: K folds)",
                               renamed_from=["--final-seeds"], metavar="K", section="final model")
    final_epochs: int | None = _flag(None, "epochs of each final member (default: the best config's)", metavar="N",
                                     into={"final": "epochs"},
                                     config_key="epochs", section="final model")
    robustness: bool = _flag(True, "skip scoring the final model under the robustness bank (cxr.robustness: each member "
                             "scores val and test under ten perturbations, plain and mirrored, where it trains; about one "
                             "training epoch per member); metrics.json then has no 'robustness' and the report says it "
                             "was skipped", flag="--no-robustness",
                             action="store_false", into=("final",), section="final model")
    mlflow: str | None = _flag(None, place=True, help="track the experiment in MLflow: a parent run, a child run per trial, the final "
                               "model (pip install -e \".[mlflow]\"); URI default: $MLFLOW_TRACKING_URI, else "
                               "sqlite:///<results-dir>/mlflow.db", nargs="?", const="", metavar="URI", section="tracking")
    register: str | None = _flag(None, place=True, help="with --mlflow: register the final model as a new version of this MLflow model",
                                 metavar="NAME", section="tracking")
    threshold_rule: str = _flag(DEFAULT_THRESHOLD_RULE, into=("final",), help="how the threshold is fixed on val (or the out-of-fold films): "
                                "exact: the highest whose recall on further films reaches --target-recall with "
                                "--recall-confidence (the k-th lowest pneumonia score); bootstrap: the highest whose "
                                "patient-bootstrap lower bound does; point: val's own recall does (in-sample: on real "
                                "films it missed the target on the next films about half the time, BENCHMARKS.md)",
                                choices=list(THRESHOLD_RULES), section="final model")
    recall_confidence: float | None = _flag(None, into=("final",), help="confidence C of the exact and bootstrap threshold rules (default 0.95)",
                                            metavar="C", section="final model")


def fed_into(part: str, settings: RunSettings) -> dict:
    """What the run's settings give `part` of the run ("search", "final", "budget"), by the names it has there: the
    one place sub-settings are derived from RunSettings."""
    given = {}
    for f in dataclasses.fields(RunSettings):
        into = f.metadata["into"]
        if part in into:
            given[into[part] if isinstance(into, dict) else f.name] = getattr(settings, f.name)
    return given


# what a run is (its parameters in MLflow), not where its files and services are on this machine
RUN_PARAMETERS = tuple(f.name for f in dataclasses.fields(RunSettings) if not f.metadata["place"])


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag", f"--{field.name.replace('_', '-')}")


def resolve(settings: RunSettings, resume: bool, extend: int) -> RunSettings:
    """Fill the default name; on --resume/--extend take the saved settings; refuse to overwrite an experiment."""
    from cxr.jsonio import read_json
    from tune.results import ExperimentPaths  # pandas: only after --help has answered

    if extend < 0:
        raise InputError(f"--extend {extend} is out of range: use the number of trials to add (1 or more)")
    if resume and extend:
        raise InputError("--resume and --extend together: finish the run with --resume first, then --extend")
    if resume or extend:
        flag = "--resume" if resume else "--extend"
        if not settings.name:
            raise InputError(f"{flag} needs --name: the experiment to continue")
        paths = ExperimentPaths(Path(settings.results_dir) / settings.name)
        if not paths.run.exists():
            raise InputError(f"no experiment '{settings.name}' in {settings.results_dir}: check --name and --results-dir")
        if resume and paths.finished:
            raise InputError(f"experiment '{settings.name}' is already complete ({paths.final}): add trials with --extend N or start a new --name")
        if extend and not paths.finished:
            raise InputError(f"experiment '{settings.name}' is not finished: complete it with --resume before --extend")
        saved = RunSettings(**read_json(paths.run))
        # the folder is where it is now (copied or moved since), the rest is what the run was asked for; an --extend
        # round has a budget of its own (or none)
        budget = settings.time_budget if extend else saved.time_budget
        if extend and budget and not (parse_duration(budget) or 0) > 0:
            raise InputError(f"--time-budget {budget} is out of range: {_RULES['time_budget'][1]}")
        return dataclasses.replace(saved, results_dir=settings.results_dir, name=settings.name, time_budget=budget)
    name = settings.name or f"{Path(settings.space).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (Path(settings.results_dir) / name).exists():
        raise InputError(f"experiment '{name}' already exists in {settings.results_dir}: add --resume to continue it or pick another --name")
    if settings.data_dir is None and settings.dataset is None:
        raise InputError("no data: pass --data-dir <Kaggle chest_xray folder> or --dataset synthetic")
    check_flags(settings)
    samples = settings.num_samples or (MAX_TRIALS if settings.time_budget else DEFAULT_TRIALS)
    return dataclasses.replace(settings, name=name, mlflow=_tracking_uri(settings), num_samples=samples)


def _tracking_uri(settings: RunSettings) -> str | None:
    """--mlflow's URI as run.json keeps it (so --resume writes to the same store whatever the environment says)."""
    if settings.mlflow is None:
        return None
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise InputError('--mlflow needs MLflow, which is not installed: pip install -e ".[mlflow]"')
    if settings.mlflow:
        return settings.mlflow
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(settings.results_dir).resolve() / 'mlflow.db'}"


_RULES = {  # flags of tune.run alone that no TrainConfig key judges (cxr.cli holds the rules CLIs share): (ok, fix)
    "num_samples": (lambda v: v >= 1, "use 1 or more"),
    "time_budget": (lambda v: (parse_duration(v) or 0) > 0, "use a duration such as 45m, 2h, 1h30m or 90s"),
    "workers_per_trial": (lambda v: v >= 1, "use 1 or more"),
    "cpus_per_trial": (lambda v: v > 0, "use a positive number"),
    "gpus_per_trial": (lambda v: v >= 0, "use 0 or more"),
    "max_concurrent": (lambda v: v >= 0, "use 0 (no limit) or more"),
    "final_members": (lambda v: v >= 1, "use 1 or more ensemble members"),
}


def is_uri(storage_path: str) -> bool:
    """s3://, gs://, ... (shared by every node, no local folder to check or clean) rather than a path."""
    return "://" in storage_path


def check_flags(settings: RunSettings) -> None:
    """Every flag value and path that can be judged before data is read or Ray starts; flags that set a TrainConfig
    key are judged by that key's own rule."""
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        fix = None if value is None else _range_problem(field, value)
        if fix:
            raise InputError(f"{flag_name(field)} {value} is out of range: {fix}")
    folders = [("--results-dir", settings.results_dir), ("--cache-dir", settings.cache_dir)]
    if settings.storage_path and not is_uri(settings.storage_path):
        folders.append(("--storage-path", settings.storage_path))
    for flag, folder in folders:
        if folder is not None:
            _check_writable_folder(flag, Path(folder))
    if settings.weights_dir is not None and not Path(settings.weights_dir).is_dir():
        raise InputError(f"--weights-dir {settings.weights_dir} does not exist or is not a folder: pass an existing folder")
    if settings.register is not None and settings.mlflow is None:
        raise InputError(f"--register {settings.register} needs --mlflow: add --mlflow [URI]")
    if settings.final_kind == "folds" and settings.final_members < 2:
        raise InputError(f"--final folds with --final-members {settings.final_members}: folds need 2 or more members "
                         "(one per fold); use --final-members 3 or --final seeds")
    _check_data_dir(settings.data_dir)


def _range_problem(field: dataclasses.Field, value) -> str | None:
    if field.name in _RULES:
        ok, fix = _RULES[field.name]
        return None if ok(value) else fix
    key = field.metadata.get("config_key") or (field.name if field.name in SHARED_RULES else None)
    return range_problem(key, value) if key else None


def _check_data_dir(data_dir: str | None) -> None:
    if data_dir is None:
        return
    from cxr.manifest import is_manifest

    if not (Path(data_dir).is_dir() or is_manifest(data_dir)):
        raise InputError(f"--data-dir {data_dir} does not exist as a folder or a .csv/.parquet manifest: pass the "
                         "Kaggle chest_xray folder or a manifest with path and label columns")


def _check_writable_folder(flag: str, folder: Path) -> None:
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{flag} {folder}: {existing} is a file, not a folder: pass a folder path")
    if not os.access(existing, os.W_OK):
        raise InputError(f"{flag} {folder}: {existing} is not writable: pass a folder you can write to")

