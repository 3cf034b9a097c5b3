"""The elementwise tail that a conv / linear layer runs with inside its network (latency table).

Inside a network a layer's output is rarely left as it is: a BatchNorm, a residual add and an
activation follow it, and a runtime runs them with the layer (ONNX Runtime folds the BatchNorm
and fuses a Relu, a Clip or a residual Sum into its NCHWc convolution; a SiLU or a Hardswish
runs as separate elementwise nodes; eager PyTorch runs each as its own kernel). That tail
writes and reads the whole output tensor, so its time grows with the output width and differs
between layers of the same geometry: on ort-cpu a 1x1 expansion conv of MobileNetV2 costs
1.9 ms alone and 3.3 ms with its ReLU6, and a SiLU node costs more than the conv it follows.
So a table cell times the layer WITH its tail (:class:`LayerCell`), and layers with the same
geometry but another tail are measured apart.

The tail of a layer is read from the analysis' ATen graph (eval mode): starting at the layer's
call, follow the only user while it is, in this order, a BatchNorm of the layer's output, one
residual add of a tensor of the same shape computed earlier (the add runs with the later of its
two operands), and one activation of :data:`ACTIVATIONS` (the
table is keyed by ATen op). Any other op, or an output with several users, ends the tail.
"""
from __future__ import annotations

import operator
from typing import Callable

import torch
from torch import fx, nn

from ..analysis.rules.common import module_path

__all__ = ["ACTIVATIONS", "LayerCell", "activation_module", "layer_epilogues"]

_LAYER_OPS = {"conv2d", "convolution", "linear"}
_NORM_OPS = {"batch_norm", "_native_batch_norm_legit_no_training"}


def _hardtanh(call: fx.Node) -> str:
    lo = call.args[1] if len(call.args) > 1 else call.kwargs.get("min_val", -1.0)
    hi = call.args[2] if len(call.args) > 2 else call.kwargs.get("max_val", 1.0)
    return f"hardtanh:{float(lo):g}:{float(hi):g}"


def _leaky(call: fx.Node) -> str:
    slope = call.args[1] if len(call.args) > 1 else call.kwargs.get("negative_slope", 0.01)
    return f"leaky_relu:{float(slope):g}"


def _gelu(call: fx.Node) -> str:
    return f"gelu:{call.kwargs.get('approximate', 'none')}"


#: ATen activation (op packet name, in-place spelling too) -> its tail token from the call
ACTIVATIONS: dict[str, Callable[[fx.Node], str]] = {
    "relu": lambda c: "relu", "relu_": lambda c: "relu",
    "relu6": lambda c: "hardtanh:0:6", "relu6_": lambda c: "hardtanh:0:6",
    "hardtanh": _hardtanh, "hardtanh_": _hardtanh,
    "silu": lambda c: "silu", "silu_": lambda c: "silu",
    "hardswish": lambda c: "hardswish", "hardswish_": lambda c: "hardswish",
    "hardsigmoid": lambda c: "hardsigmoid", "hardsigmoid_": lambda c: "hardsigmoid",
    "sigmoid": lambda c: "sigmoid", "sigmoid_": lambda c: "sigmoid",
    "tanh": lambda c: "tanh", "tanh_": lambda c: "tanh",
    "gelu": _gelu, "gelu_": _gelu,
    "leaky_relu": _leaky, "leaky_relu_": _leaky,
}


def activation_module(token: str) -> nn.Module:
    """The PyTorch module of a tail token (see :data:`ACTIVATIONS`)."""
    name, *args = token.split(":")
    simple = {"relu": nn.ReLU, "silu": nn.SiLU, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid,
              "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
    if name in simple:
        return simple[name]()
    if name == "hardtanh":
        return nn.Hardtanh(float(args[0]), float(args[1]))
    if name == "leaky_relu":
        return nn.LeakyReLU(float(args[0]))
    if name == "gelu":
        return nn.GELU(approximate=args[0])
    raise ValueError(f"unknown layer tail {token!r}")


def _op(node: fx.Node) -> str:
    if node.op != "call_function":
        return ""
    packet = getattr(node.target, "overloadpacket", None)
    return getattr(packet, "__name__", "")


def _shape(node: fx.Node) -> tuple | None:
    val = node.meta.get("val")
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _tail(call: fx.Node, order: dict[fx.Node, int]) -> tuple[str, ...]:
    """The tail tokens after one layer call (see the module docstring); ``order``: each node's
    position in the graph."""
    tokens: list[str] = []
    cur = call
    while (user := _only_user(cur)) is not None:
        op = _op(user)
        if op in _NORM_OPS and not tokens and user.args and user.args[0] is cur:
            tokens.append("bn")
            if op == "_native_batch_norm_legit_no_training":  # a tuple: its only reader must take the output
                user = _only_user(user)
                if user is None or user.target is not operator.getitem or user.args[1] != 0:
                    break
            cur = user
        elif op in ("add", "add_") and "add" not in tokens and _is_residual(user, cur, order):
            tokens.append("add")
            cur = user
        elif op in ACTIVATIONS:
            tokens.append(ACTIVATIONS[op](user))
            break
        else:
            break
    return tuple(tokens)


def _is_residual(add: fx.Node, cur: fx.Node, order: dict[fx.Node, int]) -> bool:
    """``add`` sums ``cur`` and a tensor of its shape that was computed BEFORE it: the add runs
    with the later of its two operands (ORT fuses it into that conv as a residual Sum)."""
    if len(add.args) != 2 or add.kwargs.get("alpha", 1) != 1 or not all(isinstance(a, fx.Node) for a in add.args):
        return False
    other = add.args[1] if add.args[0] is cur else add.args[0]
    return other is not cur and _shape(other) == _shape(cur) and order.get(other, -1) < order[cur]


def layer_epilogues(graph_module: fx.GraphModule) -> dict[str, tuple[str, ...]]:
    """``{module name: tail tokens}`` of every conv / linear call in an analysis graph (the
    first call of a module called several times); a layer without a tail maps to ``()``."""
    tails: dict[str, tuple[str, ...]] = {}
    order = {node: i for i, node in enumerate(graph_module.graph.nodes)}
    for node in graph_module.graph.nodes:
        if _op(node) in _LAYER_OPS:
            tails.setdefault(module_path(node), _tail(node, order))
    return tails


class LayerCell(nn.Module):
    """A layer and its tail, as one module: ``forward(x)``, or ``forward(x, skip)`` when the tail
    has a residual add and ``residual`` is true (``skip``: a tensor of the layer's output shape).

    ``residual=False`` leaves the add out: ONNX Runtime fuses a residual add into its NCHWc conv
    (a Sum) only when the other operand is in that layout too, which an input of a one-layer
    model is not; there the add would run as separate NCHW nodes that a network never runs."""

    def __init__(self, layer: nn.Module, tail: tuple[str, ...], c_out: int, linear: bool, residual: bool = True):
        super().__init__()
        self.layer = layer
        self.norm = (nn.BatchNorm1d(c_out) if linear else nn.BatchNorm2d(c_out)) if "bn" in tail else nn.Identity()
        self.has_add = residual and "add" in tail
        acts = [t for t in tail if t not in ("bn", "add")]
        self.act = activation_module(acts[0]) if acts else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        y = self.norm(self.layer(x))
        if self.has_add:
            y = y + skip
        return self.act(y)
