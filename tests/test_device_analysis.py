"""analyze / instrument / materialize do not depend on the device or the example batch
(issue 17 item 2): batch 1, 2 and 64 give the same groups, counts and widths; the
caller's model stays on its device and bit-identical; a meta model is a one-line error."""
from __future__ import annotations

import pytest
import torch

import dmcpfx
from dmcpfx.counting import count_flops
from dmcpfx.demo_models import small_resnet
from dmcpfx.errors import ConfigError, DmcpfxError

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine (CI and the dev box have none)"))]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return small_resnet(width=8, blocks=(1, 1)).eval()


def _summary(graph) -> tuple:
    return (sorted((gid, g.width, len(g.members)) for gid, g in graph.groups.items()),
            graph.full_flops, graph.full_params)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_and_device_do_not_change_the_analysis(device):
    model = _model()
    want = _summary(dmcpfx.analyze(model, torch.randn(2, 3, 8, 8)))
    on = model.to(device)
    before = {k: v.clone() for k, v in on.state_dict().items()}
    for batch in (1, 2, 64):
        x = torch.randn(batch, 3, 8, 8, device=device)
        assert _summary(dmcpfx.analyze(on, x)) == want
        space = dmcpfx.instrument(on, x)
        assert _summary(space.graph) == want
        assert next(space.parameters()).device.type == device
        widths = {gid: g.candidates[0] for gid, g in space.groups.items()}
        compact = dmcpfx.materialize(on, widths, x)
        assert next(compact.parameters()).device.type == device
        assert count_flops(compact.cpu(), x.cpu()[:1]) == space.flops(widths)
    after = on.state_dict()
    assert all(after[k].device.type == device and torch.equal(after[k], v) for k, v in before.items())


def test_a_meta_model_is_a_one_line_error():
    model = _model().to("meta")
    for call in (lambda: dmcpfx.analyze(model, torch.randn(1, 3, 8, 8)),
                 lambda: dmcpfx.instrument(model, torch.randn(1, 3, 8, 8))):
        with pytest.raises(DmcpfxError, match="meta device") as info:
            call()
        assert "\n" not in str(info.value)
