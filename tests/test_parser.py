"""tune.parser: --help grouped by section with each default stated once, old flag names (abbreviated too) noted."""

from __future__ import annotations

import re

import pytest

from tune.parser import create_parser
from tune.settings import SECTIONS


def _help_by_flag() -> dict[str, str]:
    """Each flag's help paragraph in --help, keyed by its first option string."""
    text = create_parser().format_help()
    entries = re.split(r"\n(?=  -)", text.split("\n\n", 2)[2])
    return {entry.split()[0].rstrip(","): " ".join(entry.split()) for entry in entries if entry.startswith("  -")}


def test_help_has_one_group_per_section_in_order():
    text = create_parser().format_help()
    titles = [line[:-1] for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert titles == ["options", *SECTIONS]


@pytest.mark.parametrize("phrase", ["(default: None)", "(default: True)", "(default: False)"])
def test_help_says_no_empty_default(phrase):
    assert phrase not in " ".join(create_parser().format_help().split())


def test_every_default_is_stated_at_most_once():
    for flag, text in _help_by_flag().items():
        assert text.count("default") <= 1, (flag, text)
    assert "(default: 3)" in _help_by_flag()["--final-members"]


@pytest.mark.parametrize("typed, field, value, new", [
    ("--scheduler", "trial_scheduler", "fifo", "--trial-scheduler"),
    ("--sched", "trial_scheduler", "fifo", "--trial-scheduler"),  # an abbreviation reaches the same action
    ("--final-seeds", "final_members", 5, "--final-members"),
    ("--final-se", "final_members", 5, "--final-members"),
])
def test_an_old_flag_name_sets_the_new_field_and_says_so(capsys, typed, field, value, new):
    args = create_parser().parse_args([typed, str(value)])
    assert getattr(args, field) == value
    assert f"is deprecated: use {new}" in capsys.readouterr().err


def test_new_names_and_defaults_print_no_note(capsys):
    args = create_parser().parse_args(["--trial-scheduler", "fifo"])
    assert (args.trial_scheduler, args.final_members) == ("fifo", 3)
    assert capsys.readouterr().err == ""
    assert "--scheduler" not in create_parser().format_usage()  # old names are hidden from --help
