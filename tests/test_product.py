"""The run's product: reproducible, NaN-proof, rebuilt without pickles (issue 10)."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dmcpfx
from dmcpfx.arch import save_arch
from dmcpfx.compare import max_abs_diff, outputs_match
from dmcpfx.demo_models import small_resnet

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.train_subset=96", "data.batch_size=32", "data.image_size=8", "model.kwargs.width=4",
        "model.kwargs.blocks=[1, 1]", "search.epochs=2", "search.calib_batches=1", "retrain.epochs=1",
        "run.latency_runs=1", "run.progress=false"]


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dmcpfx.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _sets(items):
    return [a for item in items for a in ("--set", item)]


def test_same_config_and_seed_give_the_same_run_in_two_processes(tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for run, progress in zip(runs, ("true", "false")):
        proc = _cli("demo", "--run-dir", str(run), *_sets(TINY + [f"run.progress={progress}"]))
        assert proc.returncode == 0, proc.stderr[-2000:]
        if progress == "true":  # a log file (not a terminal): one plain line per epoch, no \r bars
            assert "\r" not in proc.stdout + proc.stderr
            assert sum(ln.startswith("search epoch ") for ln in proc.stdout.splitlines()) == 2
            assert sum(ln.startswith("retrain epoch 1/1") for ln in proc.stdout.splitlines()) == 1
    a, b = runs
    assert (a / "arch.yaml").read_bytes() == (b / "arch.yaml").read_bytes()
    for name in ("supernet_slice.pt", "compact.pt"):
        sa, sb = (torch.load(r / name, weights_only=True) for r in runs)
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (name, k)
    # the product rebuilds from the run directory alone, without pickles
    model = dmcpfx.load(a)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, 3, 8, 8))).all()


def test_diverging_search_fails_and_writes_no_arch(tmp_path):
    run = tmp_path / "nan"
    proc = _cli("search", "--config", str(REPO / "examples" / "digits_demo.yaml"), "--run-dir", str(run),
                *_sets(TINY[:3] + TINY[5:] + ["search.lr=1000000"]))
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()
    assert len(line) == 1 and line[0].startswith("error: search epoch ") and "step" in line[0], proc.stderr
    assert "learning rate" in line[0] and "Traceback" not in proc.stderr
    assert not (run / "arch.yaml").exists() and not (run / "supernet_slice.pt").exists()


class _Loader:
    """Batches of random images; batch ``bad`` (1-based) holds a NaN."""

    def __init__(self, n: int, bad: int | None):
        g = torch.Generator().manual_seed(0)
        self.batches = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(n)]
        if bad is not None:
            self.batches[bad - 1][0][0, 0, 0, 0] = float("nan")

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def test_retrain_stops_at_the_first_non_finite_loss(tmp_path, one_thread):
    model = small_resnet(width=4, blocks=(1,))
    with pytest.raises(dmcpfx.NonFiniteError, match=r"retrain epoch 1/2, step 3: .*learning rate"):
        dmcpfx.retrain(model, _Loader(6, bad=3), epochs=2, run_dir=tmp_path, progress=False)
    assert not (tmp_path / "retrain_checkpoint.pt").exists()


def test_derive_rejects_non_finite_alphas(one_thread):
    space = dmcpfx.instrument(small_resnet(width=4, blocks=(1,)), torch.randn(1, 3, 8, 8))
    gid = next(iter(space.gates()))
    with torch.no_grad():
        space.gates()[gid].alpha[0] = float("nan")
    with pytest.raises(dmcpfx.NonFiniteError, match=f"gate '{gid}'"):
        dmcpfx.derive(space, "expected", target=0.5)


def test_comparisons_count_nan_as_a_mismatch():
    a = torch.tensor([1.0, float("nan")])
    assert max_abs_diff(a, a) == math.inf and not outputs_match(a, a, 1e-4)
    inf = torch.tensor([1.0, float("inf")])
    assert max_abs_diff(inf, inf) == 0.0 and max_abs_diff(inf, -inf) == math.inf
    assert max_abs_diff(np.zeros(3), np.full(3, 0.5)) == 0.5
    assert not outputs_match(torch.zeros(2), torch.zeros(3), 1e-4)
    from dmcpfx.compare import module_matches

    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with torch.no_grad():
        model[0].bias[0] = float("nan")
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    assert not module_matches(model, (x,), ref, 1e-4)


def test_onnx_check_fails_on_nan_and_leaves_no_file(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    with torch.no_grad():
        model[0].bias[0] = float("nan")
    with pytest.raises(dmcpfx.OnnxExportError, match="PyTorch itself outputs NaN or inf"):  # the side is named
        dmcpfx.export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_onnx_export_has_a_dynamic_batch(tmp_path):
    import onnxruntime as ort

    model = small_resnet(width=4, blocks=(1,)).eval()
    dmcpfx.export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(4, 3, 8, 8)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert outputs_match(got, model(x), 1e-4)


def test_load_from_spec_arch_and_weights(tmp_path):
    model = small_resnet(width=8, blocks=(1, 1)).eval()
    x = torch.randn(1, 3, 16, 16)
    graph = dmcpfx.analyze(model, x)
    arch = save_arch(tmp_path / "arch.yaml", {"conv1": 4}, graph, model="dmcpfx.demo_models:small_resnet")
    compact = dmcpfx.materialize(model, arch, x)
    torch.save(compact.state_dict(), tmp_path / "w.pt")
    again = dmcpfx.load("dmcpfx.demo_models:small_resnet", arch, tmp_path / "w.pt",
                        kwargs={"width": 8, "blocks": [1, 1]})
    with torch.no_grad():
        assert torch.equal(again(x), compact.eval()(x))
    with pytest.raises(dmcpfx.ArchError, match=r"params\.pruned is .* \(is the arch for another model\?\)"):
        dmcpfx.load("dmcpfx.demo_models:small_resnet", arch, tmp_path / "w.pt",  # a 7-class head: the
                    kwargs={"width": 8, "blocks": [1, 1], "num_classes": 7})    # arch's counts differ
    with pytest.raises(dmcpfx.ConfigError, match=r"w\.pt does not fit"):  # strict: a 7-class head
        dmcpfx.load("dmcpfx.demo_models:small_resnet", {"conv1": 4}, tmp_path / "w.pt",
                    kwargs={"width": 8, "blocks": [1, 1], "num_classes": 7}, input_shape=[1, 3, 16, 16])
    with pytest.raises(dmcpfx.ArchError, match="another model"):
        dmcpfx.load("dmcpfx.demo_models:small_resnet", arch, tmp_path / "w.pt", kwargs={"width": 16})


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", None])
def test_corrupt_weights_name_the_file(tmp_path, content):
    path = tmp_path / "compact.pt"
    if content is None:  # a pickled module, not a state dict: refused (weights_only=True)
        torch.save(nn.Linear(2, 2), path)
    else:
        path.write_bytes(content)
    (tmp_path / "arch.yaml").write_text("format: dmcpfx-arch/1\ngroups: {}\n")
    with pytest.raises(dmcpfx.ConfigError, match=r"compact\.pt .*(empty|corrupt).*(delete|run directory)"):
        dmcpfx.load("dmcpfx.demo_models:small_resnet", tmp_path / "arch.yaml", path, input_shape=[1, 3, 8, 8])


def test_count_widths_are_validated():
    from dmcpfx.arch import validate_count_widths

    space = dmcpfx.instrument(small_resnet(width=8, blocks=(1,)), torch.randn(1, 3, 8, 8))
    for widths, match in [({"conv1": 100}, r"'conv1': width 100 is outside"), ({"nope": 3}, "unknown group 'nope'"),
                          ({"fc": 5}, "'fc' is frozen"), ({"conv1": 2.5}, "must be an integer")]:
        with pytest.raises(dmcpfx.ArchError, match=match):
            validate_count_widths(widths, space.graph)
    validate_count_widths({"conv1": 4, "layers.0.0.conv1": torch.tensor(3.0)}, space.graph)
