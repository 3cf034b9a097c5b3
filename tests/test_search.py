"""The DMCP search loop, derive and the shared training utilities (DESIGN.md section 5).

Data: scikit-learn's bundled digits (offline), upsampled to 3x32x32. The default tests
use small subsets and a few steps; the full-data accuracy run is ``@pytest.mark.slow``.
"""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dmcpfx
from dmcpfx.search.budget import exact_flops, expected_flops, expected_params
from dmcpfx.search.derive import derive
from dmcpfx.errors import ConfigError
from dmcpfx.search.evaluation import evaluate_space as evaluate
from dmcpfx.search.loop import search
from dmcpfx.training import (
    MetricsWriter,
    capture_rng_state,
    cosine_schedule,
    load_checkpoint,
    param_groups,
    restore_rng_state,
    save_checkpoint,
)


pytestmark = pytest.mark.usefixtures("one_thread")


# --- a tiny ResNet (kept here so this file does not depend on examples/) -------------------
class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    """``(N, 3, 32, 32) -> (N, 10)``: stride-2 stem, three residual blocks (8, 16, 32 channels), fc."""

    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = Block(width, width)
        self.layer2 = Block(width, 2 * width, 2)
        self.layer3 = Block(2 * width, 4 * width, 2)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --- digits ------------------------------------------------------------------------------
_DIGITS: tuple[torch.Tensor, torch.Tensor] | None = None


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as ``(N, 3, 32, 32)`` float32 in about [-1, 1] and ``(N,)`` labels."""
    global _DIGITS
    if _DIGITS is None:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        x = ((x - 0.5) / 0.5).repeat(1, 3, 1, 1).contiguous()
        y = torch.tensor(d.target, dtype=torch.long)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        _DIGITS = (x[perm], y[perm])
    return _DIGITS


def loaders(n_train: int, n_val: int, batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    x, y = digits()
    train = TensorDataset(x[:n_train], y[:n_train])
    val = TensorDataset(x[-n_val:], y[-n_val:])
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True),
        DataLoader(val, batch_size=256),
    )


def make_space(seed: int = 0, width: int = 8):
    torch.manual_seed(seed)
    model = TinyResNet(width).eval()
    return dmcpfx.instrument(model, (torch.randn(1, 3, 32, 32),))


def _strip_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("seconds", "images_per_s")}


# --- search + derive ---------------------------------------------------------------------
def test_search_then_derive_meets_the_budget(tmp_path, capsys):
    train, val = loaders(512, 256, batch_size=64)
    space = make_space()
    target = 0.5 * space.full_flops
    e0 = expected_flops(space).item()
    result = search(
        space, train, target=0.5, epochs=6, val_loader=val, run_dir=tmp_path / "run",
        lr=0.2, min_lr=0.02, calib_batches=2, progress=False, log_interval=4,
    )
    # the arch phase moved the expected MACs towards the target (they start far below it)
    assert e0 < 0.95 * target
    assert result.expected == pytest.approx(expected_flops(space).item())
    assert result.expected > e0
    assert result.target == pytest.approx(target) and result.full == space.full_flops
    assert result.steps == 6 * 8 and len(result.history) == 6
    assert [h["phase"] for h in result.history] == ["warmup"] * 3 + ["arch"] * 3
    assert all("budget_loss" in h for h in result.history[3:])
    assert "budget_loss" not in result.history[0]

    # files: JSON lines and a weights_only-loadable checkpoint
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["kind"] == "epoch"] == [1, 2, 3, 4, 5, 6]
    assert sum(r["kind"] == "step" for r in lines) == 12
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["epoch"] == 6 and ckpt["step"] == 48

    widths = derive(space, "expected", target=0.5, path=tmp_path / "arch.yaml", plot_path=tmp_path / "w.png")
    assert set(widths) == set(space.groups)
    f = exact_flops(space, widths)
    assert abs(f / target - 1.0) <= 0.02
    assert f <= target * 1.01
    doc = yaml.safe_load((tmp_path / "arch.yaml").read_text())
    assert doc["format"] == "dmcpfx-arch/1"
    assert (tmp_path / "w.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # accuracy of the supernet at the derived arch (BN re-estimated on 4 train batches)
    acc = evaluate(space, val, widths=widths, calib_loader=train, calib_batches=4)
    acc_max = evaluate(space, val, mode="max", calib_loader=train, calib_batches=4)
    with capsys.disabled():
        print(f"\n[digits 512 imgs, 6 epochs] derived arch {f / space.full_flops:.1%} MACs: "
              f"top1 {acc['top1']:.1f}% (max width {acc_max['top1']:.1f}%)")
    assert acc["top1"] > 50.0  # 10 classes: a broken sub-net sits near 0.1
    # evaluate() left the supernet untouched
    assert all(g.mode == "max" for g in space.gates().values())


def test_derive_direct_picks_an_in_band_sample(tmp_path):
    train, val = loaders(64, 128)
    space = make_space()
    target = 0.5 * space.full_flops
    widths = derive(space, "direct", target=0.5, samples=1)  # Markov widths: candidates
    gates = space.gates()

    def one_step_down(gid):
        return {**widths, gid: widths[gid] - gates[gid].split.g}

    # the group whose one-block step down changes the MACs least
    flip = min((g for g in gates if widths[g] > gates[g].split.min_ch),
               key=lambda g: abs(exact_flops(space, one_step_down(g)) - target))
    tol = 1.2 * max(abs(exact_flops(space, w) / target - 1.0) for w in (widths, one_step_down(flip)))
    # concentrate every chain on `widths`, with a coin flip on the last kept block of `flip`
    with torch.no_grad():
        for gid, gate in gates.items():
            k = (widths[gid] - gate.split.min_ch) // gate.split.g
            a = torch.full((gate.split.n,), -30.0)
            a[:k] = 30.0
            if gid == flip:
                a[k - 1] = 0.0
            gate.alpha.copy_(a)
    picked = derive(space, "direct", target=0.5, tolerance=tol, samples=2, val_loader=val, seed=3,
                    calib_loader=train, calib_batches=1)
    assert picked in (widths, one_step_down(flip))
    assert abs(exact_flops(space, picked) / target - 1.0) <= tol
    # without a loader: the sample closest to the target
    no_val = derive(space, "direct", target=0.5, tolerance=tol, samples=2, seed=3)
    assert no_val == min((widths, one_step_down(flip)), key=lambda w: abs(exact_flops(space, w) - target))


def test_derive_rejects_bad_mode_and_target():
    space = make_space()
    with pytest.raises(ConfigError, match="mode"):
        derive(space, "greedy", target=0.5)
    with pytest.raises(ConfigError, match="above the full model"):
        derive(space, target=2 * space.full_flops)


def test_search_with_a_params_budget():
    train, _ = loaders(128, 64, batch_size=32)
    space = make_space()
    p0 = expected_params(space).item()
    res = search(space, train, target=0.6, budget_metric="params", epochs=1, warmup_epochs=0, lr=0.1,
                 progress=False)
    assert res.budget_metric == "params" and res.full == space.params()
    assert res.target == pytest.approx(0.6 * space.params())
    assert p0 < res.expected < res.target  # pushed up towards the band
    widths = derive(space, target=0.6, budget_metric="params", tolerance=0.03)
    assert abs(space.params(widths) / res.target - 1.0) <= 0.03


def test_search_rejects_unreachable_target():
    train, _ = loaders(64, 64)
    with pytest.raises(ConfigError, match="below the smallest sub-net"):
        search(make_space(), train, target=0.001, epochs=1, progress=False)


# --- resume ------------------------------------------------------------------------------
class _Killed(Exception):
    pass


def _kill_after_second_epoch(record: dict) -> None:
    if record["epoch"] == 2:
        raise _Killed


def test_resume_matches_uninterrupted_run(tmp_path):
    """Killed after the first architecture epoch: momentum, schedulers and RNGs must survive."""
    train, val = loaders(128, 64, batch_size=32)
    kw = dict(target=0.5, epochs=3, warmup_epochs=1, val_loader=val, lr=0.2, calib_batches=1,
              progress=False, log_interval=2)

    full = make_space()
    ref = search(full, train, run_dir=tmp_path / "a", **kw)

    part = make_space()
    with pytest.raises(_Killed):
        search(part, train, run_dir=tmp_path / "b", callback=_kill_after_second_epoch, **kw)
    with pytest.raises(ConfigError, match="resume=True"):  # never overwrite silently
        search(make_space(), train, run_dir=tmp_path / "b", **kw)
    with pytest.raises(ConfigError, match="target"):
        search(make_space(), train, run_dir=tmp_path / "b", resume=True, **{**kw, "target": 0.6})

    torch.manual_seed(1234)  # a fresh process: other global RNG state, fresh space
    random.seed(99)
    resumed_space = make_space()
    res = search(resumed_space, train, run_dir=tmp_path / "b", resume=True, **kw)

    a, b = full.state_dict(), resumed_space.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert res.expected == ref.expected
    assert [_strip_timing(h) for h in res.history] == [_strip_timing(h) for h in ref.history]
    la = [_strip_timing(json.loads(s)) for s in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lb = [_strip_timing(json.loads(s)) for s in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert la == lb

    # resuming a finished run is a no-op that returns the same result
    again = search(make_space(), train, run_dir=tmp_path / "b", resume=True, **kw)
    assert again.expected == ref.expected and again.steps == ref.steps


# --- training utilities ------------------------------------------------------------------
def test_param_groups_no_decay_on_norms_and_biases():
    model = TinyResNet()
    decay, no_decay = param_groups(model, 4e-5)
    assert decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"])
    assert all(p.ndim <= 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert any(p is model.bn1.weight for p in no_decay["params"])
    assert any(p is model.fc.bias for p in no_decay["params"])


def test_cosine_schedule_shape():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = cosine_schedule(opt, 10, warmup_steps=2, final_lr_ratio=0.2)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.25) and lrs[1] == pytest.approx(0.5)
    assert lrs[2] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert lrs[-1] == pytest.approx(0.1)
    assert lrs[6] == pytest.approx(0.1 + 0.4 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))


def test_rng_state_round_trips_through_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in NumPy's state
    state = capture_rng_state()
    expected = (random.random(), np.random.randn(), torch.rand(3))
    save_checkpoint(tmp_path / "c.pt", {"rng": state, "step": 7})
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    loaded = load_checkpoint(tmp_path / "c.pt")
    restore_rng_state(loaded["rng"])
    got = (random.random(), np.random.randn(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
    assert loaded["step"] == 7


def test_metrics_writer_appends_json_lines(tmp_path):
    w = MetricsWriter(tmp_path / "m" / "metrics.jsonl")
    w.write({"a": 1, "t": torch.tensor(2.5), "n": np.float32(1.5)})
    w.write({"b": [1, 2]})
    assert w.read() == [{"a": 1, "t": 2.5, "n": 1.5}, {"b": [1, 2]}]


# --- slow: a real (small) search on all digits ---------------------------------------------
@pytest.mark.slow
def test_search_on_all_digits_keeps_accuracy(tmp_path, capsys):
    train, val = loaders(1497, 300, batch_size=64)
    space = make_space(width=16)
    search(space, train, target=0.5, epochs=12, val_loader=val, run_dir=tmp_path, lr=0.2, min_lr=0.01,
           progress=False)
    widths = derive(space, "expected", target=0.5)
    f = exact_flops(space, widths)
    assert abs(f / (0.5 * space.full_flops) - 1.0) <= 0.02
    acc = evaluate(space, val, widths=widths, calib_loader=train, calib_batches=10)
    with capsys.disabled():
        print(f"\n[digits full, 12 epochs] derived arch {f / space.full_flops:.1%} MACs: top1 {acc['top1']:.1f}%")
    assert acc["top1"] > 85.0


class _DictOutput(nn.Module):
    """A segmentation-style model that returns a dict (torchvision's FCN / DeepLab do)."""

    def __init__(self, wrap):
        super().__init__()
        self.wrap = wrap
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.head(self.body(x))
        return self.wrap(y)


@pytest.mark.parametrize("wrap,got", [(lambda y: {"out": y}, r"a dict with keys \['out'\]"),
                                      (lambda y: (y, y), "a tuple of 2 values"),
                                      (lambda y: y.mean((1, 2, 3)), r"a tensor of shape \(1,\)")])
def test_a_model_without_one_logits_tensor_is_a_clear_error(wrap, got):
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(4, (4, 8, 8))
    space = dmcpfx.instrument(_DictOutput(wrap), x[:1])
    with pytest.raises(ConfigError, match=f"search trains .* returns {got}; wrap it"):
        search(space, DataLoader(TensorDataset(x, y), batch_size=2), epochs=1, progress=False)


def test_a_mapping_with_logits_is_searched_as_its_logits_tensor():
    """Hugging Face models return a ``ModelOutput`` (a mapping) whose ``logits`` is the tensor:
    search, evaluate and retrain use that entry, exactly as if forward returned it (same seed,
    same alphas and weights to the bit); the other entries are ignored."""
    from dmcpfx.accuracy import evaluate as evaluate_model

    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(4, (8,))
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    pooled = lambda t: t.mean((2, 3))  # noqa: E731
    spaces = []
    for wrap in (pooled, lambda t: {"hidden": t, "logits": pooled(t)}):
        torch.manual_seed(1)
        space = dmcpfx.instrument(_DictOutput(wrap), x[:1])
        result = search(space, loader, epochs=2, target=0.6, seed=3, progress=False)
        assert result.steps == 4
        spaces.append(space)
    bare, mapped = (s.state_dict() for s in spaces)
    assert list(bare) == list(mapped) and all(torch.equal(bare[k], mapped[k]) for k in bare)
    widths = dmcpfx.derive(spaces[1], "expected", target=0.6)
    compact = dmcpfx.materialize(spaces[1], widths, x[:1])
    assert set(compact(x[:1])) == {"hidden", "logits"}
    dmcpfx.retrain(compact, loader, epochs=1, progress=False)
    assert 0.0 <= evaluate_model(compact, loader)["top1"] <= 100.0


def test_segmentation_logits_search():
    """(N, classes, H, W) logits with (N, H, W) labels: cross-entropy and distillation per pixel."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(4, (8, 8, 8))
    space = dmcpfx.instrument(_DictOutput(lambda t: t), x[:1])
    result = search(space, DataLoader(TensorDataset(x, y), batch_size=4), epochs=2, target=0.6, progress=False)
    assert result.steps == 4 and 0 < result.expected < result.full
    assert all(math.isfinite(v) for v in result.expected_widths.values())


def test_evaluating_a_dict_output_model_is_a_clear_error():
    from dmcpfx.accuracy import evaluate as evaluate_model

    x, y = torch.randn(4, 3, 8, 8), torch.randint(4, (4,))
    with pytest.raises(ConfigError, match=r"evaluate .* returns a dict with keys \['out'\]"):
        evaluate_model(_DictOutput(lambda t: {"out": t.mean((2, 3))}), DataLoader(TensorDataset(x, y), batch_size=2))


def test_distillation_of_a_dense_prediction_is_a_mean_over_positions():
    """A segmentation map's distillation weighs each pixel as cross-entropy does: the mean of the
    per-pixel KLs, not their sum over H * W (which outweighed the max net's loss 256 to 1 on a
    16x16 map and blew the supernet up); for (N, classes) it is kl_div's batchmean, bit for bit."""
    from dmcpfx.search.step import distill_loss

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 4, 5, 3, generator=g), torch.randn(2, 4, 5, 3, generator=g)
    as_rows = lambda t: t.permute(0, 2, 3, 1).reshape(-1, 4)  # noqa: E731  one row per pixel
    for temperature in (1.0, 2.0):
        dense = distill_loss(student, teacher, temperature)
        rows = distill_loss(as_rows(student), as_rows(teacher), temperature)
        assert abs(dense.item() - rows.item()) <= 1e-6 * rows.item()
    flat_s, flat_t = as_rows(student), as_rows(teacher)
    batchmean = F.kl_div(F.log_softmax(flat_s, 1), F.softmax(flat_t, 1), reduction="batchmean")
    assert torch.equal(distill_loss(flat_s, flat_t), batchmean)
