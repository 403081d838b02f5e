"""What the project's command lines share: the range rule of every value more than one of them takes, and the
entry that turns bad input into one line on stderr and exit code 2. Light on purpose (no torch): CLIs answer bad
flags before the heavy imports."""

from __future__ import annotations

import functools
import sys
from typing import Any
from collections.abc import Callable

from cxr.config import invalid_value
from cxr.errors import InputError

THRESHOLD_RULES = ("exact", "bootstrap", "point")  # how an operating point's threshold is set (cxr.evaluation)
# exact: distribution-free for films drawn alike. On real films (benchmarks/bench_site_threshold.py, BENCHMARKS.md) it
# reached recall 0.98 on the site's next films from 97.5 % of 200 calibration sets of 200 pneumonia films and 92 % at
# val's size (775), the bootstrap rule from 91.5 % and 86.5 %, the point rule (in-sample) from 40.5 % and 50.5 %
DEFAULT_THRESHOLD_RULE = "exact"

SHARED_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {  # values no TrainConfig key judges: (ok, fix)
    "val_fraction": (lambda v: 0 < v < 0.5, "use a fraction in (0, 0.5)"),
    "recall_confidence": (lambda v: 0.5 <= v < 1, "use a confidence in [0.5, 1), e.g. 0.95"),
    "max_pixels": (lambda v: v >= 1, "use a positive pixel count"),
}


def range_problem(key: str, value: Any) -> str | None:
    """The fix for value, if it breaks key's rule: a TrainConfig key's own rule (target_recall, ...), else
    SHARED_RULES; None if it holds or no rule names key."""
    if key in SHARED_RULES:
        ok, fix = SHARED_RULES[key]
        return None if ok(value) else fix
    try:
        expected = invalid_value(key, value)
    except KeyError:
        return None
    return f"expected {expected}" if expected else None


def check_range(key: str, value: Any, flag: str | None = None) -> None:
    """InputError naming the flag (or key=value for a library call) and the fix, if value breaks key's rule."""
    fix = None if value is None else range_problem(key, value)
    if fix:
        raise InputError(f"{flag} {value} is out of range: {fix}" if flag else f"{key}={value} is out of range: {fix}")


def cli_entry(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """A CLI's main(argv): bad input (InputError, anywhere in it) prints `error: <message>` and returns 2."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return run
