"""tune.report without an experiment: every string that comes from data is escaped (the whole report is checked
end to end on the demo in test_run.py)."""

from __future__ import annotations

import shutil

import pytest

from tune.report import _audit_html

HOSTILE = "<img src=x onerror=alert(1)>"


def test_file_names_splits_and_patient_ids_from_the_data_are_escaped():
    audit = {"images_hashed": 2, "duplicate_groups_across_splits": 1, "duplicate_groups_by_splits": {f"test+{HOSTILE}": 1},
             "duplicate_groups_within_one_split": 0, "patients_in_pool_and_test": 1, "patient_examples": [HOSTILE],
             "duplicate_examples": [[{"path": f"/data/{HOSTILE}.png", "split": "train"},
                                     {"path": "/data/b.png", "split": HOSTILE}]]}
    page = _audit_html(audit)
    assert "<img" not in page and page.count("&lt;img src=x onerror=alert(1)&gt;") == 4


@pytest.mark.slow
def test_a_copied_experiment_under_another_name_still_reports_its_search(demo, tmp_path):
    """The Optuna study keeps the name the experiment was created with (run.json), whatever the folder is called."""
    from tune.report import write_report

    copy = tmp_path / "renamed"
    shutil.copytree(demo.folder, copy, ignore=shutil.ignore_patterns("report"))
    page = write_report(copy).read_text()
    assert "Optimisation history" in page and "Parameter importances" in page
