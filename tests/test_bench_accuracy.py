"""Smoke test of benchmarks/accuracy.py: every arm and protocol runs, every arm meets its
MACs target (DMCP within 1%, per image), the supernet figures and the widths PNG exist."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch_pruning")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import accuracy  # noqa: E402

EXPECTED = ["unpruned", "plain, search epochs"] + [
    f"{name} {t}" for t in ("50%", "25%") for name in ("DMCP expected", "DMCP direct", "uniform", "TP-L1", "random archs")
]


def test_accuracy_smoke(tmp_path, capsys, one_thread):
    out = tmp_path / "accuracy.md"
    results = accuracy.main(["--smoke", "--random-archs", "1", "--markdown", str(out)])
    arms = results["arms"]
    assert list(arms) == EXPECTED
    full = arms["unpruned"]["macs"][0]
    for label, row in arms.items():
        for protocol in ("inherit", "paper"):
            assert len(row["top1"][protocol]) == 1 and 0.0 <= row["top1"][protocol][0] <= 100.0, label
        if row["target"] is not None:
            ratio = row["macs"][0] / full
            tol = 0.01 if row["kind"].startswith("dmcp") else 0.02
            assert abs(ratio - row["target"]) <= tol * row["target"], f"{label}: {ratio:.2%} of the full MACs"
            assert row["within"], label
    assert arms["TP-L1 25%"]["top1"]["paper"] == arms["TP-L1 25%"]["top1"]["inherit"]
    assert len(results["supernet"]) == 2
    for rec in results["supernet"]:
        assert all(math.isfinite(rec[k]) for k in ("own", "recal", "plain"))
    printed = capsys.readouterr().out
    text = out.read_text(encoding="utf-8")
    for label in EXPECTED:
        assert f"| {label} |" in printed and f"| {label} |" in text
    for phrase in ("own BN statistics", "re-estimated", "Goal at 25% MACs [inherit]", "Goal at 25% MACs [paper]",
                   "Random archs at 25% MACs [paper]: 1 archs"):
        assert phrase in text
    assert "off target" not in text
    png = out.with_name("accuracy_widths.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_saved_seed_from_other_settings_is_refused(tmp_path):
    """A saved seed is reused only under the settings it was run with (one line naming the file)."""
    import torch

    s, _, _ = accuracy.parse_args(["--search-epochs", "30"])
    path = tmp_path / "seed0.pt"
    torch.save({"arms": [], "supernet": [], "settings": accuracy.seed_settings(s)}, path)
    assert accuracy.load_seed(path, s)["settings"]["search_epochs"] == 30
    other, _, _ = accuracy.parse_args(["--search-epochs", "90"])
    with pytest.raises(SystemExit, match=r"seed0\.pt: run with search_epochs=30, this run has search_epochs=90"):
        accuracy.load_seed(path, other)
    torch.save({"arms": [], "supernet": []}, path)
    with pytest.raises(SystemExit, match=r"seed0\.pt: no settings record"):
        accuracy.load_seed(path, s)
