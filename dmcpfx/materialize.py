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
from torch import fx, nn

from .analysis import analyze
from .product.arch import resolve_arch
from .errors import DmcpfxError
from .analysis.graph import ChannelGraph
from .search.gates import MarkovGate, split_channels
from .passes.gate_insertion import gate_key, insert_gates
from .passes.weight_slicing import _owner, patch_constants, slice_model
from .analysis.export import as_tuple


class MaterializeError(DmcpfxError):
    """The sliced model does not reproduce the masked model (a bug or an unsupported op)."""


def materialize(model, arch, example_inputs, *, graph: ChannelGraph | None = None, verify: bool = True,
                rtol: float = 1e-3, submodule: str | None = None) -> nn.Module:
    """Return a compact copy of ``model`` keeping ``arch``'s widths (LEADING channels).

    ``model``: an ``nn.Module`` or a :class:`~dmcpfx.search.instrument.SearchSpace` (its
    current weights are used); ``arch``: ``{group_id: width}``, an
    :class:`~dmcpfx.product.arch.Arch` or the path of an arch YAML. ``model`` is untouched.
    ``graph``: the ``dmcpfx.analyze(model, example_inputs)`` result when the caller
    has it (a SearchSpace brings its own), so the model is not analyzed again; it is
    used only when it was made on inputs of the same shapes and parameters of the
    same names and shapes, else the model is analyzed afresh. ``submodule``: prune only
    the submodule at this path, in place inside a copy of the whole model (its outputs
    keep their shapes); ``arch`` then names that submodule's groups.
    """
    if submodule:
        from .analysis.submodule import capture_inputs, replace_submodule, resolve_submodule

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
    if verify and not _matches(compact, inputs, reference, rtol):
        result = _graph_module_fallback(compact, graph, widths)
        if not _matches(result, inputs, reference, rtol):
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
    return _run_eval(gm, inputs)


def _run_eval(module: nn.Module, inputs):
    modes = {m: m.training for m in module.modules()}
    try:
        module.eval()
        with torch.no_grad():
            return module(*inputs)
    finally:
        for m, mode in modes.items():
            m.training = mode


def _flatten(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flatten(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flatten(v)]
    return []


def _matches(module: nn.Module, inputs, reference, rtol: float) -> bool:
    try:
        out = _run_eval(module, inputs)
    except Exception:  # noqa: BLE001 - a crash is a mismatch; the caller falls back or raises
        return False
    got, want = _flatten(out), _flatten(reference)
    if len(got) != len(want):
        return False
    from .compare import outputs_match  # NaN or an unmatched inf is a mismatch

    return all(a.shape == b.shape and outputs_match(a, b, rtol, floor=1e-6) for a, b in zip(got, want))


#: ATen ops whose ``training`` / ``train`` flag the fallback GraphModule reads from ``self.training``
_MODE_FLAGS = {
    torch.ops.aten.batch_norm.default: 5, torch.ops.aten.instance_norm.default: 5,
    torch.ops.aten.dropout.default: 2, torch.ops.aten.feature_dropout.default: 2,
    torch.ops.aten.alpha_dropout.default: 2, torch.ops.aten.feature_alpha_dropout.default: 2,
}


def _graph_module_fallback(compact: nn.Module, graph, widths) -> nn.Module:
    """The exported eval-mode graph over ``compact``'s sliced weights, literals rewritten.

    BatchNorm and dropout follow ``.train()`` / ``.eval()`` of the returned module;
    Python branches on ``self.training`` of the original forward keep their eval form.
    """
    fx_graph = copy.deepcopy(graph.graph_modules["eval"].graph)
    flag = None
    for node in list(fx_graph.nodes):
        pos = _MODE_FLAGS.get(node.target)
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
        owner, attr = _owner(module, target)
    except AttributeError:  # no such submodule
        return None
    return getattr(owner, attr, None)
