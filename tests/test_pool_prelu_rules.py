"""Rules for max-pool indices and PReLU (dmcpfx.analysis.rules.elementwise): properties 1-3 and 6
on the wiring, and the groups each rule gives."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dmcpfx
from equivalence import check_properties, randomize_norms

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


class PoolIndices(nn.Module):
    """Max-pool indices, per channel like the values: unpooled into a decoder's map (SegNet),
    used elementwise, and an unpool whose indices come from the model input (untracked)."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(3, 3, 1)
        self.mid, self.head = nn.Conv2d(8, 6, 1), nn.Conv2d(6 + 3, 5, 1)

    def forward(self, x):
        a = F.relu(self.enc(x))
        pooled, idx = F.max_pool2d(a, 2, return_indices=True)
        up = F.max_unpool2d(F.relu(self.dec(pooled)), idx, 2)
        peak, where = F.adaptive_max_pool2d(self.mid(up), 4, return_indices=True)
        peak = peak * (where % 2).to(peak.dtype) + peak
        _, input_idx = F.max_pool2d(x, 2, return_indices=True)
        other = F.max_unpool2d(F.max_pool2d(self.c3(x), 2), input_idx, 2)
        return self.head(torch.cat([F.interpolate(peak, size=16), other], 1))


class PReLUs(nn.Module):
    """PReLU with one slope per channel (sliced with the channels), with one shared slope, and
    a per-channel PReLU after a residual add."""

    def __init__(self):
        super().__init__()
        self.c1, self.act1 = nn.Conv2d(3, 16, 3, padding=1), nn.PReLU(16)
        self.c2, self.act2 = nn.Conv2d(16, 24, 3, padding=1), nn.PReLU()
        self.c3, self.act3 = nn.Conv2d(24, 24, 1), nn.PReLU(24)
        self.head = nn.Conv2d(24, 5, 1)
        for act in (self.act1, self.act2, self.act3):
            nn.init.uniform_(act.weight, -0.5, 0.5)

    def forward(self, x):
        a = self.act2(self.c2(self.act1(self.c1(x))))
        return self.head(self.act3(a + self.c3(a)))


@pytest.mark.parametrize("factory", [PoolIndices, PReLUs], ids=lambda f: f.__name__)
def test_wiring_is_equivalent(factory):
    torch.manual_seed(0)
    check_properties(randomize_norms(factory().eval()), X)


def test_pool_indices_carry_their_channels():
    """Before: the indices were untracked, so the unpool coupled nothing and a pruned encoder
    met a full decoder (materialize failed); now values and indices share a group."""
    graph = dmcpfx.analyze(PoolIndices(), X)
    enc = graph.groups["enc"]
    assert enc.prunable, enc.frozen_reasons
    assert any(m.tensor == "dec.weight" for m in enc.members)  # the unpool coupled them
    assert graph.groups["mid"].prunable
    c3 = graph.groups["c3"]
    assert c3.frozen and "untracked" in c3.frozen_reasons[0]


def test_per_channel_prelu_slopes_are_sliced_with_their_channels():
    """Before: aten.prelu was an unsupported op and froze both groups."""
    graph = dmcpfx.analyze(PReLUs(), X)
    for gid, slope in (("c1", "act1.weight"), ("c2", "act3.weight")):
        group = graph.groups[gid]
        assert group.prunable, group.frozen_reasons
        assert any(m.tensor == slope for m in group.members)
    assert not any(m.tensor == "act2.weight" for g in graph.groups.values() for m in g.members)  # one shared slope
