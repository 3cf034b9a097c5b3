"""Channel analysis: which channels of an exported model must be pruned together.

:func:`analyze` exports the model with ``torch.export`` (eval and train mode, see
:mod:`.export`), then runs each ATen graph on the example input with an
:class:`fx.Interpreter` so that every rule of :mod:`.rules` sees the real argument
values and shapes. Each node gets an *info*: a :class:`~.layout.Layout` for tensors
whose channel dimension is tracked, :data:`~.layout.OPAQUE` for tensors that are
not, a :class:`~.layout.ParamRef` for parameters and buffers, and None for
non-tensors. Anything the rules do not understand freezes the spaces it touches.

The caller's model is left bit-identical: parameters, buffers (the train-mode
graph updates BatchNorm statistics while it runs: they are restored), the mode of
every submodule and the global RNG state.
"""
from __future__ import annotations

import torch
from torch import fx, nn
from torch.fx.node import map_arg

from ..errors import AnalysisError
from ..inputs import as_tuple
from .device import cpu_copy, on_cpu
from .export import EXPORT_BATCH, batch_of, export_both_modes
from .builder import GraphBuilder
from .channel_graph import ChannelGraph
from .model_state import preserved_state
from .rules import RuleContext, apply
from .submodule import capture_inputs, resolve_submodule


class _ChannelInterpreter(fx.Interpreter):
    """Runs an exported graph and computes the channel info of every node."""

    def __init__(self, gm: fx.GraphModule, ctx: RuleContext):
        super().__init__(gm, garbage_collect_values=True)
        self.ctx = ctx
        self.info: dict[fx.Node, object] = {}

    def run_node(self, n: fx.Node):
        try:
            result = super().run_node(n)
            args, kwargs = self.fetch_args_kwargs_from_env(n)
        except Exception as exc:  # noqa: BLE001 - re-raised with the node named
            raise AnalysisError(
                f"running the exported model failed at node '{n.name}' ({n.target}): {str(exc).splitlines()[0]}. "
                "Check that example_inputs has the shape the model expects."
            ) from None
        ainfo = map_arg(n.args, lambda a: self.info.get(a))
        kinfo = map_arg(n.kwargs, lambda a: self.info.get(a))
        self.info[n] = apply(self.ctx, n, args, kwargs, ainfo, kinfo, result)
        return result


def analyze(model: nn.Module, example_inputs, *, model_name: str | None = None,
            submodule: str | None = None) -> ChannelGraph:
    """Export ``model`` and discover its coupled channel groups (DESIGN.md section 2).

    ``example_inputs``: a tensor or a tuple of tensors the model accepts, dim 0 the
    batch (its size does not matter: counts are per image; the graphs are exported
    with the first sample repeated to a batch of 2). The model is left bit-identical.
    A model on another device (CUDA) is analyzed as a CPU copy of itself, so the result
    does not depend on the device; the returned graph's traced modules then hold that
    copy's weights (on the CPU), not the caller's. Raises :class:`~dmcpfx.errors.TraceError` if the model cannot be
    exported and :class:`~dmcpfx.errors.AnalysisError` if the graph fails on the
    example input. ``submodule``: analyze only the submodule at this path (for a model
    that cannot be exported whole, e.g. ``backbone`` of a detector); its inputs are
    captured from one run of ``model`` on ``example_inputs``, its outputs are frozen,
    and the group and tensor names stay relative to the submodule.
    """
    from ..api_checks import check_example, check_module

    check_module(model, "analyze")
    check_example(example_inputs, "analyze")
    if submodule:
        inputs = capture_inputs(model, example_inputs, submodule)
        return analyze(resolve_submodule(model, submodule), inputs, model_name=model_name)
    inputs = as_tuple(example_inputs)
    if not on_cpu(model, inputs):  # analyzed as a CPU copy: the graph does not depend on the device
        model, inputs = cpu_copy(model), tuple(t.detach().cpu() for t in inputs)
    batch = batch_of(inputs, EXPORT_BATCH)
    builder = GraphBuilder()
    with preserved_state(model):
        graph_modules = export_both_modes(model, batch)
        with torch.no_grad():
            for tag in ("eval", "train"):
                gm = graph_modules[tag]
                ctx = RuleContext(builder, tag, model, EXPORT_BATCH, graph_tensors=[*gm.parameters(), *gm.buffers()])
                _ChannelInterpreter(gm, ctx).run(*batch)
    param_shapes = _param_shapes(model, builder)
    return builder.finalize(
        graph_modules=graph_modules,
        input_shapes=[tuple(t.shape) for t in inputs],
        param_shapes=param_shapes,
        model_name=model_name,
    )


def _param_shapes(model: nn.Module, builder: GraphBuilder) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter, once per tensor, under the name the analysis uses for it: a
    tied tensor has several names and export picks one, which is the one its slices carry."""
    names: dict[int, tuple[nn.Parameter, list[str]]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), (p, []))[1].append(name)
    sliced = {tensor for tensor, _dim in builder.slices}
    return {next((n for n in aliases if n in sliced), aliases[0]): tuple(p.shape) for p, aliases in names.values()}


__all__ = ["analyze"]
