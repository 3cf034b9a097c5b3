"""Budget (DESIGN.md sections 3, 4 and property 5 of section 8)."""
from __future__ import annotations

import math

import pytest
import torch

import dmcpfx
from dmcpfx.counting import count_flops
from dmcpfx.search.budget import (
    budget_loss,
    exact_flops,
    exact_params,
    expected_flops,
    expected_params,
    min_widths,
    parse_target,
)
from dmcpfx.errors import ConfigError
from dmcpfx.search.gates import MarkovGate, split_channels


pytestmark = pytest.mark.usefixtures("one_thread")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- the Markov chain (section 3) ------------------------------------------------------
def test_marginals_and_expected_width_by_hand():
    split = split_channels(64)  # g = 6, n = 9, min_ch = 10
    assert (split.min_ch, split.g, split.n) == (10, 6, 9)
    gate = MarkovGate(split)
    alphas = [0.0, math.log(3.0), -1.0, 2.0, 0.5, -0.5, 3.0, 1.0, -2.0]
    with torch.no_grad():
        gate.alpha.copy_(torch.tensor(alphas))
    p = [_sigmoid(a) for a in alphas]
    marg = [math.prod(p[: k + 1]) for k in range(9)]
    assert p[1] == pytest.approx(0.75)
    assert marg[1] == pytest.approx(0.5 * 0.75)
    torch.testing.assert_close(gate.marginals().double(), torch.tensor(marg, dtype=torch.float64), rtol=1e-6, atol=1e-7)
    e = 10 + 6 * sum(marg)
    assert gate.expected_width().item() == pytest.approx(e, rel=1e-6)


def test_expected_width_at_init_is_a_geometric_sum():
    gate = MarkovGate(split_channels(100))  # g = 10, n = 9, min_ch = 10
    assert gate.expected_width().item() == pytest.approx(10 + 10 * sum(0.5 ** k for k in range(1, 10)), rel=1e-6)


# --- budget loss (section 4) -----------------------------------------------------------
def _loss_and_grad(e: float, t: float, **kw) -> tuple[float, float]:
    x = torch.tensor(e, dtype=torch.float64, requires_grad=True)
    loss = budget_loss(x, t, **kw)
    loss.backward()
    return loss.item(), x.grad.item()


def test_budget_loss_below_band():
    loss, grad = _loss_and_grad(50.0, 100.0)
    assert loss == pytest.approx(math.log(50.0 / 100.0))  # log|E - T| in units of T
    assert grad == pytest.approx(1.0 / (50.0 - 100.0))  # pushes E up, scale-free
    assert grad < 0


def test_budget_loss_inside_band_is_zero():
    for e in (95.0, 97.0, 99.999):
        loss, grad = _loss_and_grad(e, 100.0)
        assert loss == 0.0 and grad == 0.0


def test_budget_loss_above_band():
    loss, grad = _loss_and_grad(120.0, 100.0)
    assert loss == pytest.approx(math.log((120.0 - 95.0) / 100.0))
    assert grad == pytest.approx(1.0 / (120.0 - 95.0)) and grad > 0
    loss_t, _ = _loss_and_grad(100.0, 100.0)  # E == T is already "above"
    assert loss_t == pytest.approx(math.log(0.05))


def test_budget_loss_gradient_does_not_depend_on_units():
    _, g_rel = _loss_and_grad(3e9, 2e9)
    _, g_abs = _loss_and_grad(3e9, 2e9, scale=1.0)  # plain MACs
    assert g_rel == pytest.approx(g_abs)
    assert budget_loss(torch.tensor(3e9, dtype=torch.float64), 2e9, scale=1.0).item() == pytest.approx(math.log(1.1e9))


def test_budget_loss_float32_large_numbers_are_finite():
    x = torch.tensor(4.1e9, requires_grad=True)  # float32 MACs of a ResNet-50
    loss = budget_loss(x, 2e9)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad) and x.grad > 0


# --- parse_target ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "target, expected",
    [
        (0.5, 2e9),
        ("0.5", 2e9),
        ("50%", 2e9),
        (1, 4e9),
        (2e9, 2e9),
        (2_000_000_000, 2e9),
        ("2G", 2e9),
        ("2g", 2e9),
        ("2 GMACs", 2e9),
        ("300M", 3e8),
        ("1.5e9", 1.5e9),
        ("1.5G FLOPs", 1.5e9),
        ("750k", 7.5e5),
    ],
)
def test_parse_target_forms(target, expected):
    assert parse_target(target, 4_000_000_000) == pytest.approx(expected)


@pytest.mark.parametrize("target", ["", "abc", "2X", "-1", 0, 0.0, -0.5, float("nan"), float("inf"), True, None, [1]])
def test_parse_target_rejects_garbage(target):
    with pytest.raises(ConfigError):
        parse_target(target, 4_000_000_000)


def test_parse_target_above_full_names_both_numbers():
    with pytest.raises(ConfigError, match=r"5\.0+e\+09.*4\.0+e\+09"):
        parse_target("5G", 4_000_000_000)
    with pytest.raises(ConfigError, match="above the full model"):
        parse_target(150, 100)


# --- expected == exact == materialized (section 8, property 5) ----------------------------
def _snap_alphas(space, generator: torch.Generator) -> dict[str, int]:
    """Alphas at +-30 so that every marginal is 0 or 1; returns the implied widths."""
    widths = {}
    with torch.no_grad():
        for gid, gate in space.gates().items():
            n = gate.split.n
            kept = int(torch.randint(n + 1, (), generator=generator))
            alpha = torch.full((n,), -30.0)
            alpha[:kept] = 30.0
            gate.alpha.copy_(alpha)
            widths[gid] = gate.split.min_ch + kept * gate.split.g
    return widths


def _count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", [pytest.param("resnet50", marks=pytest.mark.slow), "mobilenet_v2",  # 9 s each
                                  pytest.param("densenet121", marks=pytest.mark.slow)])
def test_expected_equals_exact_equals_materialized(name):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    space = dmcpfx.instrument(model, (x,))
    assert space.groups, f"{name}: no prunable group"
    gen = torch.Generator().manual_seed(1)
    widths = _snap_alphas(space, gen)
    for gid, w in widths.items():
        assert w in space.groups[gid].candidates

    e_flops = expected_flops(space)
    exact = exact_flops(space, widths)
    assert e_flops.item() == pytest.approx(exact, rel=1e-9)
    assert 0 < exact < space.full_flops
    compact = dmcpfx.materialize(space, widths, (x,))
    assert count_flops(compact, (x,)) == exact

    e_params = expected_params(space)
    exact_p = exact_params(space, widths)
    assert e_params.item() == pytest.approx(exact_p, rel=1e-9)
    assert _count_params(compact) == exact_p


def test_expected_flops_gradient_reaches_every_alpha():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model("resnet50", weights=None).eval()
    space = dmcpfx.instrument(model, (torch.randn(1, 3, 64, 64),))
    e = expected_flops(space)
    assert e.requires_grad and e.dim() == 0
    assert exact_flops(space, min_widths(space)) < e.item() < space.full_flops
    loss = budget_loss(e, 0.5 * space.full_flops)
    loss.backward()
    for gid, gate in space.gates().items():
        g = gate.alpha.grad
        assert g is not None, gid
        assert torch.isfinite(g).all(), gid
        assert (g != 0).all(), f"{gid}: zero gradient {g}"
        # below the band the loss pushes every width up: negative gradient on every alpha
        assert (g < 0).all(), gid


def test_exact_flops_rejects_unknown_group_and_fractional_width():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4),
    )
    space = dmcpfx.instrument(model, (torch.randn(1, 3, 8, 8),))
    gid = next(iter(space.groups))
    with pytest.raises(ConfigError, match="nope"):
        exact_flops(space, {"nope": 4})
    with pytest.raises(ConfigError, match=gid.replace(".", r"\.")):
        exact_flops(space, {gid: 4.5})
