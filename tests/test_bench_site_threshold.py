"""benchmarks/bench_site_threshold.py --smoke: the real-data coverage benchmark of the site threshold rules end to end
(synthetic films, a tiny model trained and scoring the pseudo-site, calibration sets drawn, every rule fitted and
scored), every rule x size row in the table."""

from __future__ import annotations

import pytest

from benchmarks.bench_site_threshold import RULES, SMOKE_SIZES


@pytest.mark.benchmark
def test_smoke_has_every_rule_at_every_size_and_the_exact_rule_covers_at_least_the_point_rule(run_benchmark):
    stdout = run_benchmark("bench_site_threshold.py", "--smoke")
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in stdout.splitlines() if line.startswith("| ")]
    coverage = {(c[0], int(c[1])): float(c[3].removesuffix(" %")) / 100 for c in cells if c[0] in RULES}
    assert set(coverage) == {(rule, size) for rule in RULES for size in SMOKE_SIZES}, stdout
    assert all(0 <= value <= 1 for value in coverage.values()), coverage
    # paired by construction: on the same set both rules share the temperature, and the exact threshold (the k-th
    # lowest pneumonia score, k - 1 <= n (1 - target) misses) is never above the point rule's, so its recall on the
    # same further films is never lower
    assert all(coverage["exact", size] >= coverage["point", size] for size in SMOKE_SIZES), coverage
