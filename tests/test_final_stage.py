"""tune.final_stage writing final/: whole or absent (the driver killed in the final stage, with Ray, is in
tests/test_faults.py)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from cxr.package import load_model
from tune import final_stage, report
from tune.final_stage import write_final
from tune.results import ExperimentPaths, load
from tune.settings import RunSettings, resolve


class Killed(BaseException):
    """The driver dying between two files (not an Exception: nothing may catch it on the way)."""


@pytest.mark.slow
def test_a_driver_killed_between_two_files_of_final_leaves_an_experiment_resume_finishes_and_the_report_reads(
        demo, copy_experiment, monkeypatch, capsys):
    folder = copy_experiment(demo)
    paths = ExperimentPaths(folder)
    # what the final stage had assembled when it began writing
    model, metrics, card = load_model(paths.final), load(folder).metrics, paths.model_card.read_text()
    tables = {p: pd.read_parquet(p) for p in (paths.predictions, paths.history)}
    shutil.rmtree(paths.final)
    shutil.rmtree(paths.report)
    real_write_table, written = final_stage.write_table, []

    def killed_after_one_table(path, frame):
        if written:
            raise Killed
        written.append(path.name)
        real_write_table(path, frame)

    monkeypatch.setattr(final_stage, "write_table", killed_after_one_table)
    with pytest.raises(Killed):
        write_final(paths, model, metrics, tables, card)
    assert written == ["predictions.parquet"] and not paths.final.exists() and not paths.finished
    asked = RunSettings(name=folder.name, results_dir=str(folder.parent))
    assert resolve(asked, resume=True, extend=0).name == folder.name  # --resume is not refused as complete
    assert report.main([str(folder)]) == 0  # python -m tune.report meanwhile: the data and the search
    page = (paths.report / "report.html").read_text()
    assert "No final model yet" in page and "Leaderboard" in page and "Headline" not in page

    monkeypatch.setattr(final_stage, "write_table", real_write_table)
    write_final(paths, model, metrics, tables, card)  # what --resume does once it has its members back
    assert paths.finished and load(folder).metrics == metrics
    assert sorted(p.name for p in paths.final.iterdir()) == sorted(p.name for p in (demo.folder / "final").iterdir())
    assert not list(folder.glob(".*tmp"))
    assert report.main([str(folder)]) == 0 and "Headline" in (paths.report / "report.html").read_text()
    capsys.readouterr()
