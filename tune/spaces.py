"""Search spaces: Optuna define-by-run modules, found by name in search_spaces/ or by file path, and
validated before Ray starts."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

import optuna

import search_spaces
from cxr.config import TrainConfig
from cxr.errors import InputError
from cxr.models import check_backbone

SpaceFn = Callable[[optuna.Trial], dict | None]


@dataclass(frozen=True)
class Space:
    name: str
    fn: SpaceFn
    baselines: list[dict] = field(default_factory=list)
    pinned: frozenset[str] = frozenset()  # keys CLI flags pin, whatever the space draws

    def with_overrides(self, overrides: dict[str, Any]) -> Space:
        """The same space with some keys pinned (CLI flags such as --max-epochs win over the space)."""
        baselines = [{k: v for k, v in b.items() if k not in overrides} for b in self.baselines]
        return Space(self.name, _Pinned(self.fn, dict(overrides)), baselines, self.pinned | set(overrides))

    def with_backbones(self, backbones: list[str]) -> Space:
        """The same space drawing only these backbones (--backbones). The narrowed list is passed to every
        suggest_categorical("backbone", ...) call, so the distribution stays fixed within the study as Optuna
        requires; baselines of other backbones are dropped. Checked against the space before Ray starts."""
        if not backbones:
            raise InputError("--backbones is empty: pass a comma-separated list such as tf_efficientnet_lite0,resnet18")
        drawn = backbone_choices(self)
        unknown = [b for b in backbones if b not in drawn]
        if unknown:
            raise InputError(f"--backbones {','.join(unknown)} not in space '{self.name}': it draws {', '.join(drawn)}")
        keep = [b for b in drawn if b in backbones]  # the space's order, so the narrowing does not depend on flag order
        baselines = [b for b in self.baselines if b.get("backbone", keep[0]) in keep]
        return Space(self.name, _Narrowed(self.fn, tuple(keep)), baselines, self.pinned)


@dataclass(frozen=True)
class _Pinned:
    """A picklable space wrapper (Ray saves the searcher with pickle for --resume)."""

    fn: SpaceFn
    overrides: dict

    def __call__(self, trial: optuna.Trial) -> dict:
        return {**(self.fn(trial) or {}), **self.overrides}


@dataclass(frozen=True)
class _Narrowed:
    """A picklable space wrapper that hands space(trial) a trial whose backbone choices are narrowed."""

    fn: SpaceFn
    backbones: tuple[str, ...]

    def __call__(self, trial: optuna.Trial) -> dict | None:
        return self.fn(_BackboneTrial(trial, self.backbones))


class _BackboneTrial:
    """An Optuna trial whose suggest_categorical("backbone", ...) offers only the narrowed backbones."""

    def __init__(self, trial: optuna.Trial, backbones: tuple[str, ...]):
        self._trial, self._backbones = trial, backbones

    def suggest_categorical(self, name: str, choices):
        if name == "backbone":
            choices = [c for c in choices if c in self._backbones]
        return self._trial.suggest_categorical(name, choices)

    def __getattr__(self, name: str):
        return getattr(self._trial, name)


def backbone_choices(space: Space) -> list[str]:
    """Every backbone a space can draw: its suggest_categorical("backbone") choices, else its fixed backbone."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    try:
        fixed = space.fn(trial) or {}
    except Exception as exc:
        raise InputError(f"space '{space.name}' failed while sampling ({type(exc).__name__}: {exc}): fix its space(trial)") from None
    choices = trial.distributions.get("backbone")
    if choices is not None:
        return list(choices.choices)
    return [fixed.get("backbone", TrainConfig.backbone)]


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(search_spaces.__path__) if not m.name.startswith("_"))


def load_space(name_or_path: str) -> Space:
    """A space by name (search_spaces/<name>.py) or by path to a .py file defining space(trial)."""
    path = Path(name_or_path)
    if path.suffix == ".py":
        if not path.is_file():
            raise InputError(f"space file {path} does not exist: pass an existing .py file or one of {available()}")
        module = _import_file(path)
    elif name_or_path in available():
        module = importlib.import_module(f"search_spaces.{name_or_path}")
    else:
        raise InputError(
            f"unknown space '{name_or_path}': available are {', '.join(available())}, "
            "or pass a path to a .py file that defines space(trial)"
        )
    if not callable(getattr(module, "space", None)):
        raise InputError(f"space '{name_or_path}' defines no space(trial) function: add one (see search_spaces/smoke.py)")
    return Space(path.stem, module.space, list(getattr(module, "BASELINES", [])))


def _import_file(path: Path):
    module_name = f"_user_space_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise InputError(f"space file {path} failed to import ({type(exc).__name__}: {exc}): fix the file") from None
    # Ray pickles the searcher by reference: --resume imports the file again under this same name
    return module


def sample(space: Space, trial: optuna.Trial) -> dict[str, Any]:
    """One full config from a trial: suggested keys plus the fixed ones the space returns."""
    fixed = space.fn(trial) or {}
    return {**trial.params, **fixed}


@dataclass(frozen=True)
class CheckedSpace:
    points_to_evaluate: list[dict]  # the baselines, as the suggested parameters Optuna enqueues
    image_size: int  # the largest the space draws: films are decoded once at it, smaller trials resize on the device
    max_epochs: int
    pretrained_backbones: frozenset[str]  # every backbone the space can draw with pretrained=True
    common_keys: frozenset[str] = frozenset()  # config keys every sampled config has


def validate(space: Space, n_samples: int = 16, seed: int = 0) -> CheckedSpace:
    """Sample the space on a throwaway study and check every config and baseline: fails before Ray starts."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for baseline in space.baselines:
        study.enqueue_trial(baseline)
    configs, points, backbones, sizes = [], [], set(), set()
    for i in range(len(space.baselines) + n_samples):
        trial = study.ask()
        try:
            config = sample(space, trial)
            TrainConfig.from_dict(config)
            check_backbone(config.get("backbone", TrainConfig.backbone))
        except InputError as exc:
            raise InputError(f"space '{space.name}' draws an invalid config: {exc}") from None
        except Exception as exc:
            raise InputError(f"space '{space.name}' failed while sampling ({type(exc).__name__}: {exc}): fix its space(trial)") from None
        study.tell(trial, 0.0)
        configs.append(config)
        if config.get("pretrained", TrainConfig.pretrained):
            backbones.add(config.get("backbone", TrainConfig.backbone))
            choices = trial.distributions.get("backbone")
            backbones.update(getattr(choices, "choices", ()))
        size = config.get("image_size", TrainConfig.image_size)
        sizes |= {size} if "image_size" in space.pinned else _drawable(trial, "image_size", size)
        if i < len(space.baselines):
            _check_baseline(space, space.baselines[i], config)
            points.append(dict(trial.params))
    epochs = max(c.get("epochs", TrainConfig.epochs) for c in configs)
    common = frozenset(set.intersection(*(set(c) for c in configs)))
    return CheckedSpace(points, max(sizes), epochs, frozenset(backbones), common)


def _drawable(trial: optuna.Trial, key: str, drawn) -> set:
    """Every value trial's distribution of key can draw (its choices, or the ends of an integer range), else the
    value drawn."""
    distribution = trial.distributions.get(key)
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return set(distribution.choices)
    if isinstance(distribution, optuna.distributions.IntDistribution):
        return {distribution.low, distribution.high}
    return {drawn}


def _check_baseline(space: Space, baseline: dict, config: dict) -> None:
    unknown = set(baseline) - set(config)
    differs = {k: (v, config[k]) for k, v in baseline.items() if k in config and config[k] != v}
    if unknown or differs:
        raise InputError(
            f"space '{space.name}': baseline {baseline} is not reachable through space(trial) "
            f"(keys never drawn: {sorted(unknown)}; drawn differently: {differs}): make every baseline key a "
            "suggested parameter with the baseline's value in range, or a fixed key with that value"
        )
