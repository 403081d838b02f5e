"""tune.settings: the run a command line asks for, judged before anything heavy is imported."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cxr.config import TrainConfig
from cxr.errors import InputError
from tune.settings import RunSettings, resolve


def _resolve(tmp_path, resume=False, extend=0, **fields):
    return resolve(RunSettings(dataset="synthetic", results_dir=str(tmp_path), **fields), resume, extend)


def test_a_new_experiment_gets_a_timestamped_name(tmp_path):
    assert _resolve(tmp_path).name.startswith("smoke-")


@pytest.mark.parametrize("fields, words", [
    ({"num_samples": 0}, "--num-samples 0"),
    ({"image_size": 8}, r"--image-size 8 is out of range: expected an integer in \[16, 2048\]"),
    ({"max_epochs": 0}, "--max-epochs 0"),
    ({"final_epochs": 0}, "--final-epochs 0"),
    ({"seed": -1}, "--seed -1"),
    ({"target_recall": 1.5}, "--target-recall 1.5"),
    ({"val_fraction": 0.5}, "--val-fraction 0.5"),
    ({"recall_confidence": 1.0}, "--recall-confidence 1.0"),
    ({"weights_dir": "/nonexistent-weights"}, "--weights-dir /nonexistent-weights"),
    ({"precision": "fp8"}, r"--precision fp8 is out of range: expected one of \('auto', 'bf16', 'fp16', 'fp32'\)"),
])
def test_bad_values_are_named(tmp_path, fields, words):
    with pytest.raises(InputError, match=words):
        _resolve(tmp_path, **fields)


@pytest.mark.parametrize("key, flag_value", [("image_size", 2048), ("image_size", 16), ("epochs", 1)])
def test_flags_that_set_a_config_key_accept_what_the_config_accepts(tmp_path, key, flag_value):
    TrainConfig(**{key: flag_value})  # the config's own rule accepts it, so the flag must too
    field = {"image_size": "image_size", "epochs": "max_epochs"}[key]
    assert getattr(_resolve(tmp_path, **{field: flag_value}), field) == flag_value


@pytest.mark.parametrize("argv, expected", [(["--precision", "fp16"], "fp16"), ([], "auto")])
def test_the_precision_flag_reaches_every_trial_s_config(tmp_path, argv, expected):
    """--precision pins the config key in every trial; without it the space's choice (the full space has none: the
    key's default) holds."""
    import optuna

    from tune.experiment import _overrides
    from tune.parser import create_parser
    from tune.spaces import load_space, sample

    args = create_parser().parse_args(["--dataset", "synthetic", "--results-dir", str(tmp_path), *argv])
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunSettings)}
    settings = resolve(RunSettings(**fields), False, 0)
    space = load_space("full").with_overrides(_overrides(settings))
    config = TrainConfig.from_dict(sample(space, optuna.create_study().ask()))
    assert config.precision == expected


def test_an_existing_name_is_refused_and_resume_takes_the_saved_settings(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(InputError, match="--resume"):
        _resolve(tmp_path, name="x")
    saved = {**dataclasses.asdict(RunSettings()), "name": "x", "num_samples": 5, "results_dir": "/where/it/was"}
    (tmp_path / "x" / "run.json").write_text(json.dumps(saved))
    resumed = _resolve(tmp_path, resume=True, name="x", num_samples=99)
    assert resumed.num_samples == 5  # the saved run, not the flags
    assert resumed.results_dir == str(tmp_path)  # the folder as it is now, also after a move
    with pytest.raises(InputError, match="not finished"):
        _resolve(tmp_path, extend=2, name="x")


@pytest.mark.parametrize("resume, extend, words", [(True, 2, "together"), (False, -1, "--extend -1"), (True, 0, "--name")])
def test_resume_and_extend_are_checked(tmp_path, resume, extend, words):
    with pytest.raises(InputError, match=words):
        _resolve(tmp_path, resume=resume, extend=extend)


def test_the_search_and_final_settings_take_every_flag_they_share_with_the_run_from_it():
    """fed_into is the one place RunSettings feeds the parts of a run: every field a part gets is a field of that
    part, and each part's field either comes from a flag or is one the experiment derives (named here)."""
    from tune.budget import Budget
    from tune.final_stage import FinalSettings
    from tune.search import SearchSettings
    from tune.settings import RUN_PARAMETERS, fed_into

    run = RunSettings(final_members=5, val_fraction=0.3, final_kind="folds", seed=7, cpus_per_trial=0.5)
    derived = {"search": {"max_epochs", "storage_path", "journal_path", "study_name", "local_cluster"},
               "final": set(), "budget": {"total_s", "final_epochs", "member_slots", "robustness_passes"}}
    for part, cls in (("search", SearchSettings), ("final", FinalSettings), ("budget", Budget)):
        given = fed_into(part, run)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(given) <= set(fields), part
        required = {n for n, f in fields.items() if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        assert required <= set(given) | derived[part], (part, required - set(given) - derived[part])
    assert set(fed_into("final", run)) == {f.name for f in dataclasses.fields(FinalSettings)}  # all from flags
    final = FinalSettings(**fed_into("final", run))
    assert (final.n_members, final.inner_fraction, final.kind, final.seed) == (5, 0.3, "folds", 7)
    assert fed_into("search", run)["cpus_per_trial"] == 0.5 and fed_into("budget", run) == {"final_members": 5, "metric": run.metric}
    assert "results_dir" not in RUN_PARAMETERS and {"final_members", "time_budget", "seed"} <= set(RUN_PARAMETERS)
