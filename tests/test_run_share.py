"""cxr.run_share: the share of its ready time a process ran, from per-thread schedstat readings."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest

from cxr.run_share import run_share, sched_times


def test_the_share_adds_every_thread_and_counts_new_threads_from_zero():
    before = {"1": (100, 50), "2": (10, 0)}
    after = {"1": (400, 150), "2": (110, 0), "3": (200, 100)}  # 600 run, 200 waited
    assert run_share(before, after) == pytest.approx(0.75)
    assert math.isnan(run_share(None, after)) and math.isnan(run_share(before, None))
    assert math.isnan(run_share(before, before))  # nothing ran


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="schedstat is Linux's")
def test_a_process_competing_for_every_core_gets_less_than_all_of_its_time():
    """One spinning thread here with a spinner on every core beside it."""
    import os

    def spin_share(seconds: float) -> float:
        before, end = sched_times(), time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
        return run_share(before, sched_times())

    cores = len(os.sched_getaffinity(0))
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.3)
        crowded = spin_share(1.0)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    assert 0 < crowded < 0.9  # cores / (cores + 1) of its time, give or take the scheduler
