"""materialize's check catches a SMALL real difference: a channel count that the forward code
uses as a number (``/ math.sqrt(q.shape[1])`` in an attention) changes the output of the
same-class model by ~1e-4 of its scale when ``q`` is pruned, within float32 noise of a deep
net. The check confirms anything looser than 1e-5 in float64, so such a model falls back to
the GraphModule, which keeps the searched (masked) function."""
from __future__ import annotations

import math

import pytest
import torch
from torch import fx, nn

import dmcpfx
from dmcpfx.materialize import FLOAT32_AGREEMENT


class ScaledAttention(nn.Module):
    """Self-attention over the pixels of a feature map, logits scaled by the query channels."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.q, self.k, self.v = nn.Conv2d(32, 16, 1), nn.Conv2d(32, 16, 1), nn.Conv2d(32, 32, 1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        n, c, h, w = y.shape
        q, k, v = self.q(y).flatten(2), self.k(y).flatten(2), self.v(y).flatten(2)
        att = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(q.shape[1]), -1)
        return self.fc((v @ att.transpose(1, 2)).view(n, c, h, w).mean((2, 3)) + y.mean((2, 3)))


def _masked_and_compact(widths, verify=True):
    torch.manual_seed(0)
    model = ScaledAttention().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    space = dmcpfx.instrument(model, x).eval()
    space.set_widths(widths)
    compact = dmcpfx.materialize(model, widths, x, verify=verify).eval()
    with torch.no_grad():
        return space.double()(x.double()), compact.double()(x.double()), compact


def test_a_channel_count_used_as_a_number_is_not_silently_changed():
    masked, got, compact = _masked_and_compact({"q": 13})
    scale = masked.abs().max().item()
    assert (got - masked).abs().max().item() <= 1e-9 * scale
    assert isinstance(compact, fx.GraphModule)  # the class would divide by sqrt(13), not sqrt(16)
    # unchecked, the same-class model differs by less than a float32 check at 1e-3 could see
    _, unchecked, classy = _masked_and_compact({"q": 13}, verify=False)
    assert type(classy) is ScaledAttention
    assert FLOAT32_AGREEMENT * scale < (unchecked - masked).abs().max().item() < 1e-3 * scale


def test_unpruned_query_keeps_the_class():
    masked, got, compact = _masked_and_compact({"stem": 11})
    assert (got - masked).abs().max().item() <= 1e-9 * masked.abs().max().item()
    assert type(compact) is ScaledAttention
