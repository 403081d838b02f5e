"""benchmarks/bench_search_efficiency.py --smoke: the same code as the real benchmark, on synthetic data."""

from __future__ import annotations

import pandas as pd
import pytest


@pytest.mark.benchmark
def test_smoke_writes_curves_and_prints_the_ratio_last(tmp_path, run_benchmark):
    stdout = run_benchmark("bench_search_efficiency.py", "--smoke", "--out", str(tmp_path), timeout=300)
    assert stdout.strip().splitlines()[-1].startswith("headline: the product needs")
    curves = pd.read_csv(tmp_path / "smoke" / "curves.csv")
    assert set(curves["method"]) == {"product", "ray", "optuna"}
    for _, c in curves.groupby(["method", "seed"]):
        assert c["trial_epochs"].max() <= 4 and c["best"].is_monotonic_increasing
    assert (tmp_path / "smoke" / "efficiency.png").stat().st_size > 0
