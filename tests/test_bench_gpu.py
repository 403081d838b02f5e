"""benchmarks/bench_gpu.py --smoke: every table the GPU run fills (throughput by precision, layout and batch size;
waiting for data by place of augmentation; trials sharing the device), on the CPU with a tiny model."""

from __future__ import annotations

import csv

import pytest

from benchmarks.bench_gpu import (DATA_WAIT_COLUMNS, FULL_BACKBONES, PRECISIONS, PROCESS_COLUMNS, SMOKE,
                                  THROUGHPUT_COLUMNS)


def _tables(markdown: str) -> dict[str, list[list[str]]]:
    """Each '## title' section's table as rows of cells, the header first."""
    tables, title = {}, None
    for line in markdown.splitlines():
        if line.startswith("## "):
            title = line[3:]
            tables[title] = []
        elif line.startswith("| ") and title:
            tables[title].append([cell.strip() for cell in line.strip("|").split("|")])
    return tables


def test_the_benchmark_measures_the_full_space_s_backbones():
    from search_spaces.full import BACKBONES

    assert FULL_BACKBONES == BACKBONES


@pytest.mark.benchmark
def test_smoke_fills_every_column_of_every_table(tmp_path, run_benchmark):
    stdout = run_benchmark("bench_gpu.py", "--smoke", "--out", str(tmp_path))
    markdown = (tmp_path / "bench_gpu.md").read_text()
    assert markdown.strip() in stdout
    tables = _tables(markdown)
    assert list(tables) == ["throughput", "data wait", "processes"]
    for name, columns in (("throughput", THROUGHPUT_COLUMNS), ("data_wait", DATA_WAIT_COLUMNS),
                          ("processes", PROCESS_COLUMNS)):
        assert tuple(tables[name.replace("_", " ")][0]) == columns
        with open(tmp_path / f"{name}.csv", newline="") as file:
            assert tuple(next(csv.reader(file))) == columns

    header, *rows = tables["throughput"]
    variants = {(label, layout, int(batch)) for _, label, layout, batch, *_ in rows}
    assert variants == {(p, layout, b) for p in PRECISIONS for layout in ("False", "True") for b in SMOKE.batch_sizes}
    assert all(float(row[4]) > 0 and row[5] == "-" for row in rows)  # images/s; no GPU, no GPU memory

    header, *rows = tables["data wait"]
    assert [row[1] for row in rows] == ["device", "cpu"]
    assert all(float(row[2]) > 0 and float(row[3]) > 0 and row[4].endswith("%") for row in rows)

    header, *rows = tables["processes"]
    assert [int(row[1]) for row in rows] == list(SMOKE.processes)
    assert all(float(row[2]) > 0 and float(row[3]) > 0 for row in rows) and rows[0][4] == "1.0"
