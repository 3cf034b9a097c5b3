"""Smoke test of benchmarks/accuracy.py: every arm runs and meets its MACs target (within 2%)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch_pruning")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import accuracy  # noqa: E402

EXPECTED = ["unpruned", "DMCP 50%", "uniform 50%", "TP-L1 50%", "DMCP 25%", "uniform 25%", "TP-L1 25%"]


def test_accuracy_smoke(tmp_path, capsys, one_thread):
    out = tmp_path / "accuracy.md"
    results = accuracy.main(["--smoke", "--markdown", str(out)])
    assert list(results) == EXPECTED
    full = results["unpruned"]["macs"][0]
    for label, row in results.items():
        assert len(row["top1"]) == 1 and 0.0 <= row["top1"][0] <= 100.0, label
        if row["target"] is not None:
            ratio = row["macs"][0] / full
            assert abs(ratio - row["target"]) <= 0.02 * row["target"], f"{label}: {ratio:.2%} of the full MACs"
            assert row["within"], label
    printed = capsys.readouterr().out
    text = out.read_text(encoding="utf-8")
    for label in EXPECTED:
        assert f"| {label} |" in printed and f"| {label} |" in text
    assert "off target" not in text
