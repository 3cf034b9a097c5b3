"""materialize(..., graph=) reuses a caller's analysis only where it fits the model and inputs."""
from __future__ import annotations

import importlib

import torch
import torchvision

import dmcpfx
from dmcpfx.counting import count_flops
from dmcpfx.demo_models import custom_net, small_resnet
from equivalence import randomize_norms, random_widths


def _seeded(build) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_norms(build().eval())


def _model(name: str) -> torch.nn.Module:
    return _seeded(lambda: torchvision.models.get_model(name, weights=None, num_classes=10))


def _small() -> torch.nn.Module:
    """A small model for the tests of which graph is reused (the reuse logic does not depend on size)."""
    return _seeded(lambda: small_resnet(width=8, blocks=(1, 1)))


def test_reused_graph_gives_the_same_compact_model(monkeypatch):
    model, x = _model("mnasnet0_5"), torch.randn(1, 3, 64, 64)
    graph = dmcpfx.analyze(model, x)
    space = dmcpfx.instrument(model, x)
    widths = random_widths(space, 2)
    fresh = dmcpfx.materialize(model, widths, x)

    def no_analysis(*args, **kwargs):
        raise AssertionError("the model was analyzed again")

    monkeypatch.setattr(importlib.import_module("dmcpfx.materialize"), "analyze", no_analysis)
    reused = dmcpfx.materialize(model, widths, x, graph=graph)
    from_space = dmcpfx.materialize(space, widths, x)
    with torch.no_grad():
        want = fresh(x)
        assert torch.equal(reused(x), want) and torch.equal(from_space(x), want)
    assert count_flops(reused, x) == graph.flops(widths)


def test_a_graph_of_other_inputs_or_another_model_is_not_reused():
    model = _small()
    widths = random_widths(dmcpfx.instrument(model, torch.randn(1, 3, 16, 16)), 4)
    small = dmcpfx.analyze(model, torch.randn(1, 3, 8, 8))  # other input shape
    other = dmcpfx.analyze(_seeded(custom_net), torch.randn(1, 3, 16, 16))  # other model
    x = torch.randn(1, 3, 16, 16)
    want = dmcpfx.materialize(model, widths, x)
    for graph in (small, other):
        got = dmcpfx.materialize(model, widths, x, graph=graph)
        with torch.no_grad():
            assert torch.equal(got(x), want(x))


def test_a_graph_of_a_twin_model_is_not_reused():
    """Same architecture, other weights: the twin's analysis would verify against the wrong
    weights, so materialize analyzes the model itself."""
    model, twin = _small(), _small()
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(1.5)
    x = torch.randn(1, 3, 16, 16)
    widths = random_widths(dmcpfx.instrument(model, x), 6)
    got = dmcpfx.materialize(model, widths, x, graph=dmcpfx.analyze(twin, x))
    with torch.no_grad():
        assert torch.equal(got(x), dmcpfx.materialize(model, widths, x)(x))
