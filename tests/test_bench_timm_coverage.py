"""Smoke test of benchmarks/timm_coverage.py on one small timm model, both tools.

No timing assertion; only that a row carries every figure the README table shows
and that the equivalence verdict is a real comparison.
"""
from __future__ import annotations

import math

import pytest

from bench_scripts import load_benchmark

pytest.importorskip("timm")
pytest.importorskip("torch_pruning")

@pytest.mark.slow  # 13 s: the benchmark's smoke, kept runnable by the slow set
def test_one_model_both_tools(tmp_path, one_thread):
    bench = load_benchmark("timm_coverage.py")
    md, js = tmp_path / "cov.md", tmp_path / "cov.json"
    rows = bench.main(["--models", "mobilenetv3_small_050", "--torch-pruning", "--threads", "1",
                       "--markdown", str(md), "--json", str(js)])
    (row,) = rows
    assert "error" not in row, row
    assert row["equivalent"] == "yes", row
    assert 0.5 < row["share"] <= 1.0, row
    assert row["tp_share"] is not None and 0.0 < row["tp_share"] <= 1.0, row
    for key in ("analyze_s", "materialize_s", "seconds"):
        assert math.isfinite(row[key]) and row[key] > 0, (key, row)
    text = md.read_text()
    assert "| mobilenet | 1 | 1 | 1 |" in text  # the family row: 1 model, analyzed, equivalent
    assert js.is_file()
    assert 0.5 < row["params_m"] < 5, row  # mobilenetv3_small_050: about 1.6M parameters
    assert "of 1 within 10 s" in text  # the time summary counts the model (at most ResNet-50 size)
