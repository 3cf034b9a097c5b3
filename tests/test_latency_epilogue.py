"""A latency-table cell times its layer with the elementwise tail the layer runs with in its
network: BatchNorm, a residual add, an activation (DESIGN.md section 4, latency budget)."""
from __future__ import annotations

import io

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dmcpfx
from dmcpfx.search import latency_build
from dmcpfx.search.latency_build import latency_table
from dmcpfx.search.latency_epilogue import ACTIVATIONS, activation_module, layer_epilogues
from dmcpfx.search.latency_measure import LayerGeometry, onnx_bytes, layer_inputs, torch_layer

pytestmark = pytest.mark.usefixtures("one_thread")


class TailNet(nn.Module):
    """Every kind of tail: BN + ReLU6, BN + residual add + ReLU (the add belongs to the operand
    computed last), a functional SiLU, an output read twice (no tail), and a GELU after a linear."""

    def __init__(self):
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.a, self.a_bn = nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.b, self.b_bn = nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.c = nn.Conv2d(16, 24, 3, padding=1)
        self.d = nn.Conv2d(24, 24, 1)
        self.fc1, self.fc2 = nn.Linear(24, 32), nn.Linear(32, 5)

    def forward(self, x):
        x = F.relu6(self.stem_bn(self.stem(x)))
        early = self.a_bn(self.a(x))  # computed first: the add is not its tail
        x = torch.relu(self.b_bn(self.b(x)) + early)
        x = F.silu(self.c(x))
        y = self.d(x)
        x = y * torch.sigmoid(y)  # y read twice: d has no tail
        return self.fc2(F.gelu(self.fc1(x.mean((2, 3)))))


def tail_space():
    torch.manual_seed(0)
    return dmcpfx.instrument(TailNet().eval(), (torch.randn(1, 3, 8, 8),))


def test_each_layer_gets_the_tail_it_runs_with_in_the_graph():
    tails = layer_epilogues(tail_space().graph.graph_modules["eval"])
    assert tails == {"stem": ("bn", "hardtanh:0:6"), "a": ("bn",), "b": ("bn", "add", "relu"), "c": ("silu",),
                     "d": (), "fc1": ("gelu:none",), "fc2": ()}


@pytest.mark.parametrize("tail, ops", [
    (("bn", "hardtanh:0:6"), {"Clip"}),
    (("silu",), {"Sigmoid", "Mul"}),
    (("bn", "add", "relu"), {"Add", "Relu"}),
    (("gelu:tanh",), {"Gelu"}),
])
def test_the_cell_module_is_the_layer_followed_by_its_tail(tail, ops):
    geo = LayerGeometry("conv", kernel=(3, 3), padding=(1, 1, 1, 1), hw=(6, 6), tail=tail)
    torch.manual_seed(0)
    cell = torch_layer(geo, 4, 8).eval()
    inputs = layer_inputs(geo, 4, 2, cell)
    y = cell.layer(inputs[0])
    if "bn" in tail:
        y = cell.norm(y)
    if "add" in tail:
        y = y + inputs[1]
    act = [t for t in tail if t not in ("bn", "add")][0]
    reference = {"hardtanh:0:6": F.relu6, "silu": F.silu, "relu": F.relu,
                 "gelu:tanh": lambda v: F.gelu(v, approximate="tanh")}[act](y)
    with torch.no_grad():
        torch.testing.assert_close(cell(*inputs), reference.detach(), rtol=0, atol=0)
    kinds = {n.op_type for n in onnx.load(io.BytesIO(onnx_bytes(cell, inputs))).graph.node}
    assert ops <= kinds and "Conv" in kinds
    if "add" in tail:  # ORT fuses a residual add into its conv in a network: timed without it
        alone = torch_layer(geo, 4, 8, residual=False)
        assert len(layer_inputs(geo, 4, 2, alone)) == 1
        assert "Add" not in {n.op_type for n in onnx.load(io.BytesIO(onnx_bytes(alone, (inputs[0],)))).graph.node}


def test_every_activation_token_builds_a_module():
    x = torch.linspace(-8, 8, 33)
    for op in ACTIVATIONS:
        fn = getattr(torch.ops.aten, op).default
        graph = torch.fx.symbolic_trace(nn.Identity()).graph
        node = graph.call_function(fn, (graph.placeholder("y"),))
        token = ACTIVATIONS[op](node)
        assert torch.isfinite(activation_module(token)(x)).all(), op


def test_layers_of_one_geometry_share_a_cell_only_with_the_same_tail(monkeypatch):
    seen = []
    monkeypatch.setattr(latency_build, "time_layer", lambda geo, c_in, c_out, **kw: seen.append(geo.tail) or 1.0)
    monkeypatch.setattr(latency_build, "time_models", lambda models, x, **kw: dict.fromkeys(models, 5.0))
    table = latency_table(tail_space(), "ort-cpu", 2)
    keys = {m: e.key for m, e in table.layers.items()}
    assert keys["a"] != keys["b"] and keys["a"].split(" +")[0] == keys["b"].split(" +")[0]
    assert " +bn+add+relu " in keys["b"] and " bias " in keys["d"] and "+" not in keys["d"]
    assert {("bn",), ("bn", "add", "relu"), ("silu",), ("gelu:none",)} <= set(seen)


@pytest.mark.parametrize("kind", ["conv", "dwconv", "linear"])
def test_the_cuda_cell_runs_its_whole_tail_in_the_timed_dtype_and_layout(kind):
    """The logic of the cuda backend's cell, on the CPU: bf16 weights and inputs, channels_last for a
    conv, and the residual add kept (eager PyTorch runs it as a kernel of its own)."""
    from dmcpfx.search.latency_measure import device_cell

    geo = LayerGeometry(kind, kernel=(1, 1) if kind != "dwconv" else (3, 3),
                        padding=(0, 0, 0, 0) if kind != "dwconv" else (1, 1, 1, 1), hw=(5, 5) if kind != "linear" else (3, 1),
                        tail=("bn", "add", "silu"))
    cell, xs = device_cell(geo, 8, 8, 2, torch.bfloat16, device="cpu")
    assert cell.has_add and len(xs) == 2
    assert all(p.dtype == torch.bfloat16 for p in cell.parameters()) and all(x.dtype == torch.bfloat16 for x in xs)
    if kind != "linear":
        assert all(x.is_contiguous(memory_format=torch.channels_last) for x in xs)
    with torch.no_grad():
        out = cell(*xs)
        reference = F.silu(cell.norm(cell.layer(xs[0])) + xs[1])
    assert out.shape == xs[1].shape and torch.equal(out, reference)
