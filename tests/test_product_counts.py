"""Products the rules do not prune through still count their MACs (DESIGN.md section 4):
the analysis's full count equals the independent counter's, and a dense product with a
buffer weight is counted by both. Every network here freezes the product's channels."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dmcpfx
from dmcpfx.counting import count_flops
from equivalence import check_properties

X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))


class _Sandwich(nn.Module):
    """conv -> ``mid`` (an 8x8 product in the subclass) -> conv -> conv."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 1), nn.Conv2d(6, 4, 1)
        self.w = nn.Parameter(torch.randn(8, 8) / 3)

    def forward(self, x):
        return self.head(F.relu(self.b(self.mid(F.relu(self.a(x))))))


class BufferLinear(_Sandwich):
    def __init__(self):
        super().__init__()
        del self.w
        self.register_buffer("w", torch.randn(8, 8) / 3)

    def mid(self, y):
        return F.linear(y.permute(0, 2, 3, 1), self.w).permute(0, 3, 1, 2)


class EinsumParam(_Sandwich):
    def mid(self, y):
        return torch.einsum("bchw,oc->bohw", y, self.w)


class BmmExpandedParam(_Sandwich):
    def mid(self, y):
        n, _, h, w = y.shape
        return torch.bmm(self.w.expand(n, 8, 8), y.flatten(2)).view(n, 8, h, w)


class AddmmScaled(_Sandwich):
    def mid(self, y):
        n, _, h, w = y.shape
        rows = y.permute(0, 2, 3, 1).reshape(-1, 8)
        return torch.addmm(self.w[0], rows, self.w, beta=0.5).view(n, h, w, 8).permute(0, 3, 1, 2)


class ParamOnTheLeft(_Sandwich):
    def mid(self, y):
        n, _, h, w = y.shape
        return torch.matmul(self.w, y.flatten(2)).view(n, 8, h, w)


class LinearOnSplitWeight(_Sandwich):  # nn.MultiheadAttention's cross-attention splits in_proj_weight so
    def mid(self, y):
        rows = y.permute(0, 2, 3, 1)
        top, bottom = self.w.split(4)
        return torch.cat([F.linear(rows, top), F.linear(rows, bottom)], -1).permute(0, 3, 1, 2)


class MatmulWithSplitParam(_Sandwich):
    def mid(self, y):
        rows = y.permute(0, 2, 3, 1)
        left, right = self.w.split(4, dim=1)
        return torch.cat([rows @ left, rows @ right], -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("factory", [BufferLinear, EinsumParam, BmmExpandedParam, AddmmScaled, ParamOnTheLeft,
                                     LinearOnSplitWeight, MatmulWithSplitParam], ids=lambda f: f.__name__)
def test_the_analysis_counts_what_the_counter_counts(factory):
    torch.manual_seed(0)
    model = factory().eval()
    graph = dmcpfx.analyze(model, X)
    assert graph.full_flops == count_flops(model, X)
    product_macs = 36 * 8 * 8  # per image: 6x6 positions, 8 in, 8 out
    assert graph.full_flops - product_macs == count_flops(nn.Sequential(model.a, model.b, model.head), X)
    if factory is BufferLinear:
        assert graph.groups["a"].prunable  # the buffer is sliced like a weight
    else:
        assert graph.groups["a"].frozen and "unsupported" in graph.groups["a"].frozen_reasons[0]
    check_properties(model, X)  # the groups after the product stay prunable, and counted exactly


class _SelfAttention(nn.Module):
    def __init__(self, out: int):
        super().__init__()
        self.att = nn.MultiheadAttention(16, 4, batch_first=True)
        self.att.out_proj = nn.modules.linear.NonDynamicallyQuantizableLinear(16, out)  # a compact model's

    def forward(self, x):
        return self.att(x, x, x)[0]


@pytest.mark.parametrize("out", [16, 8])
def test_the_counter_takes_the_attention_fast_paths_weights_as_they_are(out):
    # eval mode, batch_first: nn.MultiheadAttention runs aten._native_multi_head_attention; a compact
    # model whose out_proj keeps `out` of its 16 outputs costs 10 tokens x (3 x 16 x 16 + out x 16)
    model = _SelfAttention(out).eval()
    assert count_flops(model, torch.randn(1, 10, 16)) == 10 * (3 * 16 * 16 + out * 16)


@pytest.mark.parametrize("factory", [
    lambda: nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, dropout=0.0),
    lambda: _SelfAttention(8),
], ids=["encoder_layer", "attention_with_a_narrow_out_proj"])
def test_the_counter_gives_the_fast_path_what_it_gives_the_plain_path(factory):
    # eval mode takes the fused kernel; with the fast path off the same model runs linear by linear
    model, x = factory().eval(), torch.randn(1, 10, 16)
    fused = count_flops(model, x)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        plain = count_flops(model, x)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    assert fused == plain > 0
