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


def test_a_stage_that_failed_is_a_row_with_its_error_beside_those_that_ran(capsys):
    """pandas keeps a string column's missing values as NaN: the table must tell them from an error."""
    import math

    import pandas as pd

    from benchmarks.bench_data_scale import print_table

    ran = {"stage": "manifest", "films": 20, "wall_s": 1.5, "runs": 1, "wall_min": 1.5, "wall_max": 1.5,
           "children_peak_mib": math.nan, "children": None, "peak_mib": 300.0, "above_baseline_mib": 10.0,
           "process_s": 1.2, "other_cores": 0.0}
    frame = pd.DataFrame([ran | {"error": None}, ran | {"stage": "evaluate", "error": "KeyError: members_s: missing"}])
    print_table(frame)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert "1.50" in lines[-2] and "KeyError: members_s" in lines[-1], lines
