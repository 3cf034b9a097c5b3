"""Smoke test: benchmarks/search_overhead.py runs and prints every row (no timing is asserted)."""
from __future__ import annotations

import pytest

from bench_scripts import load_benchmark


@pytest.mark.usefixtures("one_thread")
def test_search_overhead_prints_masked_and_sliced_rows(capsys, tmp_path):
    module = load_benchmark("search_overhead.py")
    table = tmp_path / "overhead.md"
    module.main(["--batch", "4", "--size", "16", "--steps", "1", "--warmup", "0", "--markdown", str(table),
                 "--conv-widths", "16", "--modes", "masked,sliced,bucketed"])
    out = capsys.readouterr().out
    for row in ("| plain |", "| warm-up step | masked |", "| warm-up step | sliced |",
                "| arch-phase step | masked |", "| arch-phase step | sliced |", "sliced / masked",
                "| arch-phase step | bucketed |", "bucketed / masked", "bucketed x plain"):
        assert row in out
    assert "| 16 | 100.0% | 100.0% |" in out and "| 2 | 1.6% |" in out  # the conv-width table, full to 10%
    assert "unavailable" not in out  # the small ResNet is slimmable
    assert table.read_text().strip() in out
