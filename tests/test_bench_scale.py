"""benchmarks/bench_scale.py --smoke: the product's driver path (searcher + journal, ASHA, reporter, tables, the
search-only report) on a stand-in trainable, against bare Ray Tune, in one run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.scale
def test_smoke_measures_both_arms_and_writes_the_search_report(tmp_path, run_benchmark):
    stdout = run_benchmark("bench_scale.py", "--smoke", "--out", str(tmp_path))
    results = {r["arm"]: r for r in json.loads((tmp_path / "results.json").read_text())}
    assert set(results) == {"product", "bare-asha"}
    for r in results.values():  # ASHA ran both: every trial an epoch, some more, none all 9
        assert r["trials"] == 50 and 50 < r["epochs_run"] < 50 * 9 and r["wall_s"] > 0
    product = results["product"]
    assert product["journal_mib"] > 0 and product["searcher_ms_median"] > 0
    page = Path(product["report"]).read_text()
    assert "No final model yet" in page and "Leaderboard (top 15 of 50" in page and "Learning curves" in page
    assert "| product | 50 |" in stdout and "x bare ASHA" in stdout
