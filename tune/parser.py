"""tune.run's argparse parser, built from RunSettings: one group per section, each default stated once, old flag
names accepted with a note.

Light on purpose (argparse and tune.settings only): --help answers before torch, Ray or Optuna load.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from tune.settings import SECTIONS, RunSettings, flag_name

_HINTS = typing.get_type_hints(RunSettings)
# the flags of one session that are not settings of the run (run.json does not keep them)
SESSION_FLAGS = {
    "--resume": dict(action="store_true", help="continue the interrupted experiment --name with its saved settings"),
    "--extend": dict(type=int, default=0, metavar="N",
                     help="add N trials to the finished experiment --name; the sampler sees every earlier trial"),
}


class DefaultOnceFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" where the help text does not already say its default: not after a default of None
    (the help says what happens then) nor after a switch's True/False (the flag's presence is the value)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        said = "default" in help or action.default in (None, argparse.SUPPRESS) or isinstance(action.default, bool)
        return help if said else f"{help} (default: %(default)s)"


class RenamedFlag(argparse.Action):
    """An old name of a flag: stores into the new flag's field and prints a note naming the new flag. An action rather
    than a scan of argv, so an abbreviation (--sched) gets the note too: argparse resolves a prefix to the full option
    string before calling the action. (Python 3.13's deprecated= would do this; the project supports 3.10.)"""

    def __init__(self, option_strings: list[str], dest: str, new_name: str, **kwargs: object):
        super().__init__(option_strings, dest, **kwargs)
        self.new_name = new_name

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"note: {option_string} is deprecated: use {self.new_name}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def create_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tune.run", formatter_class=DefaultOnceFormatter,
                                description="Optuna search under Ray Tune, best-trial retrain, recall-focused test "
                                            "evaluation.")
    groups = {section: p.add_argument_group(section) for section in SECTIONS}
    data_source = groups["data"].add_mutually_exclusive_group()
    for field in dataclasses.fields(RunSettings):
        meta = dict(field.metadata)
        section, exclusive, renamed_from = meta.pop("section"), meta.pop("exclusive", False), meta.pop("renamed_from", [])
        for key in ("flag", "config_key", "into", "place"):
            meta.pop(key, None)
        if "action" not in meta:
            meta["type"] = next(t for t in typing.get_args(_HINTS[field.name]) or (_HINTS[field.name],) if t is not type(None))
        name = flag_name(field)
        if renamed_from:
            meta["help"] += f" (formerly {', '.join(renamed_from)})"
        target = data_source if exclusive else groups[section]
        target.add_argument(name, dest=field.name, default=field.default, **meta)
        for old in renamed_from:  # hidden from --help; the first declared default (the new flag's) is the field's
            extra = {k: v for k, v in meta.items() if k not in ("help",)}
            target.add_argument(old, dest=field.name, action=RenamedFlag, new_name=name, default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS, **extra)
    for flag, spec in SESSION_FLAGS.items():
        groups["search"].add_argument(flag, **spec)
    return p
