"""benchmarks/bench_chaos.py --smoke: a search on a loopback cluster (a head and one one-CPU worker node, token auth)
whose worker node is killed and replaced while it runs; nothing may be lost."""

from __future__ import annotations

import re
import subprocess

import pytest

from benchmarks.bench_chaos import SMOKE


@pytest.mark.scale
def test_smoke_kills_worker_nodes_and_loses_no_trial(run_benchmark):
    stdout = run_benchmark("bench_chaos.py", "--smoke", timeout=900)
    faults, lost = map(int, re.search(r"faults injected: (\d+), trials lost: (\d+)", stdout).groups())
    assert faults >= 1 and lost == 0, stdout  # (an epoch may be trained twice: Ray had not committed its checkpoint)
    row = next(line for line in stdout.splitlines() if line.startswith("| node killer |"))
    assert row.split("|")[3].strip() == row.split("|")[4].strip() == str(SMOKE["trials"]), row  # trials, finished
    assert row.rstrip("| ").endswith("True"), row  # the final model
    # every process of its cluster is gone (it ends them by process id): none names the cluster's address
    address = re.search(r"cluster (127\.0\.0\.1:\d+)", stdout).group(1)
    assert not subprocess.run(["pgrep", "-f", address], capture_output=True, text=True).stdout.strip()
