"""tune.reference: the reference pages are what the code says, and tune.results_schema describes every file, column
and metrics.json key the code writes (checked against the shared demo experiment: no run of its own)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from cxr.config import TrainConfig
from cxr.final_metrics import FinalMetrics
from tune import reference, results_schema
from tune.results import ExperimentPaths


def _matcher(names) -> re.Pattern:
    """One regex for the documented names, placeholders expanded (see tune.results_schema)."""
    names = list(names)
    keys = "|".join(f.name for f in dataclasses.fields(TrainConfig))
    fill = {"<m>": r"val_\w+", "<key>": f"(?:{keys})", "<i>": r"\d+", "<k>": r"\d+", "<plot>": r"\w+"}
    parts = []
    for name in names:
        pattern = re.escape(name)
        for placeholder, regex in fill.items():
            pattern = pattern.replace(re.escape(placeholder), regex)
        # a folder stands for what is under it, unless its files are described one by one
        described = any(other != name and other.startswith(name) for other in names)
        parts.append(pattern + (".*" if name.endswith("/") and not described else ""))
    return re.compile("|".join(f"(?:{p})" for p in parts))


def test_the_committed_pages_are_what_the_code_says(capsys):
    assert reference.main(["--check"]) == 0, capsys.readouterr().err


def test_every_flag_and_config_key_is_on_its_page():
    flags, config = reference.flags_page(), reference.config_page()
    for action in reference.create_parser()._actions:
        if action.help != "==SUPPRESS==" and action.dest != "help":
            assert f"| `{action.option_strings[0]}` |" in flags
    for field in dataclasses.fields(TrainConfig):
        assert f"| `{field.name}` |" in config


def test_a_flag_without_help_text_stops_the_page(monkeypatch):
    real = reference.create_parser

    def parser_with_a_silent_flag():
        p = real()
        p.add_argument_group("output").add_argument("--silent", help="")
        return p

    monkeypatch.setattr(reference, "create_parser", parser_with_a_silent_flag)
    with pytest.raises(ValueError, match="--silent has no help text"):
        reference.flags_page()


def test_metrics_json_keys_are_the_schema_s():
    assert set(results_schema.METRICS_KEYS) == set(FinalMetrics.__annotations__)


def test_every_path_the_code_names_is_described():
    files = _matcher(results_schema.FILES)
    root = Path("/x")
    paths = ExperimentPaths(root)
    for name, member in vars(ExperimentPaths).items():
        if isinstance(member, property) and isinstance(getattr(paths, name), Path):
            relative = getattr(paths, name).relative_to(root).as_posix()
            assert files.fullmatch(relative) or files.fullmatch(relative + "/"), f"{name}: {relative}"


@pytest.mark.slow
def test_every_file_column_and_key_the_demo_wrote_is_described(demo):
    files = _matcher(results_schema.FILES)
    for path in demo.folder.rglob("*"):
        if path.is_file():
            relative = path.relative_to(demo.folder).as_posix()
            assert files.fullmatch(relative), f"{relative} is not in tune/results_schema.py FILES"
    for table, columns in results_schema.COLUMNS.items():
        if (demo.folder / table).is_file():
            documented = _matcher(columns)
            for column in pd.read_parquet(demo.folder / table).columns:
                assert documented.fullmatch(column), f"{table}: column {column} is not in tune/results_schema.py"
    assert set(json.loads((demo.folder / "final/metrics.json").read_text())) <= set(results_schema.METRICS_KEYS)
