"""final/metrics.json: its one schema. tune.final_stage writes it through write_metrics and every reader gets it
through read_metrics, so a file that does not match fails here, naming the key, and not in whichever reader happens
to index it first. The nested entries are cxr.evaluation's and cxr.ensemble's (results/README.md lists them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict, get_args, get_origin, get_type_hints, is_typeddict

from cxr.errors import InputError
from cxr.jsonio import jsonable, read_json, write_json

# how an operating point's threshold was chosen: on which films (metrics.json, model.json, recalibration.json);
# the words are what the model card and the reports print
CHOSEN_ON = {"val": "val", "oof": "out-of-fold predictions of the pool (train + val)", "site": "the site's films"}
Number = int | float  # JSON does not tell 2.0 from 2


class OutOfSample(TypedDict):
    folds: int
    repeats: int
    rule: str
    recall: Number | None
    recall_wilson95: list
    specificity: Number | None
    specificity_wilson95: list


class Tta(TypedDict):
    used: bool
    rule: str
    chosen_auroc_plain: Number | None  # on the films that chose the threshold
    chosen_auroc_tta: Number | None


class OwnThreshold(TypedDict):
    chosen: dict  # on the films that chose the ensemble's threshold
    test: dict | None


class ShiftedScores(TypedDict):
    """A split's films under one perturbation, at the shipped threshold (95 % intervals by patient bootstrap)."""
    auroc: Number | None
    auroc_ci95: list
    recall: Number | None
    recall_ci95: list
    specificity: Number | None
    specificity_ci95: list


class Perturbed(TypedDict):
    family: str  # cxr.shift.FAMILIES
    magnitude: Number
    strength: int  # 1 mild, 2 strong (within its family)
    chosen: ShiftedScores  # the films that chose the threshold (threshold_chosen_on)
    test: ShiftedScores | None


class Robustness(TypedDict):
    seed: int  # of the perturbations' noise
    perturbations: list[Perturbed]  # cxr.shift.ROBUSTNESS_BANK, in order


# the functional syntax: "test_at_0.5" is no identifier
_Required = TypedDict("_Required", {
    "target_recall": Number, "recall_confidence": Number | None, "rule": str, "temperature": Number,
    "threshold": Number, "threshold_rule": str, "threshold_point": Number, "threshold_ci95": list,
    "threshold_chosen_on": str,  # "val" or "oof" (CHOSEN_ON); the metrics of those films are under that key
    "n_boot": int, "bootstrap_seed": int, "calibration": dict, "test": dict | None, "test_at_0.5": dict | None,
    "subgroups": dict, "class_balance": dict, "out_of_sample": OutOfSample, "rule_cost": dict, "warnings": list,
    "members": list, "ensemble": OwnThreshold, "tta": Tta, "n_members": int, "final_epochs": int, "final_kind": str,
    "final_stage_s": Number, "members_s": Number,
})


class FinalMetrics(_Required, total=False):
    val: dict  # the films that chose the threshold: val (--final seeds) ...
    oof: dict  # ... or the fold members' out-of-fold predictions (--final folds)
    folds: dict  # --final folds only
    robustness: Robustness  # absent when the run skipped it (--no-robustness)


def from_json(value: Any, where: str = "metrics.json") -> FinalMetrics:
    """value as FinalMetrics, checked: every required key there with its type, no unknown key, the metrics of the
    split that chose the threshold under that split's name. InputError names the first key that does not fit."""
    _check(value, FinalMetrics, where)
    chosen_on = value["threshold_chosen_on"]
    if chosen_on not in ("val", "oof"):
        raise InputError(f"{where}: 'threshold_chosen_on' = {chosen_on!r} is invalid: expected 'val' or 'oof'")
    if chosen_on not in value or value[chosen_on] is None:
        raise InputError(f"{where}: key '{chosen_on}' (the metrics of the films that chose the threshold) is missing")
    return value


def to_json(metrics: FinalMetrics) -> dict:
    """The JSON object metrics.json holds (checked as read_metrics will check it)."""
    value = jsonable(metrics)
    return from_json(value, "the final stage's metrics")


def read_metrics(path: Path) -> FinalMetrics:
    """The one reader of final/metrics.json."""
    return from_json(read_json(path), str(path))


def write_metrics(path: Path, metrics: FinalMetrics) -> None:
    write_json(path, to_json(metrics))


def _check(value: Any, schema: type, where: str) -> None:
    if not isinstance(value, dict):
        raise InputError(f"{where} = {type(value).__name__} is invalid: expected a JSON object")
    hints = get_type_hints(schema)
    unknown = sorted(set(value) - set(hints))
    if unknown:
        raise InputError(f"{where}: key '{unknown[0]}' is not in the metrics.json schema (cxr.final_metrics)")
    for key, expected in hints.items():
        if key not in value:
            if key in schema.__required_keys__:
                raise InputError(f"{where}: key '{key}' is missing (cxr.final_metrics)")
            continue
        _check_value(value[key], expected, f"{where}: '{key}'")


def _check_value(value: Any, expected, where: str) -> None:
    """value against an annotation: a TypedDict (or one or None), a list of TypedDicts, or plain types."""
    args = get_args(expected)
    if value is None and type(None) in args:
        return
    if get_origin(expected) is list and is_typeddict(args[0]):
        if not isinstance(value, list):
            raise InputError(f"{where} = {value!r} is invalid: expected a list")
        for i, item in enumerate(value):
            _check(item, args[0], f"{where}[{i}]")
        return
    typed = [a for a in (expected, *args) if is_typeddict(a)]
    if typed:
        _check(value, typed[0], where)
    elif not isinstance(value, _types(expected)) or isinstance(value, bool) is not (expected is bool):
        raise InputError(f"{where} = {value!r} is invalid: expected {expected}")


def _types(annotation) -> tuple[type, ...]:
    """isinstance's types of an annotation (int, dict | None, Number | None, ...)."""
    args = get_args(annotation)
    return tuple(type(None) if a is None else a for a in args) if args else (annotation,)
