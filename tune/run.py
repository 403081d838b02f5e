"""python -m tune.run: Optuna search under Ray Tune, best-trial retrain, recall-focused test evaluation.

The CLI parses and delegates: the flags are tune.settings.RunSettings' fields, resolved and checked there, then
tune.experiment drives cxr and Ray.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import typing

from cxr.cli import cli_entry
from tune.loopback import bind_to_loopback
from tune.settings import RunSettings, flag_name

# imported only once the flags parsed (--help answers at once), and tune.experiment (torch, Ray, Optuna) only once
# tune.settings judged them, so bad flags also answer in about a second
_HINTS = typing.get_type_hints(RunSettings)


def create_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tune.run", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_mutually_exclusive_group()
    for field in dataclasses.fields(RunSettings):
        meta = dict(field.metadata)
        target = data if meta.pop("group", None) == "data" else p
        names = [flag_name(field), *meta.pop("aliases", [])]
        for key in ("flag", "config_key", "into", "place"):
            meta.pop(key, None)
        if "action" not in meta:
            meta["type"] = next(t for t in typing.get_args(_HINTS[field.name]) or (_HINTS[field.name],) if t is not type(None))
        target.add_argument(*names, dest=field.name, default=field.default, **meta)
    p.add_argument("--resume", action="store_true", help="continue the interrupted experiment --name with its saved settings")
    p.add_argument("--extend", type=int, default=0, metavar="N",
                   help="add N trials to the finished experiment --name; the sampler sees every earlier trial")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()  # --time-budget counts the whole command
    argv = sys.argv[1:] if argv is None else argv
    args = create_parser().parse_args(argv)
    if any(a == "--scheduler" or a.startswith("--scheduler=") for a in argv):
        print("note: --scheduler is deprecated: use --trial-scheduler (asha|fifo); the LR schedule is the config key "
              "'scheduler'", file=sys.stderr)
    if any(a == "--final-seeds" or a.startswith("--final-seeds=") for a in argv):
        print("note: --final-seeds is deprecated: use --final-members (K, for --final seeds and --final folds)",
              file=sys.stderr)
    from tune.settings import resolve

    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunSettings)}
    settings = resolve(RunSettings(**fields), args.resume, args.extend)
    bind_to_loopback(settings.address)  # before Ray is first imported
    from tune.experiment import run_experiment

    return run_experiment(settings, resume=args.resume, extend=args.extend, started=started)


if __name__ == "__main__":
    # Ray 2.x's default console output ignores progress_reporter; this selects the one that shows tune.search's live
    # table (unless the user chose otherwise)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    sys.exit(main())
