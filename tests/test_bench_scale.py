"""benchmarks/bench_scale.py: --smoke, the product's driver path (searcher + journal, ASHA, reporter, tables, the
search-only report) on a stand-in trainable against bare Ray Tune in one run; --simulate and --snapshot, its
start-up and snapshot questions without Ray processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_scale import SMOKE_TRIALS as N
from tune.report import REPORT_LEADERBOARD_ROWS
from tune.report_plots import LEARNING_CURVES_TOP


def _rows(stdout: str) -> list[list[str]]:
    """The cells of the markdown table rows under the header."""
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


@pytest.mark.scale
def test_smoke_measures_both_arms_and_writes_the_search_report(tmp_path, run_benchmark):
    assert N > max(REPORT_LEADERBOARD_ROWS, LEARNING_CURVES_TOP)  # the report leaves trials out of both
    stdout = run_benchmark("bench_scale.py", "--smoke", "--out", str(tmp_path))
    results = {r["arm"]: r for r in json.loads((tmp_path / "results.json").read_text())}
    assert set(results) == {"product", "bare-asha"}
    for r in results.values():  # ASHA ran both: every trial an epoch, some more, none all 9
        assert r["trials"] == N and N < r["epochs_run"] < N * 9 and r["wall_s"] > 0
    product = results["product"]
    assert product["journal_mib"] > 0 and product["searcher_ms_median"] > 0
    page = Path(product["report"]).read_text()
    assert "No final model yet" in page and f"Leaderboard (top {REPORT_LEADERBOARD_ROWS} of {N}" in page and "Learning curves" in page
    assert f"| product | {N} |" in stdout and "x bare ASHA" in stdout


@pytest.mark.benchmark
def test_simulate_the_cap_bounds_the_random_start_and_snapshot_of_the_product_s_searcher_is_smaller(tmp_path, run_benchmark):
    """--snapshot and --simulate, the two questions without Ray processes, in one invocation."""
    stdout = run_benchmark("bench_scale.py", "--snapshot", "20", "--simulate", "3", "--out", str(tmp_path))
    snapshot, simulate = (_rows(table) for table in stdout.strip().split("\n\n"))
    [(trials, product, ray)] = snapshot
    kib = [float(cell.split("(")[1].rstrip(")")) for cell in (product, ray)]
    assert trials == "20" and 0 < kib[0] < kib[1]
    (_, trials, none, ungated, _, ungated_idle), (_, _, cap, gated, _, gated_idle) = simulate
    assert (trials, none, cap) == ("12", "none", "10")  # 3 slots x 4 trials; the cap is STARTUP_TRIALS
    assert int(gated) <= int(cap) < int(ungated)
    assert int(ungated_idle) == 0 < int(gated_idle)  # what the cap costs: slots wait for TPE
