"""tune.flags: the experiment a command line asks for, judged before anything heavy is imported."""

from __future__ import annotations

import json

import pytest

from cxr.errors import InputError
from tune.flags import Experiment, resolve


def _resolve(tmp_path, resume=False, extend=0, **fields):
    return resolve(Experiment(dataset="synthetic", results_dir=str(tmp_path), **fields), resume, extend)


def test_a_new_experiment_gets_a_timestamped_name(tmp_path):
    assert _resolve(tmp_path).name.startswith("smoke-")


@pytest.mark.parametrize("fields, words", [
    ({"num_samples": 0}, "--num-samples 0"),
    ({"image_size": 8}, "--image-size 8"),
    ({"val_fraction": 0.5}, "--val-fraction 0.5"),
    ({"recall_confidence": 1.0}, "--recall-confidence 1.0"),
    ({"weights_dir": "/nonexistent-weights"}, "--weights-dir /nonexistent-weights"),
])
def test_bad_values_are_named(tmp_path, fields, words):
    with pytest.raises(InputError, match=words):
        _resolve(tmp_path, **fields)


def test_an_existing_name_is_refused_and_resume_takes_the_saved_settings(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(InputError, match="--resume"):
        _resolve(tmp_path, name="x")
    (tmp_path / "x" / "run.json").write_text(json.dumps({**Experiment().__dict__, "name": "x", "num_samples": 5,
                                                          "results_dir": str(tmp_path)}))
    assert _resolve(tmp_path, resume=True, name="x", num_samples=99).num_samples == 5  # the saved run, not the flags
    with pytest.raises(InputError, match="not finished"):
        _resolve(tmp_path, extend=2, name="x")


@pytest.mark.parametrize("resume, extend, words", [(True, 2, "together"), (False, -1, "--extend -1"), (True, 0, "--name")])
def test_resume_and_extend_are_checked(tmp_path, resume, extend, words):
    with pytest.raises(InputError, match=words):
        _resolve(tmp_path, resume=resume, extend=extend)
