"""How much CPU other processes take while a benchmark runs (the 2-core machine is shared), Linux /proc only."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


class ForeignLoad:
    """CPU cores used by processes outside this script's process tree (other users of a shared machine)
    while a run is on. Linux /proc: busy time of all CPUs minus our tree's CPU time, sampled every 0.5 s
    (a process's cutime/cstime also hold its reaped children, so exited Ray workers still count as ours)."""

    TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self, foreign: tuple[int, ...] = ()):
        self.foreign = set(foreign)  # pids of our children that stand in for other users (their CPU counts as theirs)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.cores = float("nan")

    def __enter__(self):
        self._ok = Path("/proc/stat").exists()
        if self._ok:
            self._t0, self._busy0 = time.perf_counter(), self._busy()
            self._ours, self._last = 0.0, {}
            self._sample(baseline=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._ok:
            self._stop.set()
            self._thread.join()
            self._sample()
            wall = time.perf_counter() - self._t0
            self.cores = max(0.0, (self._busy() - self._busy0 - self._ours) / wall)

    def _busy(self) -> float:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
        return (user + nice + system + irq + softirq) / self.TICK

    def _sample(self, baseline: bool = False) -> None:
        """Add our tree's CPU time since the last sample."""
        procs = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    raw = (d / "stat").read_text()
                except OSError:
                    continue
                rest = raw[raw.rindex(")") + 2:].split()  # fields after "pid (comm)"
                ppid, start = int(rest[1]), rest[19]
                cpu = sum(int(v) for v in rest[11:15]) / self.TICK  # utime stime cutime cstime
                procs[int(d.name)] = (ppid, start, cpu)
        tree, frontier = {os.getpid()}, [os.getpid()]
        while frontier:
            parent = frontier.pop()
            kids = [pid for pid, (ppid, _, _) in procs.items()
                    if ppid == parent and pid not in tree and pid not in self.foreign]
            tree.update(kids)
            frontier += kids
        for pid in tree:
            if pid in procs:
                _, start, cpu = procs[pid]
                key = (pid, start)
                self._ours += cpu - self._last.get(key, cpu if baseline else 0.0)
                self._last[key] = cpu

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()


def wait_for_quiet(max_wait_s: float, threshold: float = 0.3, window_s: float = 3.0) -> float:
    """Sleep until other processes use < threshold cores over window_s (at most max_wait_s); their last load."""
    deadline, cores = time.perf_counter() + max_wait_s, float("nan")
    while True:
        with ForeignLoad() as load:
            time.sleep(window_s)
        cores = load.cores
        if cores < threshold or time.perf_counter() >= deadline:
            return cores
