"""Tied weights: one tensor held by two modules (DESIGN.md section 8 properties, and the
compact model keeps its class with the tensor still tied and counted once)."""
import pytest
import torch
from torch import nn

import dmcpfx
from equivalence import check_properties

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


class TiedChain(nn.Module):
    """The same 3x3 weight applied twice in a row: its in and out channels are one group."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.b.weight = self.a.weight
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        return self.head(torch.relu(self.b(torch.relu(self.a(s)))))


class TiedBranches(nn.Module):
    """One weight in two parallel branches: their inputs and outputs are coupled through it."""

    def __init__(self):
        super().__init__()
        self.s1, self.s2 = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.a, self.b = nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(8, 6, 3, padding=1)
        self.b.weight = self.a.weight
        self.h1, self.h2 = nn.Conv2d(6, 4, 1), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.h1(torch.relu(self.a(torch.relu(self.s1(x))))) + self.h2(torch.relu(self.b(torch.relu(self.s2(x)))))


@pytest.mark.parametrize("factory", [TiedChain, TiedBranches], ids=lambda f: f.__name__)
def test_tied_weights_stay_tied_and_are_counted_once(factory):
    torch.manual_seed(0)
    model = factory().eval()
    figures = check_properties(model, X)  # includes: exact params of the compact == the count
    assert dmcpfx.analyze(model, X).full_params == sum(p.numel() for p in model.parameters())
    for _widths, compact in figures["compacts"]:
        assert type(compact) is factory
        assert compact.a.weight is compact.b.weight
        assert (compact.a.out_channels, compact.a.in_channels) == tuple(compact.a.weight.shape[:2])
