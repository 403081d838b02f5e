"""The README and the guide cannot drift from the code: every project command they show parses against its parser
(tune.run's is RunSettings'), every pip extra they name exists, every Python snippet runs on the shared demo
experiment (no run of its own), and the guide shows the report's screenshot. Commands of other tools (ray, mlflow,
optuna-dashboard, mkdocs) are theirs to check; those needing a GPU or a cluster only parse here."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from importlib import metadata
from pathlib import Path
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
PROJECT_MODULES = {"tune.run", "tune.report", "tune.reference", "cxr.predict", "cxr.recalibrate", "cxr.export"}


def _blocks(language: str) -> list[tuple[str, str]]:
    """(page:line, code) of every fenced block in that language."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in re.finditer(rf"^ *```{language}\n(.*?)^ *```", text, re.S | re.M):
            found.append((f"{page.relative_to(REPO)}:{text[:match.start()].count(chr(10)) + 1}", match.group(1)))
    return found


def _commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every shell command, continuation lines joined, comments and VAR=value prefixes dropped."""
    commands = []
    for where, code in _blocks("bash"):
        for line in code.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words.pop(0)
            for command in " ".join(shlex.quote(w) for w in words).split(" '&&' "):
                if command:
                    commands.append((where, shlex.split(command)))
    return commands


def _module_commands() -> list[tuple[str, str, list[str]]]:
    return [(where, argv[2], argv[3:]) for where, argv in _commands() if argv[:2] == ["python", "-m"]]


class _Parsed(Exception):
    """Raised once a CLI's parser accepted its flags: the command goes no further."""


def test_the_pages_show_commands_of_every_project_cli():
    shown = {module for _, module, _ in _module_commands()}
    assert {"tune.run", "cxr.predict", "cxr.recalibrate", "cxr.export", "tune.report"} <= shown


@pytest.mark.parametrize("where, module, argv", [c for c in _module_commands() if c[1] in PROJECT_MODULES],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_a_shown_command_parses(where, module, argv, capsys):
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, args=None, namespace=None):
        parse(parser, args, namespace)  # exits 2 on a flag the CLI does not take
        raise _Parsed

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop), pytest.raises(_Parsed):
        try:
            importlib.import_module(module).main(argv)
        except SystemExit:
            pytest.fail(f"{where}: python -m {module} {shlex.join(argv)}: {capsys.readouterr().err.strip().splitlines()[-1]}")


def test_every_shown_extra_exists():
    extras = metadata.metadata("cxr-tune").get_all("Provides-Extra")  # pyproject.toml's, as installed
    shown = [(where, name) for where, argv in _commands() if argv[:3] == ["pip", "install", "-e"]
             for name in re.findall(r"\[(.*)\]", argv[3])[0].split(",")]
    assert shown
    for where, name in shown:
        assert name in extras, f"{where}: no extra [{name}] in pyproject.toml (reinstall after adding one)"


@pytest.mark.slow
def test_every_python_snippet_runs_on_the_demo(demo, tmp_path, monkeypatch):
    """results/<name> is the demo experiment (linked, never written: no snippet writes there)."""
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "demo").symlink_to(demo.folder)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    snippets = _blocks("python")
    assert len(snippets) >= 3
    for where, code in snippets:
        exec(compile(code.replace("<name>", "demo"), where, "exec"), {"__name__": "snippet"})


def test_the_guide_shows_the_report_and_the_readme_the_guide():
    report_page = (REPO / "docs" / "report.md").read_text()
    assert "](img/report.png)" in report_page
    assert "](docs/img/guide.png)" in (REPO / "README.md").read_text()
    assert "](img/report-robustness.png)" in report_page  # the robustness section, as headless Chromium renders it
    for image in ("report.png", "report-robustness.png", "guide.png"):
        assert (REPO / "docs" / "img" / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_readme_stays_a_front_door():
    """A newcomer reads it in five minutes: the detail belongs in docs/."""
    assert len((REPO / "README.md").read_text().splitlines()) <= 150
