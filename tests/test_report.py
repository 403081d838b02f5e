"""tune.report: every string from outside the code is escaped in report.html, in the audit's template alone, in an
experiment made here and in a copy of the demo (the whole report is checked end to end on the demo in test_run.py)."""

from __future__ import annotations

import json
import shutil
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.final_metrics import write_metrics
from cxr.html_page import render_page
from cxr.shift import ROBUSTNESS_BANK
from cxr.jsonio import write_json
from tune.report import write_report
from tune.results import ExperimentPaths, TrialRecord, create_tables, write_table

HOSTILE = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>alert(1)</script>"  # where a slash may stand: not in a folder's or a film's own name


def test_file_names_splits_and_patient_ids_from_the_data_are_escaped():
    audit = {"images_hashed": 2, "duplicate_groups_across_splits": 1, "duplicate_groups_by_splits": {f"test+{HOSTILE}": 1},
             "duplicate_groups_within_one_split": 0, "patients_in_pool_and_test": 1, "patient_examples": [HOSTILE],
             "duplicate_examples": [[{"path": f"/data/{HOSTILE}.png", "split": "train"},
                                     {"path": "/data/b.png", "split": HOSTILE}]]}
    page = render_page("tune", "report_audit.html.j2", audit=audit)
    assert "<img" not in page and page.count("&lt;img src=x onerror=alert(1)&gt;") == 4


def _searched_experiment(folder: Path) -> Path:
    """An experiment as a search leaves it before its final stage (no journal: a folder assembled by hand), whose
    strings from outside the code are hostile: the folder's name, a film's file name and a patient id (the data), a
    backbone (the search space) and a path in plan.json (the machine)."""
    paths = ExperimentPaths(folder)
    films = [folder.parent / "films" / name for name in (f"{HOSTILE}.png", "b.png")]
    films[0].parent.mkdir(parents=True)
    for film in films:  # pixel-identical, one in train and one in test: the audit names both
        Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(film)
    write_table(paths.splits, pd.DataFrame({"path": [str(f) for f in films], "label": [1, 1], "patient": [SCRIPT] * 2,
                                            "split": ["train", "test"], "source_split": ["train", "test"]}))
    metric = "val_spec_at_recall"
    epochs = pd.DataFrame({"epoch": [1, 2], "time_total_s": [1.0, 2.0], metric: [0.5, 0.6], "val_auroc": [0.8, 0.9]})
    trials, epochs = create_tables([TrialRecord("t1", 1, {"backbone": SCRIPT, "lr": 1e-3}, epochs, None)], metric)
    write_table(paths.trials, trials)
    write_table(paths.epochs, epochs)
    write_json(paths.run, {"name": folder.name, "metric": metric})
    write_json(paths.best, {"trial_id": "t1", "metric": metric, "config": {}})
    write_json(paths.plan, {"data": {"root": f"/data/{SCRIPT}"}})
    return folder


def test_strings_from_the_data_the_search_space_and_the_machine_are_escaped_in_report_html(tmp_path):
    page = write_report(_searched_experiment(tmp_path / "results" / HOSTILE)).read_text()
    assert "<script" not in page and HOSTILE not in page
    assert page.count(escape(HOSTILE)) == 3  # the title, the heading and the film's name in the audit
    assert page.count(escape(SCRIPT)) == 3  # the patient id, the leaderboard's backbone and the plan's path


def _finished(folder, assembled, synthetic_data, metrics: dict) -> ExperimentPaths:
    """A folder made here: the synthetic set, two trials searched on val_loss, the final stage of made-up members."""
    paths = ExperimentPaths(folder)
    write_table(paths.splits, synthetic_data.manifest)
    records = [TrialRecord(t, i, {"lr": 1e-3}, pd.DataFrame({"epoch": [1, 2], "time_total_s": [1.0, 2.0], "val_loss": losses,
                                                             "val_auroc": [0.8, 0.9]}), None)
               for i, (t, losses) in enumerate((("high", [0.6, 0.5]), ("low", [0.4, 0.45])), start=1)]
    trials, epochs = create_tables(records, "val_loss")
    write_table(paths.trials, trials)
    write_table(paths.epochs, epochs)
    write_json(paths.run, {"name": "finished", "metric": "val_loss"})
    write_json(paths.best, {"trial_id": "low", "metric": "val_loss", "config": {}})
    paths.final.mkdir()
    write_metrics(paths.metrics, metrics)
    write_table(paths.predictions, assembled.predictions)
    return paths


def _robustness_section(page: str) -> str:
    section = page[page.index('<section id="robustness-to-acquisition-shift">'):]
    return section[:section.index("</section>")]


def test_a_finished_experiment_s_report_shows_its_robustness_and_its_minimised_metric(tmp_path, assembled, synthetic_data):
    paths = _finished(tmp_path / "finished", assembled, synthetic_data, assembled.metrics)
    page = write_report(paths.root).read_text()
    section = _robustness_section(page)
    assert '<img alt="robustness"' in section and "none (clean)" in section
    for p in ROBUSTNESS_BANK:
        assert f"<td>{p.family} {p.magnitude:g}</td><td>{p.strength}</td>" in section, p.name
    assert section.count("<tr>") == 2 + len(ROBUSTNESS_BANK)  # the header, clean, one row per perturbation
    assert "robustness.png" in json.loads((paths.report / "report.json").read_text())["figures"]
    leaderboard = page[page.index("<h3>Leaderboard"):]
    assert "by best val_loss,\nlowest first" in leaderboard
    assert leaderboard.index("<td>low</td>") < leaderboard.index("<td>high</td>")


def test_a_run_without_the_robustness_step_has_a_report_that_says_so(tmp_path, assembled, synthetic_data):
    """--no-robustness: metrics.json without "robustness" fits the schema, and the report names the flag."""
    metrics = {k: v for k, v in assembled.metrics.items() if k != "robustness"}
    paths = _finished(tmp_path / "skipped", assembled, synthetic_data, metrics)
    page = write_report(paths.root).read_text()
    assert "<code>--no-robustness</code>" in _robustness_section(page) and '<img alt="robustness"' not in page
    assert "robustness.png" not in json.loads((paths.report / "report.json").read_text())["figures"]


@pytest.mark.slow
def test_a_final_stage_s_warning_and_rules_are_escaped_in_report_html(demo, tmp_path):
    folder = tmp_path / HOSTILE
    shutil.copytree(demo.folder, folder, ignore=shutil.ignore_patterns("report"))
    path = ExperimentPaths(folder).metrics
    metrics = json.loads(path.read_text())
    metrics["warnings"].append(f"film {SCRIPT} is unreadable")
    metrics["threshold_rule"] += SCRIPT
    metrics["tta"]["rule"] += SCRIPT
    path.write_text(json.dumps(metrics))
    page = write_report(folder).read_text()
    assert "<script" not in page and HOSTILE not in page
    assert f"<li>film {escape(SCRIPT)} is unreadable</li>" in page and page.count(escape(SCRIPT)) == 3
    assert page.count(escape(HOSTILE)) == 2  # the title and the heading


@pytest.mark.slow
def test_a_copied_experiment_under_another_name_still_reports_its_search(demo, tmp_path):
    """The Optuna study keeps the name the experiment was created with (run.json), whatever the folder is called."""
    copy = tmp_path / "renamed"
    shutil.copytree(demo.folder, copy, ignore=shutil.ignore_patterns("report"))
    page = write_report(copy).read_text()
    assert "Optimisation history" in page and "Parameter importances" in page
