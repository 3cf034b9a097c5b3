"""Materialize: a physically smaller model for given widths (DESIGN.md section 7).

The returned model is the same class with the same state_dict keys wherever its
forward code reads channel counts from tensors; when the forward holds a channel
count as a literal (``x.view(-1, 512 * 7 * 7)``) a GraphModule with the literal
rewritten is returned instead. Every result is checked on the example input
against the gated model with hard masks at the same widths: a mismatch raises
:class:`MaterializeError` rather than returning a wrong model.

The check runs in strict float32 (:func:`~dmcpfx.numerics.strict_numerics`: no TF32, no
autocast) on the CPU, on the first two rows of the example input. Float32 agreement within
:data:`FLOAT32_AGREEMENT` of the output scale passes; anything looser is judged in float64 at
``rtol`` (default 1e-6), where rounding cannot hide a small real difference (a channel count
that the forward code uses as a number, ``/ math.sqrt(q.shape[1])``, changes a softmax
attention's output by ~1e-4: within float32 noise of a deep net, 100 times ``rtol`` in
float64). A model that cannot run in float64, or whose float64 copy would take more than a
quarter of the memory available (ViT-H on a 24 GB machine), keeps the float32 verdict at
:data:`FLOAT32_FALLBACK_RTOL`. A model on another device (CUDA) or in
float16/bfloat16 is sliced as a CPU float32 copy of itself, and the result is moved back
to the model's device and dtypes, so neither the device nor TF32 can fail a correct model.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .analysis import analyze
from .arch import resolve_arch
from .compare import nested_outputs_match, run_eval
from .errors import DmcpfxError
from .memory import available_memory
from .analysis.channel_graph import ChannelGraph
from .search.gates import MarkovGate, split_channels
from .passes.gate_insertion import gate_key, insert_gates
from .passes.graph_fallback import graph_module_fallback
from .passes.weight_slicing import slice_model
from .inputs import as_tuple
from .analysis.submodule import capture_inputs, replace_submodule, resolve_submodule
from .analysis.device import HALF, cpu_copy, model_device, needs_copy, restore_dtypes, tensor_dtypes, widen
from .analysis.export import EXPORT_BATCH
from .numerics import strict_numerics


#: float32 agreement (relative to the output scale) that passes the check without a float64 run
FLOAT32_AGREEMENT = 1e-5
#: the float32 tolerance for a model that cannot run in float64
FLOAT32_FALLBACK_RTOL = 1e-3


class MaterializeError(DmcpfxError):
    """The sliced model does not reproduce the masked model (a bug or an unsupported op)."""


def materialize(model, arch, example_inputs, *, graph: ChannelGraph | None = None, verify: bool = True,
                rtol: float = 1e-6, submodule: str | None = None) -> nn.Module:
    """Return a compact copy of ``model`` keeping ``arch``'s widths (LEADING channels).

    ``model``: an ``nn.Module`` or a :class:`~dmcpfx.search.space.SearchSpace` (its
    current weights are used); ``arch``: ``{group_id: width}``, an
    :class:`~dmcpfx.arch.Arch` or the path of an arch YAML. ``model`` is untouched.
    ``graph``: the ``dmcpfx.analyze(model, example_inputs)`` result when the caller
    has it (a SearchSpace brings its own), so the model is not analyzed again; it is
    used only when it was made on inputs of the same shapes and parameters of the
    same names and shapes, else the model is analyzed afresh. ``submodule``: prune only
    the submodule at this path, in place inside a copy of the whole model (its outputs
    keep their shapes); ``arch`` then names that submodule's groups. ``rtol``: the check's
    tolerance in float64, relative to the output scale (see the module docstring).
    """
    from .api_checks import check_example, check_module

    check_module(model, "materialize")
    check_example(example_inputs, "materialize")
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
    device, dtypes = model_device(model, inputs), tensor_dtypes(model)
    if needs_copy(model, inputs):  # sliced and checked on the CPU in float32, then moved back
        compact, inputs = cpu_copy(model, float32=True), tuple(widen(t) for t in inputs)
    else:
        compact = copy.deepcopy(model)
    if graph is None or not _graph_fits(graph, compact, inputs):
        graph = analyze(compact, inputs)
    widths = resolve_arch(arch, graph)
    result = _slice_checked(compact, graph, widths, inputs if verify else None, rtol)
    result.train(model.training)
    return restore_dtypes(result, dtypes, device)


def _slice_checked(compact: nn.Module, graph: ChannelGraph, widths: dict[str, int], inputs, rtol: float):
    """Slice ``compact`` in place; with ``inputs``, check it against the masked model on the
    first :data:`EXPORT_BATCH` rows of the inputs in strict float32 (no TF32, no autocast),
    fall back to the GraphModule, and raise :class:`MaterializeError` when neither matches."""
    if inputs is None:
        slice_model(compact, graph, widths)
        return compact
    inputs = tuple(t[:EXPORT_BATCH] if t.dim() else t for t in inputs)
    with strict_numerics():
        masked = _masked_module(graph, widths, inputs)
        reference = run_eval(masked, inputs)
        slice_model(compact, graph, widths)
        if _confirmed_match(compact, masked, inputs, reference, rtol):
            return compact
        result = graph_module_fallback(compact, graph, widths)
        if _confirmed_match(result, masked, inputs, reference, rtol):
            return result
    raise MaterializeError(
        f"the sliced {type(compact).__name__} does not reproduce the masked model at these widths; "
        "please report this model (the analysis missed a channel coupling)"
    )


def _confirmed_match(module: nn.Module, masked: nn.Module, inputs, reference, rtol: float) -> bool:
    """``module`` matches the masked model in float32 within :data:`FLOAT32_AGREEMENT`, or else
    in float64 within ``rtol``: float32 rounding of a deep or badly conditioned net (tiny
    BatchNorm variances) can exceed 1e-4, float64's stays far below ``rtol``, while a missed
    coupling differs in any precision. A model that cannot run in float64 is judged in
    float32 at :data:`FLOAT32_FALLBACK_RTOL`."""
    try:
        narrow = run_eval(module, inputs)  # one float32 run, judged at both tolerances
    except Exception:  # noqa: BLE001 - a crash is a mismatch; the caller falls back or raises
        return False
    if nested_outputs_match(narrow, reference, min(rtol, FLOAT32_AGREEMENT)):
        return True
    if not _float64_fits(masked, module):  # a huge model: no float64 copy, the float32 verdict
        return nested_outputs_match(narrow, reference, max(rtol, FLOAT32_FALLBACK_RTOL))
    try:
        wide = tuple(t.double() if t.is_floating_point() else t for t in inputs)
        want = run_eval(copy.deepcopy(masked).double(), wide)
        got = run_eval(copy.deepcopy(module).double(), wide)
    except Exception:  # noqa: BLE001 - a model that cannot run in float64: the float32 verdict
        return nested_outputs_match(narrow, reference, max(rtol, FLOAT32_FALLBACK_RTOL))
    return nested_outputs_match(got, want, rtol)


def _float64_fits(*modules: nn.Module) -> bool:
    """True when a float64 copy of the largest of ``modules`` (8 bytes per floating-point
    parameter and buffer; the copies are made one at a time) takes at most a quarter of the
    memory available, leaving room for everything the caller holds."""
    largest = max(sum(t.numel() for t in list(m.parameters()) + list(m.buffers()) if t.is_floating_point())
                  for m in modules)
    return 8 * largest * 4 <= available_memory()


def _made_on(graph: ChannelGraph, model: nn.Module) -> bool:
    """True when ``graph``'s traced modules hold ``model``'s own parameters (not copies)."""
    own = dict(model.named_parameters())
    traced = dict(graph.graph_modules["eval"].named_parameters())
    return bool(traced) and all(own.get(name) is p for name, p in traced.items())


def _graph_fits(graph: ChannelGraph, model: nn.Module, inputs) -> bool:
    """True when ``graph`` was made on inputs of these shapes for a model of these parameters
    and its traced modules hold CPU tensors of at least float32 precision (the masked
    reference runs on them next to the CPU copy ``model``)."""
    if [tuple(s)[1:] for s in graph.input_shapes] != [tuple(t.shape)[1:] for t in inputs]:
        return False
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    if {name: tuple(s) for name, s in graph.param_shapes.items()} != shapes:
        return False
    traced = [t for gm in graph.graph_modules.values() for t in (*gm.parameters(), *gm.buffers())]
    return all(t.device.type == "cpu" and t.dtype not in HALF for t in traced)


def _masked_module(graph, widths: dict[str, int], inputs) -> nn.Module:
    """The eval graph of ``graph`` with hard masks at ``widths`` (its traced weights, unsliced)."""
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
    return insert_gates(graph, gate_dict, keys)["eval"]
