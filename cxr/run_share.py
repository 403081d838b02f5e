"""How much of the time its threads were ready to run did this process get a core: Linux's per-thread schedstat (the
time run and the time waited on a run queue). Below 1 when other processes compete for the cores; what the time
budget plans a final wave with fewer members than the search ran trials at once by (tune.budget)."""

from __future__ import annotations

import os

TASKS = "/proc/self/task"


def sched_times() -> dict[str, tuple[int, int]] | None:
    """Nanoseconds run and waited for a core, per thread of this process; None where the kernel does not say."""
    try:
        threads = os.listdir(TASKS)
    except OSError:  # not Linux
        return None
    times = {}
    for tid in threads:
        try:
            with open(f"{TASKS}/{tid}/schedstat") as f:
                run, wait = f.read().split()[:2]
        except (OSError, ValueError):  # the thread ended meanwhile, or a kernel without schedstat
            continue
        times[tid] = (int(run), int(wait))
    return times or None


def run_share(before: dict | None, after: dict | None) -> float:
    """The share of the time this process's threads were ready to run that they ran, between two sched_times();
    NaN where unknown (no schedstat, or no thread was ready)."""
    if not before or not after:
        return float("nan")
    run = wait = 0
    for tid, (r, w) in after.items():
        r0, w0 = before.get(tid, (0, 0))  # a thread started meanwhile counts from zero
        run, wait = run + r - r0, wait + w - w0
    return run / (run + wait) if run > 0 and wait >= 0 else float("nan")
