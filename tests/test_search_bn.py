"""BatchNorm isolation, the Markov schedule, expected-derive rounding and the held-out split
(DESIGN.md section 5; issue 11)."""
from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import dmcpfx
from dmcpfx.search.bn import bn_buffers
from dmcpfx.search.budget import budget_loss, exact_flops, expected_flops
from dmcpfx.search.derive import derive, round_expected
from dmcpfx.errors import ConfigError
from dmcpfx.search.evaluation import evaluate_space as evaluate
from dmcpfx.search.holdout import split_holdout
from dmcpfx.search.schedule import markov_prob
from dmcpfx.search.step import SearchStep
from dmcpfx.training import cosine_schedule, param_groups
from test_search import TinyResNet, loaders, make_space

pytestmark = pytest.mark.usefixtures("one_thread")


class _Recorder(torch.optim.SGD):
    """An SGD that keeps a copy of every gradient it steps with."""

    def step(self, closure=None):  # noqa: D102
        self.seen = [p.grad.detach().clone() for g in self.param_groups for p in g["params"]]
        return super().step(closure)


def _stepper(space, bn_stats="max"):
    return SearchStep(
        space, weight_optimizer=torch.optim.SGD(param_groups(space.weight_parameters(), 0.0), lr=0.1, momentum=0.9),
        arch_optimizer=_Recorder(space.arch_parameters(), lr=0.5, momentum=0.9, nesterov=True),
        target=0.5 * space.full_flops, device=torch.device("cpu"), bn_stats=bn_stats,
        generator=torch.Generator().manual_seed(0),
    )


def _buffers(space):
    found = [b.clone() for b in bn_buffers(space)]
    assert found, "no BatchNorm buffers found: the comparison would be vacuous"
    return found


def test_arch_step_keeps_bn_buffers_and_its_alpha_gradients():
    space = make_space()
    torch.manual_seed(1)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(10, (16,))
    stepper = _stepper(space)
    stepper.weight_step(x, y)  # non-trivial running statistics
    space.train()
    # the un-isolated computation: the same step on a copy, with the save/restore turned off
    ref = copy.deepcopy(space)
    ref_stepper = _stepper(ref)
    ref_stepper.frozen_bn = contextlib.nullcontext
    ref_stepper.arch_step(x, y)
    ref_grads = ref_stepper.arch_optimizer.seen
    ref_moved = bn_buffers(ref)

    before = _buffers(space)
    stepper.arch_step(x, y)
    after = _buffers(space)
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # bit-identical
    assert any(not torch.equal(a, b) for a, b in zip(before, ref_moved))  # the un-isolated step moves them
    for g, r in zip(stepper.arch_optimizer.seen, ref_grads):
        assert torch.equal(g, r)
    assert any(g.abs().sum() > 0 for g in ref_grads)


@pytest.mark.parametrize("bn_stats", ["max", "all"])
def test_weight_step_bn_stats_follow_the_max_net(bn_stats):
    """bn_stats='max': running stats equal those of a max-only forward; gradients do not depend on it."""
    torch.manual_seed(2)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(10, (16,))
    space = make_space()
    space.train()
    max_only = copy.deepcopy(space)
    with torch.no_grad():
        max_only(x)
    other = copy.deepcopy(space)
    s1, s2 = _stepper(space, bn_stats), _stepper(other, "all" if bn_stats == "max" else "max")
    s1.weight_step(x, y, markov_prob=0.5)
    s2.weight_step(x, y, markov_prob=0.5)
    for p, q in zip(space.weight_parameters(), other.weight_parameters()):
        assert torch.equal(p, q)  # identical gradients -> identical weights after the step
    same = all(torch.equal(a, b) for a, b in zip(_buffers(space), _buffers(max_only)))
    assert same == (bn_stats == "max")


def test_search_leaves_max_width_usable_with_its_own_bn_statistics(tmp_path):
    train, val = loaders(384, 256, batch_size=64)
    space = make_space()
    dmcpfx.search(space, train, target=0.5, epochs=4, lr=0.2, min_lr=0.01, device="cpu", progress=False)
    own = evaluate(space, val, calib_batches=0)["top1"]
    fresh = evaluate(space, val, calib_loader=train, calib_batches=5)["top1"]
    assert fresh > 50.0  # percent
    assert own >= fresh - 5.0, (own, fresh)


def test_evaluate_warns_without_calibration_data_unless_opted_out():
    _, val = loaders(64, 64)
    space = make_space()
    with pytest.warns(UserWarning, match="NOT re-estimated"):
        own = evaluate(space, val)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert evaluate(space, val, calib_batches=0) == own  # on purpose: no warning


def test_markov_schedules():
    assert markov_prob(-1, 100) == 0.0
    assert markov_prob(0, 100) == 0.0
    assert math.isclose(markov_prob(10000, 20000), 1 - 0.9999 ** 10000)
    assert markov_prob(99, 100, schedule="linear", final=0.8) == pytest.approx(0.8)
    assert markov_prob(0, 100, schedule="linear") == 0.0
    with pytest.raises(ConfigError):
        markov_prob(1, 10, schedule="cubic")


def test_search_rejects_unknown_schedule_and_resume_needs_the_same_schedule(tmp_path):
    train, _ = loaders(64, 64, batch_size=32)
    space = make_space()
    with pytest.raises(ConfigError, match="markov_schedule"):
        dmcpfx.search(space, train, target=0.5, epochs=2, markov_schedule="cubic", progress=False)
    dmcpfx.search(space, train, target=0.5, epochs=1, run_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="markov_schedule"):
        dmcpfx.search(make_space(), train, target=0.5, epochs=1, run_dir=tmp_path, resume=True,
                      markov_schedule="linear", progress=False)


def test_cosine_warmup_starts_at_the_given_ratio():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = cosine_schedule(opt, 100, warmup_steps=10, final_lr_ratio=0.16, warmup_start_ratio=0.4)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5 * (0.4 + 0.6 * 0.1))
    assert lrs[9] == pytest.approx(0.5)
    assert all(a <= b + 1e-12 for a, b in zip(lrs[:10], lrs[1:10]))


def test_expected_derive_rounds_each_group_to_a_neighbour_of_its_expected_width():
    space = make_space()
    with torch.no_grad():  # distinct, non-grid expected widths
        for i, gate in enumerate(space.gates().values()):
            gate.alpha.copy_(torch.linspace(2.0, -1.0 - 0.3 * i, gate.alpha.numel()))
    e = {gid: float(g.expected_width().detach()) for gid, g in space.gates().items()}
    rounded = round_expected(space, e)
    assert all(rounded[g] == round(e[g]) for g in e)  # the official nearest rounding, divisor 1
    expected = float(expected_flops(space))
    widths = derive(space, "expected", target=expected)  # the search ended exactly at its target
    assert all(math.floor(e[g]) <= widths[g] <= math.ceil(e[g]) for g in e), (widths, e)
    f = exact_flops(space, widths)
    assert abs(f - expected) <= abs(exact_flops(space, rounded) - expected)  # tracks E at least as well
    assert 0.99 * expected <= f <= 1.01 * expected
    # a target 3% lower: the smallest change that meets the +-1% band, every width >= its min
    widths = derive(space, "expected", target=0.97 * expected)
    f = exact_flops(space, widths)
    assert 0.97 * expected * 0.99 <= f <= 0.97 * expected * 1.01
    moved = {g: abs(widths[g] - e[g]) for g in e}
    assert sum(moved.values()) <= 8, moved  # a handful of channels, not a re-snap to a grid


def test_expected_derive_respects_the_divisor():
    torch.manual_seed(0)
    space = dmcpfx.instrument(TinyResNet(16).eval(), (torch.randn(1, 3, 32, 32),), divisor=4)
    widths = derive(space, "expected", target=0.4)
    for gid, w in widths.items():
        info = space.groups[gid]
        assert w % info.divisor == 0 or w == info.width
    assert abs(exact_flops(space, widths) / (0.4 * space.full_flops) - 1) <= 0.01


def test_split_holdout_is_disjoint_seeded_and_complete():
    ds = TensorDataset(torch.arange(100).float().view(100, 1), torch.zeros(100, dtype=torch.long))
    loader = DataLoader(ds, batch_size=8, shuffle=True)
    train, held = split_holdout(loader, 20, seed=3)
    a = {int(v) for x, _ in train for v in x.view(-1)}
    b = [int(v) for x, _ in held for v in x.view(-1)]
    assert len(b) == 20 and not a & set(b) and len(a) + len(b) == 100
    _, held2 = split_holdout(loader, 20, seed=3)
    assert b == [int(v) for x, _ in held2 for v in x.view(-1)]
    with pytest.raises(ConfigError):
        split_holdout(loader, 100)


def test_official_recipes():
    from pathlib import Path

    from dmcpfx.config import load_config

    root = Path(__file__).resolve().parents[1] / "examples"
    r50 = load_config(root / "imagenet_resnet50.yaml")
    assert (r50.search.weight_decay, r50.search.label_smoothing, r50.derive.mode) == (1e-4, 0.0, "expected")
    assert (r50.search.lr, r50.search.min_lr, r50.search.markov_schedule) == (0.5, 0.08, "official")
    mb = load_config(root / "imagenet_mobilenet_v2.yaml")
    assert mb.model.kwargs == {"width_mult": 1.5} and mb.derive.mode == "expected"
    assert (mb.search.lr_warmup_start, mb.search.lr, mb.search.lr_warmup_steps) == (0.2, 0.5, 1000)
    assert (mb.search.weight_decay, mb.search.label_smoothing) == (4e-5, 0.1)
    for path in (root / "imagenet_resnet50.yaml", root / "imagenet_mobilenet_v2.yaml"):
        assert "deviations" in path.read_text(encoding="utf-8")


def test_pipeline_direct_derive_ranks_on_held_out_training_images(tmp_path, monkeypatch):
    """The pipeline's direct derive gets a held-out TRAINING loader, never the validation split."""
    import importlib

    from dmcpfx.config import load_config
    from dmcpfx.pipeline import run_pipeline

    cfg = load_config(None, ["search.epochs=2", "data.train_subset=160", "data.image_size=16", "data.batch_size=32",
                             "derive.mode=direct", "derive.holdout_images=32", "derive.tolerance=0.05",
                             "run.progress=false", f"run.dir={tmp_path}", "run.name=direct"])
    derive_mod = importlib.import_module("dmcpfx.search.derive")
    seen = {}
    real = derive_mod.derive

    def spy(space, mode=None, **kw):
        seen.update(kw)
        return real(space, mode, **kw)

    monkeypatch.setattr(importlib.import_module("dmcpfx.pipeline"), "derive", spy)  # the name the pipeline calls
    run_pipeline(cfg, stages=("analyze", "search", "derive"))
    held, calib = seen["val_loader"], seen["calib_loader"]
    held_idx = set(held.dataset.indices)
    train_idx = set(calib.dataset.indices)
    assert len(held_idx) == 32 and not held_idx & train_idx and len(held_idx | train_idx) == 160
    assert seen["options"].calib_batches == 5 and seen["options"].mode == "direct"
    assert (tmp_path / "direct" / "arch.yaml").is_file()
