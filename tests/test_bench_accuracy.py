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
    f"{name} {t}" for t in ("50%", "25%")
    for name in ("DMCP expected", "DMCP direct", "DMCP latency", "uniform", "TP-L1", "random archs")
]


@pytest.mark.slow  # 33 s; the slow set keeps the benchmark runnable (the default run stays under 10 min)
def test_accuracy_smoke(tmp_path, capsys, one_thread):
    out = tmp_path / "accuracy.md"
    results = accuracy.main(["--smoke", "--random-archs", "1", "--latency-arm", "ort-cpu", "--latency-batch", "2",
                             "--seed-dir", str(tmp_path / "seeds"), "--markdown", str(out)])
    arms = results["arms"]
    assert list(arms) == EXPECTED
    full = arms["unpruned"]["macs"][0]
    for label, row in arms.items():
        for protocol in ("inherit", "paper"):
            assert len(row["top1"][protocol]) == 1 and 0.0 <= row["top1"][protocol][0] <= 100.0, label
        if row["kind"] == "dmcp_lat":  # a latency budget: the uniform arm's predicted latency at that target
            uniform = arms[label.replace("DMCP latency", "uniform")]["latency"][0]
            assert row["latency"][0] <= min(uniform, 0.99) * 1.02, label  # smoke timings are noise: the cap, 2%
        elif row["target"] is not None:
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
    assert (tmp_path / "seeds" / "latency_table_ort-cpu_b2_t1.json").is_file()
    for phrase in ("Predicted latency (ort-cpu", "DMCP latency minus uniform 25% (same table latency)", "own BN statistics", "re-estimated", "Goal at 25% MACs [inherit]", "Goal at 25% MACs [paper]",
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


FASHION = ["unpruned", "plain, search epochs"] + [
    f"{name} {t}" for t in ("25%", "10%") for name in ("DMCP expected", "DMCP direct", "uniform", "TP-L1", "random archs")
]


@pytest.mark.slow  # 24 s; the digits smoke above keeps the arms runnable in the default run
def test_accuracy_fashion_mnist_smoke(tmp_path, one_thread):
    """--task fashion-mnist on fake idx files (80 training, 20 test images at 28 px): every arm at
    25% and 10% of the MACs, both protocols, and one MET / NOT MET line per goal of issue 18."""
    from fake_idx import write_fake

    write_fake(tmp_path / "fm", train=80, test=20, side=28, gz=False)
    out = tmp_path / "fashion.md"
    results = accuracy.main(["--task", "fashion-mnist", "--data-root", str(tmp_path / "fm"), "--smoke",
                             "--random-archs", "1", "--device", "cpu", "--markdown", str(out)])
    arms = results["arms"]
    assert list(arms) == FASHION
    assert arms["unpruned"]["macs"][0] == 8_052_080  # small_resnet width 10 at 28 px
    for label, row in arms.items():
        for protocol in ("inherit", "paper"):
            assert len(row["top1"][protocol]) == 1 and 0.0 <= row["top1"][protocol][0] <= 100.0, label
        if label == "TP-L1 25%":  # at width 10 Torch-Pruning's nearest ratio gives 25.66% of the MACs
            assert abs(row["macs"][0] / 8_052_080 - 0.25) <= 0.03 * 0.25
        else:
            assert row["within"], label
    for rec in results["supernet"]:
        assert math.isfinite(rec["e_ratio"]) and rec["e_ratio"] > 0 and math.isfinite(rec["derive_change"])
    text = out.read_text(encoding="utf-8")
    assert text.startswith("Accuracy at equal MACs, Fashion-MNIST 28px (60 training images, random shifts, 10,000 test images)")
    assert "| *unpruned minus uniform 10%* |" in text and "| *DMCP expected minus uniform 25%* |" in text
    goals = [line for line in text.splitlines() if line.startswith("Goal: ")]
    assert len(goals) == 6 and all(": MET (" in g or ": NOT MET (" in g for g in goals), goals
    for phrase in ("within [0.93 T, 1.02 T]", "at most 2% from E", "unpruned minus uniform at 10% MACs >= 5",
                   "uniform at 10% MACs >= +1", "uniform at 25% MACs >= +0.5", "random in-band archs at 10%"):
        assert sum(phrase in g for g in goals) == 1, phrase
    assert "Goal at" not in text  # the digits verdict is the digits task's


def test_saved_seed_records_the_task(tmp_path):
    """The task is part of a saved seed's settings; records from before --task are digits runs."""
    import torch

    digits, _, _ = accuracy.parse_args([])
    fashion, _, _ = accuracy.parse_args(["--task", "fashion-mnist", "--data-root", "/elsewhere", "--device", "cpu"])
    assert accuracy.seed_settings(fashion)["task"] == "fashion-mnist"
    assert "data_root" not in accuracy.seed_settings(fashion) and "device" not in accuracy.seed_settings(fashion)
    assert fashion.targets == (0.25, 0.1) and fashion.image_size == 28 and fashion.noise == 0.0
    assert fashion.seeds == (0, 1, 2) and fashion.epochs == 20 and fashion.augment is True  # the task's defaults
    assert digits.seeds == (0, 1, 2, 3, 4) and accuracy.parse_args(["--seeds", "7"])[0].seeds == (7,)
    path = tmp_path / "seed0.pt"
    torch.save({"arms": [], "supernet": [], "settings": accuracy.seed_settings(fashion)}, path)
    with pytest.raises(SystemExit, match=r"seed0\.pt: run with "):
        accuracy.load_seed(path, digits)
    old = {k: v for k, v in accuracy.seed_settings(digits).items() if k != "task"}
    torch.save({"arms": [], "supernet": [], "settings": old}, path)
    assert accuracy.load_seed(path, digits)["settings"] == old
    with pytest.raises(SystemExit, match=r"seed0\.pt: run with task='digits', this run has task='fashion-mnist'"):
        accuracy.load_seed(path, fashion)


def test_saved_seed_before_alpha_init_is_a_zero_start(tmp_path):
    """Seeds saved before --alpha-init existed ran the official (zero) start: reused only with --alpha-init zero."""
    import torch

    zero, _, _ = accuracy.parse_args(["--alpha-init", "zero"])
    budget, _, _ = accuracy.parse_args([])
    old = {k: v for k, v in accuracy.seed_settings(zero).items() if k not in ("task", "alpha_init")}
    path = tmp_path / "seed3.pt"
    torch.save({"arms": [], "supernet": [], "settings": old}, path)
    assert accuracy.load_seed(path, zero)["settings"] == old
    with pytest.raises(SystemExit, match=r"seed3\.pt: run with alpha_init='zero', this run has alpha_init='budget'"):
        accuracy.load_seed(path, budget)


@pytest.mark.slow  # 3 fashion-mnist smoke runs, about 80 s
def test_latency_arm_added_to_saved_seeds_equals_a_run_with_it(tmp_path, one_thread):
    """--latency-arm on seeds saved without it adds the arm (the other arms stay as saved), and
    gives what a run with the arm from the start gives, on the same latency table."""
    import shutil

    from fake_idx import write_fake

    write_fake(tmp_path / "fm", train=80, test=20, side=28, gz=False)
    common = ["--task", "fashion-mnist", "--data-root", str(tmp_path / "fm"), "--smoke", "--device", "cpu"]
    plain = accuracy.main(common + ["--seed-dir", str(tmp_path / "a")])["arms"]
    lat = ["--latency-arm", "ort-cpu", "--latency-batch", "2"]
    added = accuracy.main(common + lat + ["--seed-dir", str(tmp_path / "a")])["arms"]
    (tmp_path / "b").mkdir()
    table = "latency_table_ort-cpu_b2_t1.json"
    shutil.copy(tmp_path / "a" / table, tmp_path / "b" / table)
    fresh = accuracy.main(common + lat + ["--seed-dir", str(tmp_path / "b")])["arms"]
    assert [k for k in added if k not in plain] == ["DMCP latency 25%", "DMCP latency 10%"]
    for label, row in plain.items():
        assert added[label]["top1"] == row["top1"] and added[label]["macs"] == row["macs"], label
    for label, row in fresh.items():
        assert added[label]["top1"] == row["top1"] and added[label]["macs"] == row["macs"], label
        if row["target"] is not None:
            assert added[label]["latency"] == pytest.approx(row["latency"]) and 0 < row["latency"][0] <= 1, label
    again = accuracy.main(common + lat + ["--seed-dir", str(tmp_path / "a"), "--report-only"])["arms"]
    assert again["DMCP latency 10%"]["top1"] == added["DMCP latency 10%"]["top1"]
