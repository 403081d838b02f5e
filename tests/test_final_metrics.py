"""cxr.final_metrics: metrics.json has one schema and one reader; a file off the schema fails every consumer there
(that the final stage's metrics fit it: tests/test_ensemble.py)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from cxr.errors import InputError
from cxr.final_metrics import from_json, to_json
from tune import report
from tune.experiment import _track_final
from tune.results import ExperimentPaths, load
from tune.settings import RunSettings


def _consumers(folder: Path) -> dict:
    """Everything that reads an experiment's metrics.json."""
    return {"tune.results.load": lambda: load(folder), "tune.report.write_report": lambda: report.write_report(folder),
            "tune.run's MLflow logging": lambda: _track_final(None, RunSettings(), ExperimentPaths(folder), Path())}


@pytest.mark.slow
@pytest.mark.parametrize("change, words", [
    (lambda m: m.pop("threshold"), "key 'threshold' is missing"),
    (lambda m: m.update(fit_split="val"), "key 'fit_split' is not in the metrics.json schema"),
    (lambda m: m["tta"].update(used="yes"), "'used' = 'yes' is invalid"),
    (lambda m: m.pop("val"), "key 'val' (the metrics of the films that chose the threshold) is missing"),
    (lambda m: m["robustness"]["perturbations"][0]["test"].update(auroc="high"), "'auroc' = 'high' is invalid"),
], ids=["missing", "unknown", "nested type", "chosen split", "robustness"])
def test_a_metrics_json_off_the_schema_fails_every_consumer_in_the_one_reader(demo, copy_experiment, capsys,
                                                                            change, words):
    folder = copy_experiment(demo)
    path = ExperimentPaths(folder).metrics
    metrics = json.loads(path.read_text())
    assert from_json(metrics) == metrics  # the demo's own file fits
    change(metrics)
    path.write_text(json.dumps(metrics))
    for name, consume in _consumers(folder).items():
        with pytest.raises(InputError, match=re.escape(words)) as caught:
            consume()
        assert Path(caught.traceback[-1].path).name == "final_metrics.py", name
    assert report.main([str(folder)]) == 2 and words in capsys.readouterr().err  # python -m tune.report: one line


def test_a_value_that_is_no_object_or_misses_a_key_is_refused_naming_it():
    with pytest.raises(InputError, match="expected a JSON object"):
        from_json([])
    with pytest.raises(InputError, match="key 'target_recall' is missing"):
        from_json({})


ROBUSTNESS_BREAKS = {
    "unknown": (lambda m: m["robustness"].update(bank="x"), "'robustness': key 'bank' is not in the metrics.json schema"),
    "not a list": (lambda m: m["robustness"].update(perturbations={}), "'perturbations' = {} is invalid: expected a list"),
    "entry type": (lambda m: m["robustness"]["perturbations"][1].update(strength="strong"),
                   "'perturbations'[1]: 'strength' = 'strong' is invalid"),
    "score missing": (lambda m: m["robustness"]["perturbations"][0]["chosen"].pop("recall"),
                      "'perturbations'[0]: 'chosen': key 'recall' is missing"),
}


@pytest.mark.parametrize("name", list(ROBUSTNESS_BREAKS))
def test_the_robustness_entries_are_typed_to_every_score(assembled, name):
    metrics = json.loads(json.dumps(to_json(assembled.metrics)))  # as metrics.json holds them
    assert from_json(copy.deepcopy(metrics)) == metrics
    change, words = ROBUSTNESS_BREAKS[name]
    change(metrics)
    with pytest.raises(InputError, match=re.escape(words)):
        from_json(metrics)
