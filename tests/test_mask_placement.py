"""Where a gate's mask lands (passes/gate_insertion.py) and the hard-mask cache (search/gates.py)."""
import torch
from torch import nn

from dmcpfx.search.gates import MarkovGate, split_channels
from dmcpfx.search.instrument import instrument
from dmcpfx.passes import gate_insertion
from dmcpfx.passes.gate_insertion import apply_channel_mask, mask_consumer_input, mask_consumer_weight


class DenseThenGrouped(nn.Module):
    """conv -> grouped conv (4 groups) -> conv -> linear: dense and grouped consumers."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.b = nn.Conv2d(16, 24, 1)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = self.b(torch.relu(self.dw(torch.relu(self.a(x)))))
        return self.fc(x.mean((2, 3)))


def _targets(space):
    return [n.target for n in space.graph_eval.graph.nodes if n.op == "call_function"]


def test_dense_consumers_mask_the_weight_and_grouped_ones_the_activation():
    space = instrument(DenseThenGrouped(), torch.randn(1, 3, 8, 8))
    targets = _targets(space)
    assert targets.count(mask_consumer_weight) == 2  # b's input and fc's input
    assert targets.count(mask_consumer_input) == 2
    assert apply_channel_mask in targets  # the grouped conv reads a masked activation


def test_masked_weight_and_masked_activation_give_the_same_output_and_gradients(monkeypatch):
    torch.manual_seed(0)
    model, example = DenseThenGrouped(), torch.randn(1, 3, 8, 8)
    on_weight = instrument(model, example)
    monkeypatch.setattr(gate_insertion, "_weight_maskable", lambda node, site: False)
    on_input = instrument(model, example)  # an independent copy: every mask on the activation
    assert mask_consumer_weight not in _targets(on_input)
    x = torch.randn(2, 3, 8, 8)
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        widths = {gid: info.candidates[int(torch.randint(len(info.candidates), (1,), generator=gen))]
                  for gid, info in on_weight.groups.items()}
        outs, grads = [], []
        for space in (on_weight, on_input):
            space.set_widths(widths)
            out = space(x)
            outs.append(out)
            grads.append(torch.autograd.grad(out.square().sum(), space.weight_parameters()))
        assert torch.allclose(outs[0], outs[1], atol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*grads))


def test_hard_masks_go_on_the_weight_soft_masks_on_the_input():
    spec = (1, 1, ((4, 0),))
    x, w = torch.randn(2, 4, 3, 3), torch.randn(5, 4, 1, 1)
    hard = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert mask_consumer_input(x, spec, hard) is x
    assert torch.equal(mask_consumer_weight(w, spec, hard), w * hard.view(1, -1, 1, 1))
    soft = hard.clone().requires_grad_(True)
    assert mask_consumer_weight(w, spec, soft) is w
    assert torch.equal(mask_consumer_input(x, spec, soft), x * soft.view(1, -1, 1, 1))
    assert mask_consumer_input(x, spec, None) is x and mask_consumer_weight(w, spec, None) is w


def test_hard_masks_are_built_once_expected_masks_every_call():
    gate = MarkovGate(split_channels(32, divisor=4))
    gate.set_mode("width", 16)
    first = gate()
    assert gate() is first and first.sum().item() == 16
    gate.set_mode("width", 20)
    assert gate() is not first and gate().sum().item() == 20
    gate.set_mode("width", 16)
    assert gate() is first
    gate.set_mode("expected")
    assert gate() is not gate() and gate().requires_grad
    with torch.inference_mode():
        gate.set_mode("width", 24)
        made = gate()
    assert made.sum().item() == 24 and (24, gate.alpha.device) not in gate._hard_masks
