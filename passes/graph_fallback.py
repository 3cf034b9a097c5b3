"""FX pass: the GraphModule fallback of :func:`dmcpfx.materialize` (DESIGN.md section 7).

When the sliced model's own forward cannot run at the new widths (a literal channel count
in Python code), the compact model is the exported eval-mode graph over the sliced weights.
:func:`graph_module_fallback` rewires its ``training`` / ``train`` flags to the module's
``self.training`` (so ``.train()`` / ``.eval()`` work) and rewrites its literal channel
counts (:func:`~dmcpfx.passes.weight_slicing.patch_constants`).
"""
from __future__ import annotations

import copy

import torch
from torch import fx, nn

from .weight_slicing import owner_of, patch_constants

__all__ = ["MODE_FLAGS", "graph_module_fallback"]


#: ATen ops whose ``training`` / ``train`` flag the fallback GraphModule reads from ``self.training``
MODE_FLAGS = {
    torch.ops.aten.batch_norm.default: 5, torch.ops.aten.instance_norm.default: 5,
    torch.ops.aten.dropout.default: 2, torch.ops.aten.feature_dropout.default: 2,
    torch.ops.aten.alpha_dropout.default: 2, torch.ops.aten.feature_alpha_dropout.default: 2,
}


def graph_module_fallback(compact: nn.Module, graph, widths: dict[str, int]) -> fx.GraphModule:
    """The exported eval-mode graph over ``compact``'s sliced weights, literals rewritten.

    BatchNorm and dropout follow ``.train()`` / ``.eval()`` of the returned module;
    Python branches on ``self.training`` of the original forward keep their eval form.
    """
    fx_graph = copy.deepcopy(graph.graph_modules["eval"].graph)
    flag = None
    for node in list(fx_graph.nodes):
        pos = MODE_FLAGS.get(node.target)
        if pos is None or len(node.args) <= pos:
            continue
        if flag is None:
            with fx_graph.inserting_before(next(n for n in fx_graph.nodes if n.op != "placeholder")):
                flag = fx_graph.get_attr("training")
        node.update_arg(pos, flag)
    gm = fx.GraphModule(_attribute_root(compact, graph.graph_modules["eval"], fx_graph), fx_graph,
                        type(compact).__name__)
    patch_constants(gm, graph, widths, "eval")
    return gm


def _attribute_root(compact: nn.Module, traced: fx.GraphModule, fx_graph: fx.Graph) -> dict:
    """Each ``get_attr`` target of ``fx_graph``, taken from ``compact`` (the sliced weights) or,
    for the tensor constants that export lifted out of the forward code
    (``lifted_tensor_0``, ...), from the traced module that holds them."""
    root = {"training": compact.training}
    for node in fx_graph.nodes:
        if node.op == "get_attr" and node.target not in root:
            value = _lookup(compact, node.target)
            root[node.target] = value if value is not None else _lookup(traced, node.target)
    return root


def _lookup(module: nn.Module, target: str):
    """The attribute at the qualified name ``target`` of ``module``, or None."""
    try:
        owner, attr = owner_of(module, target)
    except AttributeError:  # no such submodule
        return None
    return getattr(owner, attr, None)
