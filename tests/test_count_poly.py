"""The expected counts as polynomials of the stacked E[c] (dmcpfx.search.count_poly, DESIGN.md
section 4): the same value and gradient as the graph's own counting code, at random alphas
and at integer widths, over models with concat, grouped, depthwise and LayerNorm wiring."""
from __future__ import annotations

import random
from fractions import Fraction

import pytest
import torch
import torchvision

import dmcpfx
from dmcpfx.search.budget import expected_flops, expected_params
from dmcpfx.search.count_poly import CountPolynomial, Poly
from dmcpfx.search.gates import StackedExpectedWidths
from test_rules import ChannelsLastMLP, ConcatSEDepthwise, GroupNormNet, LiteralFlatten
from test_transposed_conv import TransposedUNet

pytestmark = pytest.mark.usefixtures("one_thread")


def _space(name: str) -> dmcpfx.SearchSpace:
    torch.manual_seed(0)
    hand_written = {"concat_se_depthwise": ConcatSEDepthwise, "channels_last_mlp": ChannelsLastMLP,
                    "literal_flatten": LiteralFlatten, "group_norm": GroupNormNet,
                    "transposed_unet": TransposedUNet}
    if name in hand_written:
        return dmcpfx.instrument(hand_written[name]().eval(), torch.randn(1, 3, 16, 16))
    return dmcpfx.instrument(torchvision.models.get_model(name).eval(), torch.randn(1, 3, 32, 32))


def _random_alphas(space, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in space.gates().values():
            gate.alpha.copy_(torch.randn(gate.alpha.shape, generator=g) * 3)


def _per_gate_float64(space) -> dict[str, torch.Tensor]:
    """An independent E[c]: each gate's chain written out in float64 (DESIGN.md section 3)."""
    out = {}
    for gid, gate in space.gates().items():
        p = torch.sigmoid(gate.alpha.double())
        sizes = torch.tensor(gate.split.blocks, dtype=torch.float64)
        out[gid] = gate.split.min_ch + (sizes * torch.cumprod(p, 0)).sum()
    return out


# mobilenet_v3_small and shufflenet_v2_x0_5 (11 s a test; depthwise + SE and concat, the wiring of
# concat_se_depthwise) run under -m slow
MODELS = ["resnet18", pytest.param("mobilenet_v3_small", marks=pytest.mark.slow),
          pytest.param("shufflenet_v2_x0_5", marks=pytest.mark.slow),
          "concat_se_depthwise", "channels_last_mlp", "literal_flatten", "group_norm", "transposed_unet"]


@pytest.mark.parametrize("name", MODELS)
def test_expected_counts_and_gradients_equal_the_graphs_counting(name):
    space = _space(name)
    assert space.groups, "a model without gates checks nothing"
    alphas = [g.alpha for g in space.gates().values()]
    for seed in (0, 1):
        _random_alphas(space, seed)
        for fast, graph_count in ((expected_flops, space.graph.flops), (expected_params, space.graph.params)):
            value = fast(space)
            reference = graph_count(_per_gate_float64(space))
            assert value.dtype == torch.float64
            assert abs(value.item() - reference.item()) <= 1e-12 * reference.item()
            got = torch.autograd.grad(value, alphas)
            want = torch.autograd.grad(reference, alphas)
            scale = max(w.abs().max().item() for w in want)
            assert scale > 0
            for a, b in zip(got, want):
                assert (a - b).abs().max().item() <= 1e-9 * scale


@pytest.mark.parametrize("name", MODELS)
def test_polynomial_at_integer_widths_is_the_exact_count(name):
    space = _space(name)
    ids = list(space.gates())
    polys = {kind: CountPolynomial(getattr(space.graph, kind), ids) for kind in ("flops", "params")}
    rng = random.Random(3)
    for _ in range(4):
        widths = {gid: rng.choice(space.groups[gid].candidates) for gid in ids}
        vector = torch.tensor([float(widths[g]) for g in ids], dtype=torch.float64)
        assert polys["flops"](vector).item() == space.flops(widths)
        assert polys["params"](vector).item() == space.params(widths)


def test_stacked_expected_widths_equal_each_gates_own():
    space = _space("mobilenet_v3_small")
    _random_alphas(space, 5)
    stacked = StackedExpectedWidths(space.gates().values())()
    each = torch.stack([g.expected_width().double() for g in space.gates().values()])
    assert stacked.shape == each.shape
    assert torch.allclose(stacked, each, rtol=1e-6, atol=0)  # each gate's own chain runs in float32
    extreme = StackedExpectedWidths([])()
    assert extreme.shape == (0,)


def test_extreme_alphas_keep_finite_gradients():
    space = _space("resnet18")
    with torch.no_grad():
        for i, gate in enumerate(space.gates().values()):
            gate.alpha.fill_(-200.0 if i % 2 else 200.0)
    value = expected_flops(space)
    grads = torch.autograd.grad(value, [g.alpha for g in space.gates().values()])
    assert torch.isfinite(value) and all(torch.isfinite(g).all() for g in grads)


def test_poly_arithmetic_is_exact_and_refuses_what_a_count_never_does():
    x, y = Poly.var(0), Poly.var(1)
    p = (3 + x) * (y * 2 + 1) / 4
    assert p.terms == {(): Fraction(3, 4), (0,): Fraction(1, 4), (1,): Fraction(3, 2), (0, 1): Fraction(1, 2)}
    assert (x * x).terms == {(0, 0): Fraction(1)}
    with pytest.raises(TypeError):
        _ = x * 0.5
    with pytest.raises(TypeError):
        _ = x / 2.0
    poly = CountPolynomial(lambda w: (w["a"] + 1) * w["b"], ["a", "b"])
    assert poly(torch.tensor([2.0, 5.0], dtype=torch.float64)).item() == 15.0
    with pytest.raises(ValueError, match="expected 2 widths"):
        poly(torch.zeros(3, dtype=torch.float64))


def test_a_count_that_is_no_polynomial_falls_back_to_counting_each_step():
    space = _space("group_norm")
    _random_alphas(space, 5)
    graph_flops = type(space.graph).flops

    def clamped(widths=None):  # a comparison: no polynomial of the widths
        return max(graph_flops(space.graph, widths), 0)

    space.graph.flops = clamped
    want = graph_flops(space.graph, {g: gate.expected_width().double() for g, gate in space.gates().items()})
    assert torch.allclose(expected_flops(space), want.double(), rtol=1e-6)
