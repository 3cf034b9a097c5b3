"""Smoke test of benchmarks/task_room.py: every setting trains the unpruned model and uniform at
each target, and each room cell is the paired difference of the two rows."""
from __future__ import annotations

import argparse

import pytest

from bench_scripts import load_benchmark


@pytest.mark.slow  # about 15 s on 2 CPU cores
def test_task_room_smoke(tmp_path, capsys, one_thread):
    room = load_benchmark("task_room.py")
    out = tmp_path / "room.md"
    top1 = room.main(["--smoke", "--task", "digits", "--targets", "0.5", "--markdown", str(out)])
    assert list(top1) == [(60, 1, False), (60, 1, True)]
    text = out.read_text(encoding="utf-8")
    assert text in capsys.readouterr().out
    for setting, runs in top1.items():
        assert list(runs) == [0] and set(runs[0]) == {"full", "0.5"}
        gap = runs[0]["full"] - runs[0]["0.5"]
        assert f"| {room.label(setting)} | {runs[0]['full']:.2f} ± 0.00 | {runs[0]['0.5']:.2f} ± 0.00 | " \
               f"{gap:.2f} ± 0.00 ({gap:+.1f}) |" in text


def test_task_room_rejects_a_malformed_setting():
    room = load_benchmark("task_room.py")
    assert room.parse_setting("2000:20:aug") == (2000, 20, True)
    assert room.parse_setting("0:5:plain") == (0, 5, False)
    for bad in ("2000:20", "2000:0:aug", "x:20:aug", "2000:20:yes"):
        with pytest.raises(argparse.ArgumentTypeError, match="SUBSET:EPOCHS"):
            room.parse_setting(bad)
