"""benchmarks/bench_data_scale.py --smoke: every stage of the data-scale benchmark (manifest to predict) measured at two
tiny sizes, each row with its time and peak RSS (the script checks those), and the growth exponents printed."""

from __future__ import annotations

import pytest

from benchmarks.bench_data_scale import SMOKE_SIZES, STAGES


@pytest.mark.benchmark
def test_smoke_measures_every_stage_at_both_sizes(run_benchmark):
    stdout = run_benchmark("bench_data_scale.py", "--smoke")
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in stdout.splitlines() if line.startswith("| ")]
    rows = {(c[0], c[1]) for c in cells if len(c) == 9}
    assert rows >= {(stage, f"{films:,}") for stage in STAGES for films in SMOKE_SIZES}, stdout
    growth = {c[0] for c in cells if len(c) == 5 and c[1] == f"{SMOKE_SIZES[0]:,} -> {SMOKE_SIZES[1]:,}"}
    assert growth == set(STAGES), stdout
