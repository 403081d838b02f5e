"""python -m tune.run: Optuna search under Ray Tune, best-trial retrain, recall-focused test evaluation.

The CLI parses and delegates: the flags are tune.settings.RunSettings' fields, resolved and checked there, then
tune.experiment drives cxr and Ray.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

from cxr.cli import cli_entry
from tune.loopback import bind_to_loopback
from tune.parser import create_parser
from tune.settings import RunSettings

# tune.settings.resolve (pandas) is imported only once the flags parsed (--help answers at once), and tune.experiment
# (torch, Ray, Optuna) only once tune.settings judged them, so bad flags also answer in about a second


@cli_entry
def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()  # --time-budget counts the whole command
    args = create_parser().parse_args(sys.argv[1:] if argv is None else argv)
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
