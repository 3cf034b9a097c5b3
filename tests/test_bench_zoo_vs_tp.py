"""Smoke test of benchmarks/zoo_vs_torch_pruning.py (table 3): two small models, no timing asserted."""
from __future__ import annotations

import functools
import sys

import pytest

from bench_scripts import load_benchmark

pytest.importorskip("torch_pruning")

from test_zoo import INPUT_SIZE as ZOO_INPUT_SIZE  # noqa: E402


@functools.cache
def _benchmark():
    return load_benchmark("zoo_vs_torch_pruning.py")


def test_input_sizes_match_the_zoo_test():
    assert _benchmark().INPUT_SIZE == ZOO_INPUT_SIZE


@pytest.mark.slow  # 23 s; tests/test_bench_timm_coverage.py runs Torch-Pruning on one model by default
def test_two_models_both_tools(tmp_path, capsys, one_thread):
    bench = _benchmark()
    report = tmp_path / "table.md"
    argv = ["--models", "resnet18,mobilenet_v2", "--size", "32", "--threads", "1", "--max-memory-gb", "0"]
    rows = bench.main(argv + ["--markdown", str(report)])
    out = capsys.readouterr().out

    assert [r.model for r in rows] == ["resnet18", "mobilenet_v2"]
    for row in rows:
        assert row.ours.error is None and row.ours.equivalent, row.notes()
        assert row.ours.seconds is not None and 0 < row.ours.macs_ratio < 1
        # Torch-Pruning ran and its exactness was measured (not asserted: it is the peer's result)
        assert row.tp.error is None and row.tp.seconds is not None and row.tp.diff is not None, row.notes()
        assert 0 < row.tp.macs_ratio < 1
        line = next(l for l in out.splitlines() if l.startswith(row.model))
        assert f" {row.ours.status} " in line and f" {row.tp.status} " in line  # both tools' columns printed
    assert "ours s" in out and "TP s" in out and "ours faster:" in out
    assert "ours: equivalent 2/2, not equivalent 0, failed 0" in out
    text = report.read_text()
    assert text.count("| resnet18 |") == 1 and text.count("| mobilenet_v2 |") == 1
