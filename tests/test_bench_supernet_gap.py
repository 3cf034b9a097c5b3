"""Smoke test of benchmarks/supernet_gap.py: every arm trains and scores, the table has every
row and its differences are the differences of the rows."""
from __future__ import annotations

import pytest

from bench_scripts import load_benchmark


@pytest.mark.slow  # about 20 s on 2 CPU cores
def test_supernet_gap_smoke(tmp_path, capsys, one_thread):
    gap = load_benchmark("supernet_gap.py")
    out = tmp_path / "gap.md"
    top1 = gap.main(["--smoke", "--task", "digits", "--markdown", str(out)])
    assert set(top1) == set(gap.ARMS)
    assert all(list(scores) == [0] and 0.0 <= scores[0] <= 100.0 for scores in top1.values())
    text = out.read_text(encoding="utf-8")
    assert text in capsys.readouterr().out
    for label, _, _ in gap.ARMS.values():
        assert f"| {label} |" in text
    gap_row = top1["plain_r"][0] - top1["supernet"][0]
    assert f"| *plain R minus supernet (the benchmark's gap)* | {gap_row:.2f} ± 0.00 | {gap_row:+.2f} |" in text


@pytest.mark.slow  # about 10 s on 2 CPU cores
def test_supernet_gap_trains_only_the_named_arms(capsys, one_thread):
    """``--arms`` trains those arms; the table keeps their rows and the differences of two of them."""
    gap = load_benchmark("supernet_gap.py")
    top1 = gap.main(["--smoke", "--task", "digits", "--width", "4", "--arms", "plain_r", "plain_search"])
    assert set(top1) == {"plain_r", "plain_search"}
    table = capsys.readouterr().out
    assert "small_resnet width 4," in table
    assert "| plain R |" in table and "| plain, search recipe |" in table and "| supernet |" not in table
    assert "| *recipe: plain R minus plain, search recipe* |" in table
    assert "minus supernet" not in table
