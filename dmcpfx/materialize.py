"""Materialize: a physically smaller model for given widths (DESIGN.md section 7).

The returned model is the same class with the same state_dict keys wherever its
forward code reads channel counts from tensors; when the forward holds a channel
count as a literal (``x.view(-1, 512 * 7 * 7)``) a GraphModule with the literal
rewritten is returned instead. Every result is checked on the example input
against the gated model with hard masks at the same widths: a mismatch raises
:class:`MaterializeError` rather than returning a wrong model.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .analysis import analyze
from .arch import resolve_arch
from .compare import module_matches, run_eval
from .errors import DmcpfxError
from .analysis.channel_graph import ChannelGraph
from .search.gates import MarkovGate, split_channels
from .passes.gate_insertion import gate_key, insert_gates
from .passes.graph_fallback import graph_module_fallback
from .passes.weight_slicing import slice_model
from .inputs import as_tuple
from .analysis.submodule import capture_inputs, replace_submodule, resolve_submodule


class MaterializeError(DmcpfxError):
    """The sliced model does not reproduce the masked model (a bug or an unsupported op)."""


def materialize(model, arch, example_inputs, *, graph: ChannelGraph | None = None, verify: bool = True,
                rtol: float = 1e-3, submodule: str | None = None) -> nn.Module:
    """Return a compact copy of ``model`` keeping ``arch``'s widths (LEADING channels).

    ``model``: an ``nn.Module`` or a :class:`~dmcpfx.search.space.SearchSpace` (its
    current weights are used); ``arch``: ``{group_id: width}``, an
    :class:`~dmcpfx.arch.Arch` or the path of an arch YAML. ``model`` is untouched.
    ``graph``: the ``dmcpfx.analyze(model, example_inputs)`` result when the caller
    has it (a SearchSpace brings its own), so the model is not analyzed again; it is
    used only when it was made on inputs of the same shapes and parameters of the
    same names and shapes, else the model is analyzed afresh. ``submodule``: prune only
    the submodule at this path, in place inside a copy of the whole model (its outputs
    keep their shapes); ``arch`` then names that submodule's groups.
    """
    if submodule:
        sub_inputs = capture_inputs(model, example_inputs, submodule)
        compact_sub = materialize(resolve_submodule(model, submodule), arch, sub_inputs, graph=graph,
                                  verify=verify, rtol=rtol)
        compact = copy.deepcopy(model)
        replace_submodule(compact, submodule, compact_sub)
        return compact
    inputs = as_tuple(example_inputs)
    if hasattr(model, "to_model") and hasattr(model, "gates"):
        if graph is None:
            graph = model.graph  # made on the modules to_model() copies
        model = model.to_model()
    elif graph is not None and not _made_on(graph, model):
        graph = None
    compact = copy.deepcopy(model)
    device = _device_of(compact)
    inputs = tuple(t.to(device) for t in inputs)
    if graph is None or not _graph_fits(graph, compact, inputs):
        graph = analyze(compact, inputs)
    widths = resolve_arch(arch, graph)
    reference = _masked_output(graph, widths, inputs) if verify else None
    slice_model(compact, graph, widths)
    result = compact
    if verify and not module_matches(compact, inputs, reference, rtol):
        result = graph_module_fallback(compact, graph, widths)
        if not module_matches(result, inputs, reference, rtol):
            raise MaterializeError(
                f"the sliced {type(model).__name__} does not reproduce the masked model at these widths; "
                "please report this model (the analysis missed a channel coupling)"
            )
    result.train(model.training)
    return result


def _made_on(graph: ChannelGraph, model: nn.Module) -> bool:
    """True when ``graph``'s traced modules hold ``model``'s own parameters (not copies)."""
    own = dict(model.named_parameters())
    traced = dict(graph.graph_modules["eval"].named_parameters())
    return bool(traced) and all(own.get(name) is p for name, p in traced.items())


def _graph_fits(graph: ChannelGraph, model: nn.Module, inputs) -> bool:
    """True when ``graph`` was made on inputs of these shapes for a model of these parameters
    and all its traced modules live on the model's device (its masked reference runs there)."""
    if [tuple(s)[1:] for s in graph.input_shapes] != [tuple(t.shape)[1:] for t in inputs]:
        return False
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    if {name: tuple(s) for name, s in graph.param_shapes.items()} != shapes:
        return False
    device = _device_of(model)
    return all(p.device == device for gm in graph.graph_modules.values() for p in gm.parameters())


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _masked_output(graph, widths: dict[str, int], inputs):
    """Output of the gated model (hard masks at ``widths``), eval mode."""
    gates, keys, taken = {}, {}, set()
    for gid, width in widths.items():
        group = graph.groups[gid]
        if width == group.width:
            continue
        order = torch.tensor(group.order) if group.order is not None else None
        gate = MarkovGate(split_channels(group.width), order)
        gate.set_mode("width", width)
        keys[gid] = gate_key(gid, taken)
        gates[keys[gid]] = gate
    gate_dict = nn.ModuleDict(gates).to(inputs[0].device if inputs else "cpu")
    gm = insert_gates(graph, gate_dict, keys)["eval"]
    return run_eval(gm, inputs)
