"""Smoke test of benchmarks/latency_budget.py (issue 20 item 4): every arm of a tiny model runs,
the table is measured, and the goal lines are printed (their figures are noise at this size)."""
from __future__ import annotations

import pytest

from bench_scripts import load_benchmark


@pytest.mark.slow  # about 20 s: measures a tiny latency table and every arm with ONNX Runtime
def test_smoke_runs_every_arm(tmp_path, capsys, one_thread):
    bench = load_benchmark("latency_budget.py")
    rows = bench.main(["--smoke", "--table-dir", str(tmp_path), "--markdown", str(tmp_path / "out.md")])
    assert [r["arm"] for r in rows] == ["full", "dmcp-lat", "dmcp-macs", "uniform"]
    assert all(r["measured"] > 0 and r["predicted"] > 0 for r in rows)
    lat = rows[1]
    assert lat["predicted"] <= 0.9 * rows[0]["predicted"] * 1.01  # derive met the table's latency budget
    text = (tmp_path / "out.md").read_text()
    assert text.count("Goal: ") == 4 and "| small_resnet | dmcp-lat | 90% |" in text
    assert list(tmp_path.glob("small_resnet_32px_ort-cpu_b2_t1_d1.json"))
