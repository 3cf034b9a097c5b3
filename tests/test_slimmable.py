"""Slimmable execution (dmcpfx.search.slimmable): a sliced sub-net equals the masked one.

For random widths (fixed seeds) the sliced run must give the masked run's output in
eval mode, and in train mode the same loss, the same gradient for every parameter
and the same BatchNorm statistics on the kept channels; afterwards every tensor and
module attribute is back. The default run covers models with each kind of coupling
(residual adds, SE gates, depthwise and grouped convs, concat, flatten -> linear);
``-m slow`` runs the whole torchvision zoo.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

import dmcpfx
from dmcpfx.search.step import SearchStep
from dmcpfx.search.bn import bn_buffers
from dmcpfx.search.slimmable import SlicedRunner
from equivalence import first_tensor, randomize_norms, random_widths
from marks import slow_unless
from test_zoo import INPUT_SIZE, MODELS, SLOW

EXACT = 1e-9  # float64 agreement, relative to the largest value
FAST = ["resnet18", "mobilenet_v2", "efficientnet_b0", "regnet_y_400mf", "googlenet",
        "squeezenet1_1", "shufflenet_v2_x0_5"]  # densenet121 (20 s) and mnasnet0_5 (6 s): in the slow zoo set
# 10-12 s each on 2 cores; the default run has each model once, sliced or bucketed (googlenet's
# bucketed run is test_bucketed_concat_equals_masked), and -m slow runs the pair
SLICED = FAST + ["custom_net", "transposed_unet"]
SLICED_DEFAULT = set(SLICED) - {"regnet_y_400mf", "googlenet"}
BUCKETED = ["resnet18", "mobilenet_v2", "regnet_y_400mf", "googlenet", "shufflenet_v2_x0_5", "custom_net"]
BUCKETED_DEFAULT = {"regnet_y_400mf", "shufflenet_v2_x0_5", "custom_net"}


def _no_randomness(model: nn.Module) -> nn.Module:
    """Dropout / stochastic depth off, so that train-mode runs are comparable."""
    for m in model.modules():
        if isinstance(m, nn.Dropout) or type(m).__name__ == "StochasticDepth":
            m.p = 0.0
    return model


def _build(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "custom_net":
        from examples.models import custom_net

        model = custom_net()
    elif name == "transposed_unet":
        from test_transposed_conv import TransposedUNet

        model = TransposedUNet()
    else:
        model = torchvision.models.get_model(name, weights=None, num_classes=10)
    size = INPUT_SIZE.get(name, 64)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    return _no_randomness(randomize_norms(model.eval())), x


def _snapshot(space) -> dict:
    tensors = {n: t for n, t in list(space.named_parameters()) + list(space.named_buffers())}
    attrs = {n: dict(m.__dict__) for n, m in space.named_modules()}
    return {"ids": {n: id(t) for n, t in tensors.items()}, "shapes": {n: t.shape for n, t in tensors.items()},
            "attrs": {n: {k: v for k, v in a.items() if isinstance(v, (int, tuple))} for n, a in attrs.items()}}


def _inside_buckets(space, runner: SlicedRunner, widths: dict[str, int]) -> dict[str, int]:
    """``widths`` with the widest group moved strictly inside a bucket below full width, so that
    its tensors are sliced AND masked (a group with too few candidates keeps its width)."""
    widths = dict(widths)
    for gid in sorted(space.groups, key=lambda g: -space.groups[g].width):
        grid = runner.grids[gid]
        inside = [c for c in space.groups[gid].candidates if c < grid[-2] and c not in grid] if len(grid) > 2 else []
        if inside:
            widths[gid] = inside[0]
            break
    return widths


def check_sliced_equals_masked(name: str, seed: int, buckets: int = 0) -> None:
    model, x = _build(name)
    masked = dmcpfx.instrument(model, x[:1])
    if not masked.groups:
        pytest.skip(f"{name}: no prunable group")
    sliced = copy.deepcopy(masked)
    runner = SlicedRunner(sliced, buckets=buckets)
    assert runner.supported, runner.reason
    widths = random_widths(masked, seed)
    if buckets:
        widths = _inside_buckets(masked, runner, widths)
        cut_to = runner.sliced_widths(widths)
        assert any(widths[g] < cut_to[g] < masked.groups[g].width for g in widths), "no group sliced and masked"
    assert runner.check(widths), runner.reason

    # float64: train-mode BatchNorm over a batch of 2 amplifies float32 rounding in
    # the gradients (~1e-2 relative on regnet); in float64 both runs agree to ~1e-13.
    masked.double().train(), sliced.double().train()
    x = x.double()
    before = _snapshot(sliced)
    init_buffers = {n: b.clone() for n, b in sliced.named_buffers()}
    masked.set_widths(widths)
    out_masked = first_tensor(masked(x))
    with runner.widths(widths):
        out_sliced = first_tensor(sliced(x))
        inside = _snapshot(sliced)["shapes"]
    # really sliced (the eval and train graphs share tensors, listed once outside the block)
    common = [n for n in inside if n in before["shapes"]]
    assert sum(inside[n].numel() for n in common) < sum(before["shapes"][n].numel() for n in common)
    assert _snapshot(sliced) == before  # tensors, shapes and attributes restored
    scale = out_masked.abs().max().item()
    assert (out_masked - out_sliced).abs().max().item() <= EXACT * scale
    out_masked.square().mean().backward()
    out_sliced.square().mean().backward()

    grads = {n: p.grad for n, p in masked.named_parameters() if p.grad is not None}
    assert grads, "no gradient at all"
    gmax = max(g.abs().max().item() for g in grads.values())
    for (n, p_masked), p_sliced in zip(masked.named_parameters(), sliced.parameters()):
        g_m = p_masked.grad if p_masked.grad is not None else torch.zeros_like(p_masked)
        g_s = p_sliced.grad if p_sliced.grad is not None else torch.zeros_like(p_sliced)
        assert (g_m - g_s).abs().max().item() <= EXACT * gmax, f"{name}: gradient of {n}"
    for (n, b_masked), b_sliced in zip(masked.named_buffers(), sliced.buffers()):
        if not b_masked.is_floating_point() or not b_masked.numel():
            continue
        updated = b_sliced != init_buffers[n]  # the kept channels' statistics
        assert ((b_masked - b_sliced).abs() * updated).max().item() <= EXACT * max(1.0, b_masked.abs().max().item()), n
    stats = {id(t) for t in bn_buffers(sliced) if t.is_floating_point()}
    assert any((b != init_buffers[n]).any() for n, b in sliced.named_buffers() if id(b) in stats) or not stats


@pytest.mark.parametrize("name", slow_unless(SLICED, SLICED_DEFAULT))
def test_sliced_subnet_equals_masked(name):
    check_sliced_equals_masked(name, seed=3)


@pytest.mark.parametrize("name", slow_unless(BUCKETED, BUCKETED_DEFAULT))
def test_bucketed_subnet_equals_masked(name):
    """Sliced to the gate's bucket and masked inside it: still the masked sub-net, output,
    gradients and BatchNorm statistics (residual adds, SE, depthwise/grouped, concat, flatten)."""
    check_sliced_equals_masked(name, seed=4, buckets=3)


@pytest.mark.parametrize("buckets,seed", [(3, 0), pytest.param(4, 1, marks=pytest.mark.slow),
                                          pytest.param(5, 2, marks=pytest.mark.slow)])
def test_bucketed_concat_equals_masked(buckets, seed):
    """Inception concats mix groups cut to their bucket with groups masked inside one."""
    check_sliced_equals_masked("googlenet", seed=seed, buckets=buckets)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in MODELS if n not in SLOW and n not in FAST])
def test_bucketed_subnet_equals_masked_zoo(name):
    check_sliced_equals_masked(name, seed=6, buckets=4)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in MODELS if n not in SLOW and n not in FAST])
def test_sliced_subnet_equals_masked_zoo(name):
    check_sliced_equals_masked(name, seed=5)


class _LiteralView(nn.Module):
    """Holds a channel count as a literal in forward: slicing would need a graph rewrite."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.fc = nn.Linear(12 * 4 * 4, 5)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.fc(x.view(-1, 12 * 4 * 4))


def _stepper(space, slimmable: bool, slice_buckets: int = 0) -> SearchStep:
    opt = torch.optim.SGD(space.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    return SearchStep(space, weight_optimizer=opt, arch_optimizer=None, target=space.full_flops / 2,
                      device=torch.device("cpu"), generator=torch.Generator().manual_seed(0), slimmable=slimmable,
                      slice_buckets=slice_buckets)


def test_literal_channel_count_is_read_from_the_table():
    space = dmcpfx.instrument(_LiteralView(), torch.randn(1, 3, 4, 4)).eval()
    assert space.graph.constant_sites, "the view size must be a recorded literal"
    runner = SlicedRunner(space)
    assert runner.supported, runner.reason
    x = torch.randn(3, 3, 4, 4)
    full = space(x)
    (gid,) = space.groups
    widths = {gid: space.groups[gid].candidates[0]}
    assert runner.check(widths), runner.reason
    space.set_widths(widths)
    masked = space(x)
    space.set_mode("max")
    with runner.widths(widths):
        assert torch.allclose(space(x), masked, rtol=1e-5, atol=1e-6)
    assert torch.equal(space(x), full)  # the table holds the full values again
    assert SlicedRunner(space).supported  # a second runner reuses the table
    twin = copy.deepcopy(space)  # a copy of a tabled space has its own table
    twin_runner = SlicedRunner(twin)
    assert twin_runner.supported, twin_runner.reason
    with twin_runner.widths(widths):
        assert torch.allclose(twin(x), masked, rtol=1e-5, atol=1e-6)
        assert torch.equal(space(x), full)


def test_a_failing_sliced_check_falls_back_to_masks():
    space = dmcpfx.instrument(_LiteralView(), torch.randn(1, 3, 4, 4))
    runner = SlicedRunner(space)
    runner._constants[0].values = lambda widths: [7]  # a wrong literal: the sliced run breaks
    (gid,) = space.groups
    assert not runner.check({gid: space.groups[gid].candidates[0]})
    assert "sliced sub-net" in runner.reason
    with pytest.raises(RuntimeError, match="not available"):
        with runner.widths({}):
            pass


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("slice_buckets", [0, 3])
def test_weight_step_sliced_equals_masked(slice_buckets):
    """One DMCP weight step (max, min, 2 random sub-nets, SGD step) gives the same losses
    and the same updated weights with slicing (exact or to buckets) as with masks."""
    from examples.models import small_resnet

    torch.manual_seed(0)
    model = small_resnet(num_classes=10, width=8)
    space_m = dmcpfx.instrument(model, torch.randn(1, 3, 16, 16)).train()
    space_s = copy.deepcopy(space_m)
    step_m, step_s = _stepper(space_m, slimmable=False), _stepper(space_s, slimmable=True, slice_buckets=slice_buckets)
    assert step_s.slimmable and not step_m.slimmable
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(10, (8,), generator=g)
        stats_m, stats_s = step_m.weight_step(x, y, markov_prob=0.5), step_s.weight_step(x, y, markov_prob=0.5)
        for key in stats_m:
            assert stats_s[key].item() == pytest.approx(stats_m[key].item(), rel=1e-4, abs=1e-6), key
    for (n, p_m), p_s in zip(space_m.named_parameters(), space_s.parameters()):
        assert torch.allclose(p_m, p_s, rtol=1e-4, atol=1e-5), n


def test_auto_slices_on_the_cpu_and_masks_on_cuda():
    """``slimmable: auto`` (the default) on each device, without a GPU: the choice is made from the
    device type only (deterministic), and a wrong value is an error naming the option."""
    from dmcpfx.errors import ConfigError
    from dmcpfx.search.step import slimmable_choice

    assert slimmable_choice("auto", torch.device("cpu")) == (True, None)
    sliced, why = slimmable_choice("auto", torch.device("cuda", 0))
    assert sliced is False and "masked sub-nets on CUDA" in why
    assert slimmable_choice(True, torch.device("cuda")) == (True, None)
    assert slimmable_choice(False, torch.device("cpu"))[0] is False
    with pytest.raises(ConfigError, match="slimmable must be true, false or 'auto', got 1"):
        slimmable_choice(1, torch.device("cpu"))


@pytest.mark.parametrize("n,buckets", [(1, 3), (2, 2), (5, 3), (10, 4), (10, 9), (10, 10), (11, 2), (17, 6), (3, 0)])
def test_bucket_grid_keeps_min_and_full_and_spreads_the_rest(n, buckets):
    from dmcpfx.search.slimmable import bucket_grid

    candidates = [3 + 5 * i for i in range(n)]
    grid = bucket_grid(candidates, buckets)
    assert grid == sorted(set(grid)) and set(grid) <= set(candidates)
    assert grid[-1] == candidates[-1]
    if buckets == 0 or buckets >= n:
        assert grid == candidates
    else:
        assert len(grid) == buckets and grid[0] == candidates[0]
        steps = [candidates.index(b) - candidates.index(a) for a, b in zip(grid, grid[1:])]
        assert max(steps) - min(steps) <= 1  # evenly spread by index


def test_a_gate_window_is_the_mask_on_the_sliced_channels():
    """With ``window`` B, the hard mask is the full mask at ``kept_indices(B)``: ones where the
    width's channels sit among the B sliced ones (also for an interleaved, grouped-conv order)."""
    from dmcpfx.search.gates import MarkovGate, split_channels

    order = torch.arange(24).view(3, 8).t().reshape(-1)  # 3 conv groups of 8, interleaved
    gate = MarkovGate(split_channels(24, divisor=3), order=order)
    for width, window in [(6, 12), (9, 9), (3, 24)]:
        gate.set_mode("width", width)
        gate.window = None
        full = gate()
        gate.window = window
        windowed = gate()
        assert windowed.shape == (window,)
        assert torch.equal(windowed, full[gate.kept_indices(window)])
        assert windowed.sum().item() == width
        kept = gate.kept_indices(window)[windowed.bool()]
        assert torch.equal(kept, gate.kept_indices(width))
    gate.window, gate.mode = 12, "expected"  # a soft mask is never windowed
    assert gate().shape == (24,)


@pytest.mark.parametrize("value", [1, -1, True, "4", 2.0])
def test_a_wrong_slice_buckets_names_the_option(value):
    from dmcpfx.errors import ConfigError
    from dmcpfx.search.options import SearchOptions

    with pytest.raises(ConfigError, match="slice_buckets"):
        SearchOptions(slice_buckets=value).validate()
