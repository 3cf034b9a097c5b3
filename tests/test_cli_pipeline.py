"""The pipeline through the command line: demo (reduced), torchrun search/retrain, bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dmcpfx.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
# reduced demo: 16 px, a narrower small_resnet, 320 training images, 2 search / 3 retrain epochs
FAST = [
    "data.train_subset=320", "data.batch_size=32", "data.image_size=16", "model.kwargs.width=8",
    "search.epochs=2", "search.calib_batches=1", "retrain.epochs=3", "run.latency_runs=3", "run.progress=false",
]
RUN_FILES = [
    "config.yaml", "analysis.txt", "metrics.jsonl", "checkpoint.pt", "arch.yaml", "widths.png", "search.png",
    "supernet_slice.pt",
    "compact.pt",
    "compact.onnx", "retrain_metrics.jsonl", "retrain_checkpoint.pt", "summary.json", "report.md",
]


def _cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dmcpfx.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def test_demo_pipeline_reduced(tmp_path):
    run = tmp_path / "demo"
    proc = _cli("demo", "--run-dir", str(run), *_sets(FAST))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| MACs |" in proc.stdout and str(run) in proc.stdout
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    arch = yaml.safe_load((run / "arch.yaml").read_text())
    assert abs(arch["flops"]["pruned"] / arch["flops"]["target"] - 1) <= 0.02
    assert abs(arch["flops"]["target"] / arch["flops"]["full"] - 0.5) < 1e-6
    # the exact MACs of the saved compact model are the arch's
    import dmcpfx
    from dmcpfx.counting import count_flops

    compact = dmcpfx.load(run)  # factory -> materialize(arch.yaml) -> load_state_dict(compact.pt, strict)
    x = torch.randn(1, 3, 16, 16)
    assert count_flops(compact, x) == arch["flops"]["pruned"]
    state = torch.load(run / "compact.pt", weights_only=True)  # a plain state dict, no pickled module
    assert set(state) == set(compact.state_dict())
    import onnxruntime as ort

    sess = ort.InferenceSession(str(run / "compact.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # dynamic batch dimension
        xb = torch.randn(batch, 3, 16, 16)
        got = sess.run(None, {sess.get_inputs()[0].name: xb.numpy()})[0]
        with torch.no_grad():
            want = compact(xb).numpy()
        assert np.isfinite(got).all() and np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
    top1 = [json.loads(line)["val_top1"] for line in (run / "retrain_metrics.jsonl").read_text().splitlines()]
    assert len(top1) == 3 and top1[-1] > top1[0]
    summary = json.loads((run / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    # the shipped ONNX file gives the top-1 the report prints (the retrained model, not the supernet slice)
    from dmcpfx.data import digits_loaders

    val = digits_loaders(batch_size=64, image_size=16).val
    hits = n = 0
    for images, labels in val:
        logits = sess.run(None, {sess.get_inputs()[0].name: images.numpy()})[0]
        hits += int((logits.argmax(1) == labels.numpy()).sum())
        n += len(labels)
    onnx_top1 = 100.0 * hits / n
    assert abs(onnx_top1 - summary["retrain_top1"]) <= 0.5, (onnx_top1, summary["retrain_top1"])
    assert f"{summary['retrain_top1']:.2f}" in (run / "report.md").read_text()
    sliced = torch.load(run / "supernet_slice.pt", weights_only=True)
    assert any(not torch.equal(sliced[k], state[k]) for k in state if state[k].is_floating_point())
    report = (run / "report.md").read_text()
    assert "ONNX Runtime" in report and "widths.png" in report and "(search.png)" in report
    # the search reached its budget by itself (10 architecture steps), and derive only rounded
    assert 0.93 <= summary["expected_macs"] / summary["target_macs"] <= 1.02, summary
    assert abs(summary["derive_change"]) <= 0.02 and "from E." in report
    # a finished run is never overwritten silently
    again = _cli("demo", "--run-dir", str(run), *_sets(FAST))
    assert again.returncode == 2 and "already holds a finished run" in again.stderr


@pytest.mark.slow  # 30 s; the default run keeps tests/test_search_ddp.py (search under torchrun, 8 s)
def test_search_and_retrain_under_torchrun(tmp_path):
    """``search`` then ``retrain`` under torchrun, 2 CPU processes (gloo); about 30 s."""
    run = tmp_path / "ddp"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"search": {"epochs": 2}, "retrain": {"epochs": 1}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for cmd in ("search", "retrain"):
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dmcpfx.cli", cmd, "--config", str(cfg),
             "--run-dir", str(run), *_sets(FAST[:4] + ["search.calib_batches=1", "run.latency_runs=2",
                                                       "run.progress=false", "data.train_subset=128"])],
            cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("run directory:") == 1  # only rank 0 prints
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    # rank 0 only: no temporary or duplicate files, one metrics line per search epoch
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in epochs if r["kind"] == "epoch"]) == 2
    assert len((run / "retrain_metrics.jsonl").read_text().splitlines()) == 1


def _assert_clean_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.slow  # 31 s of CLI processes: test_bad_input.py and test_validation.py check the same errors by default
def test_bad_input_through_the_cli(tmp_path):
    run = tmp_path / "bad"
    proc = _cli("search", "--config", str(REPO / "examples" / "digits_demo.yaml"), "--run-dir", str(run),
                "--set", "data.kind=imagefolder", "--set", f"data.root={tmp_path / 'nowhere'}")
    _assert_clean_error(proc, "nowhere")
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("search:\n  epoch: 3\n")
    _assert_clean_error(_cli("search", "--config", str(cfg), "--run-dir", str(run)), "search.epoch", "search.epochs")
    _assert_clean_error(_cli("demo", "--run-dir", str(run), "--set", "serch.epochs=1"), "serch", "search")
    _assert_clean_error(_cli("demo", "--run-dir", str(run), "--set", "search.target=5G"), "target")
    assert not run.exists()  # every error above came before the run directory was created
    arch = tmp_path / "arch.yaml"
    arch.write_text(yaml.safe_dump({"format": "dmcpfx-arch/1", "groups": {"conv1": {"channels": 8, "of": 16}}}))
    _assert_clean_error(_cli("materialize", "torchvision:resnet18", str(arch), "--input-shape", "1,3,32,32",
                             "--output", str(tmp_path / "c.pt")), "conv1")
    assert not (tmp_path / "c.pt").exists()


def test_config_overrides_and_typos():
    cfg = load_config(None, ["search.epochs=3", "search.target=2G", "model.input_shape=[1,3,64,64]",
                             "model.kwargs.width=8", "search.lr=1"])
    assert cfg.search.epochs == 3 and cfg.search.target == "2G" and cfg.model.input_shape == [1, 3, 64, 64]
    assert cfg.model.kwargs == {"width": 8} and cfg.search.lr == 1.0 and isinstance(cfg.search.lr, float)
    with pytest.raises(ConfigError, match="retrain.epochs"):
        load_config(None, ["retrain.epoch=3"])
    with pytest.raises(ConfigError, match="must be int"):
        load_config(None, ["search.epochs=three"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["search.epochs"])


@pytest.mark.parametrize("name", ["digits_demo", "custom_model", "imagenet_resnet50", "imagenet_mobilenet_v2"])
def test_example_configs_load(name):
    cfg = load_config(REPO / "examples" / f"{name}.yaml")
    assert cfg.search.epochs >= 1 and cfg.model.spec
