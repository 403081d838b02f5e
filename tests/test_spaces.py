"""Search spaces: lookup, validation before Ray starts, baselines, overrides, picklability for --resume."""

from __future__ import annotations

import pickle

import optuna
import pytest

from cxr.errors import InputError
from search_spaces._levers import OFF as LEVERS
from tune.spaces import available, load_space, sample, validate


def test_shipped_spaces_are_listed_and_valid():
    assert {"smoke", "full"} <= set(available())
    assert validate(load_space("smoke")).image_size == 64


def test_full_space_baselines_are_enqueued_points():
    checked = validate(load_space("full"))
    assert [p["backbone"] for p in checked.points_to_evaluate] == ["tf_efficientnetv2_s", "densenet121"]
    assert checked.points_to_evaluate[1]["unfrozen_blocks"] == 2
    assert checked.image_size == 224 and checked.max_epochs == 30


def test_overrides_pin_keys_and_survive_pickle():
    space = load_space("full").with_overrides({"epochs": 1, "image_size": 32, "pretrained": False})
    checked = validate(space)
    assert (checked.image_size, checked.max_epochs) == (32, 1)
    restored = pickle.loads(pickle.dumps(space.fn))  # Ray saves the searcher with pickle
    config = sample(space, optuna.create_study().ask())
    assert config["epochs"] == 1 and config["pretrained"] is False
    assert restored(optuna.create_study().ask())["image_size"] == 32


def _write(tmp_path, body):
    path = tmp_path / "user_space.py"
    path.write_text(body)
    return str(path)


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(InputError, match="available are .*full.*smoke"):
        load_space("nonexistent")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_space(str(tmp_path / "absent.py"))


def test_unreachable_baseline_is_named(tmp_path):
    path = _write(tmp_path, "BASELINES = [{'lr': 0.5, 'dropout': 0.1}]\n"
                            "def space(trial):\n    trial.suggest_float('lr', 1e-4, 1e-2)\n    return {'dropout': 0.0}\n")
    with pytest.raises(InputError, match="baseline .*dropout"):
        validate(load_space(path))


def test_a_searched_image_size_is_decoded_at_its_largest_choice_unless_a_flag_pins_it(tmp_path):
    body = "def space(trial):\n    trial.suggest_categorical('image_size', list(range(32, 257, 8)))\n    return {}\n"
    space = load_space(_write(tmp_path, body))
    for seed in range(3):  # one draw of 29 choices each: the largest is the space's, not the draws'
        assert validate(space, n_samples=1, seed=seed).image_size == 256
    assert validate(space.with_overrides({"image_size": 48})).image_size == 48


def test_unknown_backbone_in_space(tmp_path):
    path = _write(tmp_path, "def space(trial):\n    return {'backbone': 'resnet5O'}\n")
    with pytest.raises(InputError, match="resnet5O.*resnet50"):
        validate(load_space(path))


def test_cpu_space_validates_with_its_reference_config():
    checked = validate(load_space("cpu"))
    assert checked.image_size == 192 and checked.max_epochs <= 5  # decoded once at the largest size it searches
    lite = {f"tf_efficientnet_lite{i}" for i in range(3)}  # the ImageNet weights ../shared/weights holds
    assert checked.pretrained_backbones == lite | {"mobilenetv3_large_100", "resnet18"}
    assert checked.points_to_evaluate[0]["backbone"] == "tf_efficientnet_lite0"
    assert checked.points_to_evaluate[0]["image_size"] == 128


@pytest.mark.parametrize("name", ["cpu", "full"])
def test_product_spaces_search_every_lever_and_their_baselines_run_with_the_levers_off(name):
    space = load_space(name)
    checked = validate(space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    sample(space, trial)
    assert set(LEVERS) <= set(trial.distributions)  # searched, not fixed
    as_augment_did = ("aug_rotation", "aug_crop", "aug_contrast")  # the baselines' old `augment`, in the new keys
    off = {k: v for k, v in LEVERS.items() if k not in as_augment_did}
    for point in checked.points_to_evaluate:
        assert {k: point[k] for k in off} == off and all(point[k] > 0 for k in as_augment_did)


def test_backbones_narrow_every_draw_and_drop_other_baselines():
    space = load_space("full").with_backbones(["resnet18", "densenet121"])
    assert [b["backbone"] for b in space.baselines] == ["densenet121"]
    checked = validate(space, n_samples=40)
    assert checked.pretrained_backbones == {"densenet121", "resnet18"}  # only these need weights
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    for _ in range(8):  # TPE after its start-up trials: the distribution must stay the narrowed one
        trial = study.ask()
        assert sample(space, trial)["backbone"] in {"resnet18", "densenet121"}
        study.tell(trial, 0.5)
    assert pickle.loads(pickle.dumps(space.fn))(optuna.create_study().ask()) is not None


def test_unknown_backbone_in_backbones_names_the_choices():
    with pytest.raises(InputError, match="--backbones resnet50 not in space 'cpu'.*tf_efficientnet_lite0"):
        load_space("cpu").with_backbones(["resnet18", "resnet50"])
