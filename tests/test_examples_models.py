"""dmcpfx.demo_models (re-exported by examples.models): both demo models trace with torch.fx and run; the custom-model script works."""
from __future__ import annotations

import operator

import pytest
import torch
import torch.fx
from torch import nn

from dmcpfx.demo_models import custom_net, small_resnet


@pytest.mark.parametrize("factory", [small_resnet, custom_net])
def test_traces_and_matches_eager(factory):
    torch.manual_seed(0)
    model = factory(num_classes=10).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out, ref = traced(x), model(x)
    assert out.shape == (1, 10)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("width,blocks", [(8, (1, 1)), (16, (2, 2, 2)), (4, (1, 2, 1, 1))])
def test_small_resnet_shapes(width, blocks):
    model = small_resnet(num_classes=7, width=width, blocks=blocks)
    traced = torch.fx.symbolic_trace(model)
    assert traced(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert model.fc.in_features == width * 2 ** (len(blocks) - 1)
    # a 1x1 downsample exactly where the shape changes (first block of stages 2..)
    downsamples = [name for name, m in model.named_modules() if name.endswith("downsample")]
    assert len(downsamples) == len(blocks) - 1
    for name in downsamples:
        conv = model.get_submodule(name)[0]
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (2, 2)


def test_small_resnet_has_residual_adds():
    graph = torch.fx.symbolic_trace(small_resnet()).graph
    adds = [n for n in graph.nodes if n.op == "call_function" and n.target in (operator.add, torch.add)]
    assert len(adds) == 6


def test_custom_net_has_unusual_wiring():
    model = custom_net()
    graph = torch.fx.symbolic_trace(model).graph
    targets = [n.target for n in graph.nodes if n.op == "call_function"]
    assert torch.cat in targets and operator.mul in targets and torch.sigmoid in targets
    depthwise = [m for m in model.modules()
                 if isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels > 1]
    assert len(depthwise) == 2


def test_bad_small_resnet_arguments():
    with pytest.raises(ValueError, match="width"):
        small_resnet(width=0)


def test_custom_model_script(capsys):
    from examples.custom_model import main

    assert main(["examples.models:small_resnet", "--no-analyze"]) == 0
    out = capsys.readouterr().out
    assert "SmallResNet" in out and "output (1, 10)" in out and "call_module" in out
    assert main(["examples.models:custom_net"]) == 0
    assert "channel groups" in capsys.readouterr().out
    assert main(["examples.models:no_such_factory"]) == 2
    assert "no_such_factory" in capsys.readouterr().err
